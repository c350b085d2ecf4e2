package logship

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship/batch"
	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"

	"github.com/gwlbproxy/gwlbproxy/proxy/schema"
)

func TestNormalCompleteInOrder(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.Senders = 1
	s := e.start(t)
	base := time.Now().Add(-time.Minute)
	const n = 5000
	sent := make(map[string][]byte, n)
	for i := range n {
		ts := base.Add(time.Duration(i) * time.Millisecond)
		if i%7 == 3 {
			ts = ts.Add(-5 * time.Millisecond) // slightly out of order
		}
		r := sampleRecord(i, ts)
		sent[fmt.Sprintf("rec-%08d", i)] = r
		if err := s.Ship(ts, r); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all records stored", func() bool {
		return e.fake.Count(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream) >= n
	})
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	evs := e.fake.Events(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream)
	if len(evs) != n {
		t.Fatalf("stored %d events, want exactly %d", len(evs), n)
	}
	for i, ev := range evs {
		id := recordID(ev.Message)
		if !bytes.Equal(sent[id], []byte(ev.Message)) {
			t.Fatalf("event %d (%s) differs from what was shipped", i, id)
		}
	}
	// One sender, sorted batches: the stream is chronological except where
	// a late record fell into the next batch (at most 5 ms back).
	for i := 1; i < len(evs); i++ {
		if evs[i].Timestamp < evs[i-1].Timestamp-5 {
			t.Fatalf("event %d at %d before event %d at %d", i, evs[i].Timestamp, i-1, evs[i-1].Timestamp)
		}
	}
	st := s.Stats()
	if st.RecordsIn != n || st.Acked != n || st.DeadLettered != 0 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
	if e.fake.Retention(e.cfg.CloudWatch.LogGroup) != 30 {
		t.Fatal("retention not set on the group the shipper created")
	}
	if err := s.Ship(time.Now(), sampleRecord(0, time.Now())); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ship after Close: %v", err)
	}
}

// shipSlowly ships records [from, to) spread over d.
func shipSlowly(t *testing.T, s *Shipper, from, to int, d time.Duration) {
	t.Helper()
	step := d / time.Duration(to-from)
	for i := from; i < to; i++ {
		now := time.Now()
		if err := s.Ship(now, sampleRecord(i, now)); err != nil {
			t.Fatal(err)
		}
		if step > 0 && i%50 == 0 {
			time.Sleep(50 * step)
		}
	}
}

func TestOutageLosesNothing(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.UnhealthyAge = 500 * time.Millisecond
	s := e.start(t)
	defer s.Close(context.Background())

	shipSlowly(t, s, 0, 500, 0)
	waitFor(t, "first records", func() bool { return e.fake.Count(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream) >= 500 })

	// The outage: every kind of failure the service and the network
	// produce, for many backoff cycles (max backoff is shortened to 40 ms,
	// so ~2 s of outage is the same number of retries as a 5-minute
	// outage at 30 s). Records keep arriving meanwhile.
	for _, f := range []cwlfake.Fault{cwlfake.ServiceUnavailable, cwlfake.Bare503, cwlfake.Reset} {
		e.fake.InjectFault(f, 15)
	}
	e.fake.InjectFault(cwlfake.ServiceUnavailable, -1)
	shipSlowly(t, s, 500, 3000, 2*time.Second)
	waitFor(t, "health to turn red during the outage", func() bool { return s.Health() != nil })
	if s.Stats().Retried < 20 {
		t.Fatalf("only %d retries during the outage", s.Stats().Retried)
	}
	before := e.fake.Count(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream)
	e.fake.ClearFaults()
	waitFor(t, "backlog to drain", func() bool { return s.Stats().Unacked == 0 })
	waitFor(t, "health to recover", func() bool { return s.Health() == nil })
	ids := e.stored()
	checkMissing(t, ids, 0, 3000)
	if before >= 3000 {
		t.Fatalf("outage did not hold anything back (%d stored before recovery)", before)
	}
	t.Logf("retries=%d injected=%d/%d/%d", s.Stats().Retried, e.fake.Injected(cwlfake.ServiceUnavailable),
		e.fake.Injected(cwlfake.Bare503), e.fake.Injected(cwlfake.Reset))
}

func TestThrottlingLosesNothing(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.FlushInterval = 2 * time.Millisecond
	e.fake.SetThrottle(20)
	s := e.start(t)
	shipSlowly(t, s, 0, 4000, time.Second)
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkMissing(t, e.stored(), 0, 4000)
	if e.fake.Throttled() == 0 {
		t.Fatal("the fake never throttled; test proves nothing")
	}
	t.Logf("throttled %d calls, %d retries", e.fake.Throttled(), s.Stats().Retried)
}

func TestAcceptThenResetDuplicatesButLosesNothing(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	s := e.start(t)
	shipSlowly(t, s, 0, 100, 0)
	waitFor(t, "first batch", func() bool { return s.Stats().Unacked == 0 })
	e.fake.InjectFault(cwlfake.AcceptThenReset, 3)
	e.fake.InjectFault(cwlfake.Slow, 1)
	e.fake.SetSlow(100 * time.Millisecond)
	shipSlowly(t, s, 100, 1000, 0)
	waitFor(t, "delivery", func() bool { return s.Stats().Unacked == 0 })
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	ids := e.stored()
	checkMissing(t, ids, 0, 1000)
	dups := 0
	for _, c := range ids {
		dups += c - 1
	}
	if dups == 0 {
		t.Fatal("accept-then-reset produced no duplicates; fault not exercised")
	}
	t.Logf("%d duplicates (at-least-once; dedup record_id in Insights)", dups)
}

func TestStreamDeletedMidRun(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	s := e.start(t)
	shipSlowly(t, s, 0, 200, 0)
	waitFor(t, "first records", func() bool { return s.Stats().Unacked == 0 })
	e.fake.DeleteLogStream(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream)
	shipSlowly(t, s, 200, 400, 0)
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkMissing(t, e.stored(), 200, 400)
	if e.fake.Calls("CreateLogStream") < 2 {
		t.Fatal("stream was not recreated")
	}
}

func TestBadRecordIsolatedToDeadLetter(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.FlushInterval = 200 * time.Millisecond
	e.fake.SetPoison("POISONED")
	s := e.start(t)
	now := time.Now()
	for i := range 1000 {
		r := sampleRecord(i, now)
		if i == 617 {
			r = bytes.Replace(r, []byte(`"/index.html"`), []byte(`"/POISONED"`), 1)
		}
		if err := s.Ship(now, r); err != nil {
			t.Fatal(err)
		}
	}
	// A record older than 14 days is rejected per event by the service.
	old := now.Add(-15 * 24 * time.Hour)
	if err := s.Ship(old, sampleRecord(5000, old)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	ids := e.stored()
	checkMissing(t, ids, 0, 617)
	checkMissing(t, ids, 618, 1000)
	if ids["rec-00000617"] != 0 || ids["rec-00005000"] != 0 {
		t.Fatal("refused records stored")
	}
	lines := readLines(t, e.cfg.DeadLetterPath)
	if len(lines) != 2 {
		t.Fatalf("dead-letter has %d lines, want 2:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	reasons := map[string]string{}
	for _, l := range lines {
		var d struct {
			Reason string          `json:"reason"`
			Record json.RawMessage `json:"record"`
		}
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			t.Fatal(err)
		}
		reasons[recordID(string(d.Record))] = d.Reason
	}
	if !strings.HasPrefix(reasons["rec-00000617"], "invalid_parameter") || reasons["rec-00005000"] != "too_old" {
		t.Fatalf("dead-letter reasons %v", reasons)
	}
	if st := s.Stats(); st.DeadLettered != 2 {
		t.Fatalf("dead-lettered counter %d", st.DeadLettered)
	}
}

func TestOversizeTruncated(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.MaxEventBytes = 2000
	s := e.start(t)
	now := time.Now()
	r := sampleRecord(1, now)
	r = bytes.Replace(r, []byte(`"/index.html"`), []byte(`"/`+strings.Repeat("a", 10000)+`"`), 1)
	if err := s.Ship(now, r); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	evs := e.fake.Events(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream)
	if len(evs) != 1 {
		t.Fatalf("stored %d", len(evs))
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(evs[0].Message), &m); err != nil {
		t.Fatal(err)
	}
	if len(evs[0].Message) > 2000 || m["record_id"] != "rec-00000001" || m[batch.FieldTruncated] != true ||
		m["host"] != "www.example.com" {
		t.Fatalf("truncated record %d bytes: %s", len(evs[0].Message), evs[0].Message)
	}
	if s.Stats().Truncated != 1 {
		t.Fatal("truncated counter")
	}
}

func TestSpoolFullFailClosed(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.Spool.MaxBytes = 1 << 20
	e.cfg.Spool.SegmentBytes = 64 << 10
	e.fake.InjectFault(cwlfake.ServiceUnavailable, -1)
	s := e.start(t)
	defer s.Close(context.Background())
	accepted := 0
	var err error
	for i := 0; i < 100_000; i++ {
		now := time.Now()
		if err = s.Ship(now, sampleRecord(i, now)); err != nil {
			break
		}
		accepted++
	}
	if !errors.Is(err, ErrSpoolFull) {
		t.Fatalf("after %d records: %v, want ErrSpoolFull", accepted, err)
	}
	if s.Health() == nil {
		t.Fatal("health green with a full fail-closed spool")
	}
	if !errors.Is(s.Admit(), ErrSpoolFull) {
		t.Fatalf("Admit = %v with a full fail-closed spool", s.Admit())
	}
	e.fake.ClearFaults()
	waitFor(t, "health to recover after the spool drains", func() bool { return s.Health() == nil })
	if err := s.Admit(); err != nil {
		t.Fatalf("Admit = %v after recovery", err)
	}
	now := time.Now()
	if err := s.Ship(now, sampleRecord(accepted, now)); err != nil {
		t.Fatalf("Ship after recovery: %v", err)
	}
	waitFor(t, "delivery", func() bool { return s.Stats().Unacked == 0 })
	checkMissing(t, e.stored(), 0, accepted+1)
}

func TestSpoolFullDrop(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.Spool.MaxBytes = 1 << 20
	e.cfg.Spool.SegmentBytes = 64 << 10
	e.cfg.Spool.FullPolicy = FullDrop
	e.fake.InjectFault(cwlfake.ServiceUnavailable, -1)
	s := e.start(t)
	defer s.Close(context.Background())
	const n = 10_000
	for i := range n {
		now := time.Now()
		if err := s.Ship(now, sampleRecord(i, now)); err != nil {
			t.Fatalf("drop policy returned %v", err)
		}
	}
	st := s.Stats()
	if st.Dropped == 0 || st.RecordsIn+st.Dropped != n {
		t.Fatalf("in %d dropped %d, want a split of %d", st.RecordsIn, st.Dropped, n)
	}
	if err := s.Health(); err != nil {
		t.Fatalf("drop policy turned health red: %v", err)
	}
	if err := s.Admit(); err != nil {
		t.Fatalf("drop policy refuses connections: %v", err)
	}
	e.fake.ClearFaults()
	waitFor(t, "delivery", func() bool { return s.Stats().Unacked == 0 })
	ids := e.stored()
	if len(ids) != int(st.RecordsIn) {
		t.Fatalf("stored %d unique records, accepted %d", len(ids), st.RecordsIn)
	}
	checkMissing(t, ids, 0, int(st.RecordsIn)) // the first ones fit, the rest dropped
}

func TestCloseDrainsAndDeadlineKeepsRest(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.FlushInterval = time.Minute // nothing leaves before Close
	s := e.start(t)
	shipSlowly(t, s, 0, 3000, 0)
	if c := e.fake.Count(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream); c != 0 {
		t.Fatalf("%d stored before Close despite the 1-minute flush interval", c)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkMissing(t, e.stored(), 0, 3000)

	// Now the service is down at shutdown: Close gives up at the deadline,
	// the records stay in the spool and the next start delivers them.
	e.fake.InjectFault(cwlfake.ServiceUnavailable, -1)
	e.cfg.DrainDeadline = 300 * time.Millisecond
	s = e.start(t)
	shipSlowly(t, s, 3000, 4000, 0)
	err := s.Close(context.Background())
	if !errors.Is(err, ErrUndelivered) {
		t.Fatalf("Close during an outage: %v, want ErrUndelivered", err)
	}
	e.fake.ClearFaults()
	e.cfg.DrainDeadline = time.Minute
	s = e.start(t)
	if s.Stats().Unacked < 1000 {
		t.Fatalf("restart replays %d records, want >= 1000", s.Stats().Unacked)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkMissing(t, e.stored(), 0, 4000)
}

func TestEMF(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.EMF = EMFConfig{Enabled: true, Namespace: "gwlbproxy", Interval: time.Hour}
	s := e.start(t)
	now := time.Now()
	for i := range 40 {
		s.ShipRequest(now, sampleRecord(i, now), sampleMetrics(i))
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	var emfs []map[string]any
	for _, ev := range e.fake.Events(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream) {
		if strings.Contains(ev.Message, `"_aws"`) {
			var m map[string]any
			if err := json.Unmarshal([]byte(ev.Message), &m); err != nil {
				t.Fatal(err)
			}
			emfs = append(emfs, m)
		}
	}
	if len(emfs) != 5 {
		t.Fatalf("%d EMF records, want one per action (4) and the instance record", len(emfs))
	}
	var actions int
	for _, m := range emfs {
		checkEMFDirective(t, m)
		if _, ok := m["action"]; !ok {
			if age, ok := m["oldest_unshipped_seconds"].(float64); !ok || age < 0 {
				t.Errorf("instance EMF record without a valid oldest_unshipped_seconds: %v", m)
			}
			continue
		}
		actions++
		if m["requests"] != float64(10) || m["status_2xx"] != float64(10) ||
			m["latency_ms_sum"] != 125.0 || m["latency_count"] != float64(10) || m["latency_ms_max"] != 12.5 {
			t.Fatalf("EMF record %v", m)
		}
		if _, ok := m["latency_ms_avg"]; ok {
			t.Errorf("EMF record publishes a mean, which CloudWatch would average across instances: %v", m)
		}
	}
	if actions != 4 {
		t.Errorf("%d per-action EMF records, want 4", actions)
	}
}

// checkEMFDirective checks an EMF record against the specification: every
// metric a directive names is a number at the top level, every dimension a
// string, at most 30 dimensions per set, and a millisecond timestamp.
func checkEMFDirective(t *testing.T, m map[string]any) {
	t.Helper()
	aws, _ := m["_aws"].(map[string]any)
	if _, ok := aws["Timestamp"].(float64); !ok {
		t.Errorf("EMF record without a numeric _aws.Timestamp: %v", m)
	}
	dirs, _ := aws["CloudWatchMetrics"].([]any)
	if len(dirs) == 0 {
		t.Fatalf("EMF record without directives: %v", m)
	}
	for _, d := range dirs {
		dm, _ := d.(map[string]any)
		if ns, _ := dm["Namespace"].(string); ns == "" {
			t.Errorf("directive without a namespace: %v", dm)
		}
		sets, ok := dm["Dimensions"].([]any)
		if !ok {
			t.Errorf("directive without Dimensions: %v", dm)
		}
		for _, set := range sets {
			names, _ := set.([]any)
			if len(names) > 30 {
				t.Errorf("dimension set of %d names", len(names))
			}
			for _, n := range names {
				if _, ok := m[n.(string)].(string); !ok {
					t.Errorf("dimension %v is not a string member of the record", n)
				}
			}
		}
		metrics, _ := dm["Metrics"].([]any)
		if len(metrics) == 0 {
			t.Errorf("directive without metrics: %v", dm)
		}
		for _, mt := range metrics {
			name, _ := mt.(map[string]any)["Name"].(string)
			if _, ok := m[name].(float64); !ok {
				t.Errorf("metric %q is not a number member of the record %v", name, m)
			}
		}
	}
}

// TestEMFFleetMeanFromSums is why the EMF records carry sums and counts:
// two instances, one idle-ish and one busy. CloudWatch adds their
// datapoints, so Sum(latency_ms_sum)/Sum(latency_count) is the true mean
// over all requests; the mean of the instances' means would be 25 times it.
func TestEMFFleetMeanFromSums(t *testing.T) {
	now := time.Now()
	quiet := newEMF(EMFConfig{Namespace: "gwlbproxy"}, "i-quiet")
	busy := newEMF(EMFConfig{Namespace: "gwlbproxy"}, "i-busy")
	quiet.observe(schema.Metrics{Action: "allow", Status: 200, DurationMS: 100})
	for range 99 {
		busy.observe(schema.Metrics{Action: "allow", Status: 502, DurationMS: 1})
	}
	var sum, count, requests, s5xx float64
	for _, e := range []*emf{quiet, busy} {
		recs := e.flush(now, 0)
		if len(recs) != 2 {
			t.Fatalf("%d records, want the action and the instance record", len(recs))
		}
		var m map[string]any
		if err := json.Unmarshal(recs[0], &m); err != nil {
			t.Fatal(err)
		}
		checkEMFDirective(t, m)
		sum += m["latency_ms_sum"].(float64)
		count += m["latency_count"].(float64)
		requests += m["requests"].(float64)
		s5xx += m["status_5xx"].(float64)
	}
	if mean := sum / count; mean != 1.99 {
		t.Errorf("fleet mean latency %v ms, want 1.99 (199 ms over 100 requests)", mean)
	}
	if rate := s5xx / requests; rate != 0.99 {
		t.Errorf("fleet 5xx rate %v, want 0.99", rate)
	}
}

// TestEMFInstanceRecordAlways: the backlog age goes out every interval,
// with or without traffic, since the alarm reads a missing datapoint as a
// stuck shipper.
func TestEMFInstanceRecordAlways(t *testing.T) {
	e := newEMF(EMFConfig{Namespace: "gwlbproxy"}, "i-1")
	recs := e.flush(time.UnixMilli(1700000000000), 90*time.Second+500*time.Millisecond)
	if len(recs) != 1 {
		t.Fatalf("%d records with no traffic, want the instance record only", len(recs))
	}
	var m map[string]any
	if err := json.Unmarshal(recs[0], &m); err != nil {
		t.Fatal(err)
	}
	checkEMFDirective(t, m)
	if m["oldest_unshipped_seconds"] != 90.5 || m["record_type"] != "emf" {
		t.Errorf("instance record %v", m)
	}
	if _, ok := m["client_ip"]; ok {
		t.Error("EMF record looks like a request record (client_ip); the saved queries filter on it")
	}
}
