//go:build linux

package flowlog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Source is what flow records need from steering; *steer.Steerer
// implements it.
type Source interface {
	EndpointOfMark(mark uint32) (uint64, bool)
	EndpointOfIfIndex(idx int) (uint64, bool)
	// RuleOfMark names the network policy rule that allowed a flow, from
	// the rule id the kernel set in its conntrack mark, and the version
	// of the network policy that rule was part of.
	RuleOfMark(mark uint32) (rule, version string, ok bool)
	// PolicyVersion is the version of the network policy in force
	// (denied records carry it).
	PolicyVersion() string
}

// Recorder takes one JSON record (copied by the callee); logship's
// Shipper implements it, so flow records share the request records'
// spool and its losslessness.
type Recorder interface {
	Ship(ts time.Time, record []byte) error
}

// Logger reads conntrack events and NFLOG and writes flow records.
type Logger struct {
	cfg        Config
	src        Source
	rec        Recorder
	log        *slog.Logger
	instanceID string
	nsFd       int // -1: the current namespace

	queue chan Record

	sumMu    sync.Mutex // guards sum and denied
	sum      summary
	denied   map[netip.Addr]int // records per source in this interval
	idPrefix string
	idSeq    atomic.Uint64

	ct, nfl  *netlink.Conn
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	started  bool
	closeMu  sync.Mutex
	readErrs atomic.Pointer[string]

	c counters
}

type counters struct {
	records, interim, denied, summaries              atomic.Uint64
	queueFull, rateLimited, deniedSuppressed         atomic.Uint64
	ctOverruns, nflogOverruns, decodeErrors, ignored atomic.Uint64
	shipErrors                                       atomic.Uint64
	lastOverrun                                      atomic.Int64 // unix nanos
}

// Stats is the JSON-able state of flow records.
type Stats struct {
	Records          uint64 `json:"records"`
	Interim          uint64 `json:"interim"`
	Denied           uint64 `json:"denied"`
	Summaries        uint64 `json:"summaries"`
	QueueFull        uint64 `json:"summarised_queue_full"`
	RateLimited      uint64 `json:"summarised_rate_limited"`
	DeniedSuppressed uint64 `json:"denied_suppressed"`
	// Overruns count ENOBUFS on the conntrack and NFLOG sockets: the
	// kernel dropped events because the reader fell behind.
	ConntrackOverruns uint64 `json:"conntrack_overruns"`
	NFLOGOverruns     uint64 `json:"nflog_overruns"`
	DecodeErrors      uint64 `json:"decode_errors"`
	ShipErrors        uint64 `json:"ship_errors"`
	Queued            int    `json:"queued"`
}

// New prepares a Logger; nothing is opened before Start. reg may be nil.
func New(cfg Config, src Source, rec Recorder, instanceID string, log *slog.Logger, reg prometheus.Registerer) (*Logger, error) {
	return newLogger(cfg, src, rec, instanceID, log, reg, -1)
}

func newLogger(cfg Config, src Source, rec Recorder, instanceID string, log *slog.Logger, reg prometheus.Registerer, nsFd int) (*Logger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MarkMask == 0 || cfg.MarkBase&^cfg.MarkMask != 0 || cfg.MarkBase == 0 {
		return nil, fmt.Errorf("flowlog: marks %#x/%#x not copied in from steer", cfg.MarkBase, cfg.MarkMask)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var p [6]byte
	rand.Read(p[:])
	l := &Logger{
		cfg: cfg, src: src, rec: rec, log: log, instanceID: instanceID, nsFd: nsFd,
		queue:    make(chan Record, cfg.QueueLength),
		denied:   map[netip.Addr]int{},
		idPrefix: "f" + hex.EncodeToString(p[:]),
	}
	if reg != nil {
		if err := reg.Register(&collector{l: l}); err != nil {
			return nil, fmt.Errorf("flowlog metrics: %w", err)
		}
	}
	return l, nil
}

func (l *Logger) inNS(fn func() error) error {
	if l.nsFd < 0 {
		return fn()
	}
	return inns.Do(netns.NsHandle(l.nsFd), fn)
}

// Start turns conntrack accounting and timestamps on, subscribes to
// conntrack destroy events and to the NFLOG group, and starts the readers
// and the writer. They run until Close or ctx ends.
func (l *Logger) Start(ctx context.Context) error {
	if err := l.inNS(enableAccounting); err != nil {
		return fmt.Errorf("flowlog: %w", err)
	}
	var err error
	if l.ct, err = l.dialConntrackEvents(); err != nil {
		return fmt.Errorf("flowlog: conntrack events: %w", err)
	}
	if l.cfg.LogGroup != 0 {
		if l.nfl, err = l.dialNFLOG(l.cfg.LogGroup); err != nil {
			l.ct.Close()
			return fmt.Errorf("flowlog: nflog group %d: %w", l.cfg.LogGroup, err)
		}
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel = cancel
	go func() {
		select {
		case <-ctx.Done():
			l.Close()
		case <-rctx.Done():
		}
	}()
	l.wg.Add(2)
	go l.readConntrack(rctx)
	go l.writer(rctx)
	if l.nfl != nil {
		l.wg.Add(1)
		go l.readNFLOG(rctx)
	}
	if l.cfg.InterimInterval > 0 {
		l.wg.Add(1)
		go l.interimLoop(rctx)
	}
	l.started = true
	l.log.Info("flow records started", "nflog_group", l.cfg.LogGroup, "interim_interval", l.cfg.InterimInterval)
	return nil
}

// Close stops the readers and the writer; records still queued are
// written first (the shipper must still be open).
func (l *Logger) Close() error {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if !l.started {
		return nil
	}
	l.started = false
	l.cancel()
	// Closing the sockets ends the blocked Receive calls.
	var errs []error
	if l.ct != nil {
		errs = append(errs, l.ct.Close())
	}
	if l.nfl != nil {
		errs = append(errs, l.nfl.Close())
	}
	l.wg.Wait()
	return errors.Join(errs...)
}

// enableAccounting sets nf_conntrack_acct and nf_conntrack_timestamp (per
// network namespace): without them destroy events carry no counters and
// no start time.
func enableAccounting() error {
	for _, k := range []string{"nf_conntrack_acct", "nf_conntrack_timestamp"} {
		p := "/proc/sys/net/netfilter/" + k
		if b, err := os.ReadFile(p); err == nil && len(b) > 0 && b[0] == '1' {
			continue
		}
		if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("net.netfilter.%s=1: %w", k, err)
		}
	}
	return nil
}

// Health is red while a reader has failed, or for a minute after the
// kernel reported an overrun (events lost).
func (l *Logger) Health() error {
	if e := l.readErrs.Load(); e != nil {
		return fmt.Errorf("flowlog: %s", *e)
	}
	if t := l.c.lastOverrun.Load(); t != 0 && time.Since(time.Unix(0, t)) < time.Minute {
		return fmt.Errorf("flowlog: netlink overruns (events lost): conntrack %d, nflog %d in total, the last %s ago",
			l.c.ctOverruns.Load(), l.c.nflogOverruns.Load(), time.Since(time.Unix(0, t)).Round(time.Second))
	}
	return nil
}

// Stats returns the counters.
func (l *Logger) Stats() Stats {
	return Stats{
		Records: l.c.records.Load(), Interim: l.c.interim.Load(), Denied: l.c.denied.Load(),
		Summaries: l.c.summaries.Load(), QueueFull: l.c.queueFull.Load(), RateLimited: l.c.rateLimited.Load(),
		DeniedSuppressed: l.c.deniedSuppressed.Load(), ConntrackOverruns: l.c.ctOverruns.Load(),
		NFLOGOverruns: l.c.nflogOverruns.Load(), DecodeErrors: l.c.decodeErrors.Load(),
		ShipErrors: l.c.shipErrors.Load(), Queued: len(l.queue),
	}
}

func (l *Logger) overrun(ctr *atomic.Uint64, what string) {
	n := ctr.Add(1)
	l.c.lastOverrun.Store(time.Now().UnixNano())
	l.sumMu.Lock()
	l.sum.overruns++
	l.sumMu.Unlock()
	if n == 1 || n%100 == 0 {
		l.log.Warn("netlink overrun: the kernel dropped events, the reader fell behind", "socket", what, "total", n)
	}
}

func (l *Logger) readFailed(what string, err error) {
	msg := what + ": " + err.Error()
	l.readErrs.Store(&msg)
	l.log.Error("flow records: reader stopped", "socket", what, "err", err)
}

// enqueue hands r to the writer, or folds it into the summary when the
// queue is full. Never blocks.
func (l *Logger) enqueue(r Record) {
	select {
	case l.queue <- r:
	default:
		l.c.queueFull.Add(1)
		l.fold(r, true)
	}
}

// fold counts a flow in the summary instead of recording it.
func (l *Logger) fold(r Record, queueFull bool) {
	l.sumMu.Lock()
	defer l.sumMu.Unlock()
	if r.Type == TypeDenied {
		l.sum.deniedSuppressed++
		return
	}
	if r.Type == TypeInterim {
		return // the final record (or its summary) carries the totals
	}
	l.sum.flows++
	if queueFull {
		l.sum.queueFull++
	} else {
		l.sum.rateLimited++
	}
	l.sum.packetsOut += r.PacketsOut
	l.sum.bytesOut += r.BytesOut
	l.sum.packetsIn += r.PacketsIn
	l.sum.bytesIn += r.BytesIn
}

// admitDenied applies the per-source limit.
func (l *Logger) admitDenied(src netip.Addr) bool {
	l.sumMu.Lock()
	defer l.sumMu.Unlock()
	n, ok := l.denied[src]
	if !ok && len(l.denied) >= maxDeniedSources {
		l.sum.deniedSuppressed++
		l.c.deniedSuppressed.Add(1)
		return false
	}
	l.denied[src] = n + 1
	if n >= l.cfg.DeniedPerSource {
		if n == l.cfg.DeniedPerSource {
			l.sum.deniedSources++
		}
		l.sum.deniedSuppressed++
		l.c.deniedSuppressed.Add(1)
		return false
	}
	return true
}

// maxDeniedSources bounds the per-source table of one interval.
const maxDeniedSources = 65536

func (l *Logger) nextID() string {
	return l.idPrefix + strconv.FormatUint(l.idSeq.Add(1), 16)
}

// writer ships queued records under the rate limit and writes the
// summaries.
func (l *Logger) writer(ctx context.Context) {
	defer l.wg.Done()
	tick := time.NewTicker(l.cfg.SummaryInterval)
	defer tick.Stop()
	buf := make([]byte, 0, 1024)
	rate := float64(l.cfg.MaxRecordsPerSecond)
	tokens, last := rate, time.Now()
	ship := func(ts time.Time, b []byte) {
		if err := l.rec.Ship(ts, b); err != nil {
			l.c.shipErrors.Add(1)
		}
	}
	flushSummary := func(now time.Time) {
		l.sumMu.Lock()
		s := l.sum
		l.sum = summary{}
		clear(l.denied)
		l.sumMu.Unlock()
		if s.empty() {
			return
		}
		buf = s.appendJSON(buf[:0], now, l.instanceID, l.nextID(), l.cfg.SummaryInterval)
		ship(now, buf)
		l.c.summaries.Add(1)
	}
	for {
		select {
		case <-ctx.Done():
			// Drain what is queued, then the summary.
			for {
				select {
				case r := <-l.queue:
					buf = r.appendJSON(buf[:0], l.idPrefix, l.idSeq.Add(1))
					ship(r.End, buf)
					l.count(r)
					continue
				default:
				}
				break
			}
			flushSummary(time.Now())
			return
		case now := <-tick.C:
			flushSummary(now)
		case r := <-l.queue:
			if r.Type != TypeDenied { // denials have their own per-source limit
				now := time.Now()
				tokens = min(rate, tokens+now.Sub(last).Seconds()*rate)
				last = now
				if tokens < 1 {
					l.c.rateLimited.Add(1)
					l.fold(r, false)
					continue
				}
				tokens--
			}
			buf = r.appendJSON(buf[:0], l.idPrefix, l.idSeq.Add(1))
			ship(r.End, buf)
			l.count(r)
		}
	}
}

func (l *Logger) count(r Record) {
	switch r.Type {
	case TypeFlow:
		l.c.records.Add(1)
	case TypeInterim:
		l.c.interim.Add(1)
	case TypeDenied:
		l.c.denied.Add(1)
	}
}

// forwarded reports whether a flow with this mark, zone and TCP
// destination port is a forwarded one of ours (not intercepted, not the
// proxy's upstream).
func (l *Logger) forwarded(mark uint32, zone uint16, proto uint8, dport uint16) bool {
	if mark&l.cfg.MarkMask != l.cfg.MarkBase || mark == l.cfg.MarkBase || zone != 0 {
		return false
	}
	if proto == 6 {
		for _, p := range l.cfg.InterceptPorts {
			if p == dport {
				return false
			}
		}
	}
	return true
}

// collector exports the counters to Prometheus.
type collector struct{ l *Logger }

var (
	descRecords  = prometheus.NewDesc("gwlbproxy_flow_records_total", "Flow records written, by record_type.", []string{"type"}, nil)
	descFolded   = prometheus.NewDesc("gwlbproxy_flow_summarised_total", "Flows counted in flow_summary records instead of recorded, by reason.", []string{"reason"}, nil)
	descOverruns = prometheus.NewDesc("gwlbproxy_flow_netlink_overruns_total", "ENOBUFS on the flow records' netlink sockets (events lost by the kernel).", []string{"socket"}, nil)
	descErrs     = prometheus.NewDesc("gwlbproxy_flow_errors_total", "Flow record errors, by kind.", []string{"kind"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRecords, descFolded, descOverruns, descErrs} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.l.Stats()
	m := func(d *prometheus.Desc, v uint64, label string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), label)
	}
	m(descRecords, s.Records, TypeFlow)
	m(descRecords, s.Interim, TypeInterim)
	m(descRecords, s.Denied, TypeDenied)
	m(descRecords, s.Summaries, TypeSummary)
	m(descFolded, s.QueueFull, "queue_full")
	m(descFolded, s.RateLimited, "rate_limited")
	m(descFolded, s.DeniedSuppressed, "denied_per_source")
	m(descOverruns, s.ConntrackOverruns, "conntrack")
	m(descOverruns, s.NFLOGOverruns, "nflog")
	m(descErrs, s.DecodeErrors, "decode")
	m(descErrs, s.ShipErrors, "ship")
}

// receive reads conn until ctx ends or the socket closes, handing each
// batch of messages to handle. An overrun (ENOBUFS: the kernel dropped
// messages because the reader fell behind) is counted in ctr and reading
// goes on; any other error stops the reader and shows in health.
func (l *Logger) receive(ctx context.Context, conn *netlink.Conn, ctr *atomic.Uint64, what string, handle func([]netlink.Message)) {
	defer l.wg.Done()
	for {
		msgs, err := conn.Receive()
		if err != nil {
			if ctx.Err() != nil || isClosed(err) {
				return
			}
			if errors.Is(err, unix.ENOBUFS) {
				l.overrun(ctr, what)
				continue
			}
			l.readFailed(what, err)
			return
		}
		handle(msgs)
	}
}
