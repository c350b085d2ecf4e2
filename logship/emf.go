package logship

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/schema"
)

// emf aggregates request records (those shipped with ShipRequest, counted
// from their typed proxy/schema.Metrics) into one CloudWatch Embedded Metric
// Format record per action per interval, shipped into the same stream: CloudWatch turns
// it into metrics (no PutMetricData, no IAM for it), and the only dimension
// is the action, never host or client, so metric cardinality stays fixed.
//
// Every metric is a sum or a count over the interval (plus a maximum), never
// a mean: CloudWatch adds the datapoints of all instances, so a fleet-wide
// mean is Sum(latency_ms_sum)/Sum(latency_count), whereas the mean of
// per-instance means weighs an idle instance like a busy one. Each metric is
// published twice, per action and with no dimension (the fleet total the
// alarms use), through two dimension sets in the same directive.
//
// One more record per interval, whatever the traffic, carries the age of the
// oldest record not yet delivered (an instance-level gauge, no dimension):
// it rides in the spool like every record, so a stuck shipper shows up as
// late or missing datapoints, which the stack's alarm treats as breaching.
type emf struct {
	cfg      EMFConfig
	instance string
	stop     chan struct{}

	mu   sync.Mutex
	aggs map[string]*emfAgg
}

type emfAgg struct {
	requests   uint64
	status     [6]uint64 // index status/100; 0 = no status
	latencySum float64
	latencyMax float64
	latencyN   uint64
}

func newEMF(cfg EMFConfig, instance string) *emf {
	return &emf{cfg: cfg, instance: instance, stop: make(chan struct{}), aggs: make(map[string]*emfAgg)}
}

func instanceLabel(cfg Config, sk sink) string {
	if cw, ok := sk.(*cwSink); ok {
		return cw.stream
	}
	if cfg.InstanceID != "" {
		return cfg.InstanceID
	}
	h, _ := os.Hostname()
	return h
}

// observe counts one request record from its typed metric fields
// (proxy/schema): the record's JSON is never parsed here.
func (e *emf) observe(m schema.Metrics) {
	action := m.Action
	if len(action) == 0 || len(action) > 16 {
		action = "unknown"
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.aggs[action]
	if a == nil {
		a = &emfAgg{}
		e.aggs[action] = a
	}
	a.requests++
	if c := m.Status / 100; c >= 1 && c <= 5 {
		a.status[c]++
	} else {
		a.status[0]++
	}
	a.latencySum += m.DurationMS
	a.latencyMax = max(a.latencyMax, m.DurationMS)
	a.latencyN++
}

// flush returns one EMF record per action seen since the last flush, then
// the instance record carrying oldest, the age of the oldest record not yet
// delivered.
func (e *emf) flush(now time.Time, oldest time.Duration) [][]byte {
	e.mu.Lock()
	aggs := e.aggs
	e.aggs = make(map[string]*emfAgg)
	e.mu.Unlock()
	actions := make([]string, 0, len(aggs))
	for a := range aggs {
		actions = append(actions, a)
	}
	sort.Strings(actions)
	ms := now.UnixMilli()
	stamp := now.UTC().Format(time.RFC3339Nano)
	out := make([][]byte, 0, len(actions)+1)
	for _, action := range actions {
		a := aggs[action]
		rec := fmt.Appendf(nil, `{"_aws":{"Timestamp":%d,"CloudWatchMetrics":[{"Namespace":%q,"Dimensions":[["action"],[]],"Metrics":[`+
			`{"Name":"requests","Unit":"Count"},{"Name":"status_2xx","Unit":"Count"},{"Name":"status_3xx","Unit":"Count"},`+
			`{"Name":"status_4xx","Unit":"Count"},{"Name":"status_5xx","Unit":"Count"},`+
			`{"Name":"latency_ms_sum","Unit":"Milliseconds"},{"Name":"latency_count","Unit":"Count"},`+
			`{"Name":"latency_ms_max","Unit":"Milliseconds"}]}]},`+
			`"record_type":"emf","record_id":"emf-%s-%d-%s","instance_id":%q,"time":%q,"action":%q,`+
			`"requests":%d,"status_none":%d,"status_1xx":%d,"status_2xx":%d,"status_3xx":%d,"status_4xx":%d,"status_5xx":%d,`+
			`"latency_ms_sum":%s,"latency_count":%d,"latency_ms_max":%s}`,
			ms, e.cfg.Namespace, e.instance, ms, action, e.instance, stamp, action,
			a.requests, a.status[0], a.status[1], a.status[2], a.status[3], a.status[4], a.status[5],
			strconv.FormatFloat(a.latencySum, 'f', 3, 64), a.latencyN, strconv.FormatFloat(a.latencyMax, 'f', 3, 64))
		out = append(out, rec)
	}
	out = append(out, fmt.Appendf(nil, `{"_aws":{"Timestamp":%d,"CloudWatchMetrics":[{"Namespace":%q,"Dimensions":[[]],"Metrics":[`+
		`{"Name":"oldest_unshipped_seconds","Unit":"Seconds"}]}]},`+
		`"record_type":"emf","record_id":"emf-%s-%d-instance","instance_id":%q,"time":%q,"oldest_unshipped_seconds":%s}`,
		ms, e.cfg.Namespace, e.instance, ms, e.instance, stamp, strconv.FormatFloat(oldest.Seconds(), 'f', 3, 64)))
	return out
}

func (s *Shipper) emfLoop() {
	defer s.bgWG.Done()
	t := time.NewTicker(s.cfg.EMF.Interval)
	defer t.Stop()
	emit := func(now time.Time) {
		for _, rec := range s.emf.flush(now, s.sp.OldestUnacked(now)) {
			if err := s.Ship(now, rec); err != nil {
				s.log.Warn("logship: EMF record not accepted", "err", err)
			}
		}
	}
	for {
		select {
		case now := <-t.C:
			emit(now)
		case <-s.emf.stop:
			emit(time.Now())
			return
		}
	}
}
