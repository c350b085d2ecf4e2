// Package logship ships the proxy's request records losslessly: Ship
// appends each record to a write-ahead spool (CRC-framed segments,
// group-commit fsync), one batcher cuts the spool into PutLogEvents-sized,
// chronologically sorted batches, and a small pool of senders delivers
// them to the configured sink (CloudWatch Logs, a rotated file, or
// stdout) with its own retry policy. A spool range is acknowledged only
// when every record in it was stored or dead-lettered; what is left after
// a crash or a drain deadline is replayed on the next start. Delivery is
// at least once; records carry a stable record_id for `dedup record_id`.
package logship

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gwlbproxy/gwlbproxy/logship/batch"
	"github.com/gwlbproxy/gwlbproxy/logship/spool"
	"github.com/gwlbproxy/gwlbproxy/proxy/schema"
)

// ErrClosed is returned by Ship after Close started.
var ErrClosed = errors.New("logship: shipper closed")

// ErrSpoolFull is returned by Ship when the spool is full and the policy
// is fail_closed; the proxy should stop accepting new connections.
var ErrSpoolFull = errors.New("logship: spool full (fail_closed)")

// ErrUndelivered is wrapped by Close when records are left in the spool.
var ErrUndelivered = errors.New("logship: records left undelivered")

// Shipper is the record pipeline. Ship, Health and Stats are safe for
// concurrent use.
type Shipper struct {
	cfg  Config
	log  *slog.Logger
	sp   *spool.Spool
	sink sink
	dl   *deadLetter
	emf  *emf
	c    counters
	m    metrics

	closed   atomic.Bool
	draining atomic.Bool
	drainCh  chan struct{} // closed by Close: flush everything now
	abort    chan struct{} // closed at the drain deadline: stop retrying
	sendCtx  context.Context
	cancel   context.CancelFunc
	batches  chan *batch.Batch
	pool     sync.Pool
	wg       sync.WaitGroup
	bgWG     sync.WaitGroup
	closeMu  sync.Mutex
	closeErr error
	closeRan bool

	dropLogMu   sync.Mutex
	lastDropLog time.Time
}

// New builds the sink (the cloudwatch sink from cfg.CloudWatch.AWS),
// opens the spool (replaying what a previous run left) and starts the
// pipeline. reg may be nil.
func New(ctx context.Context, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Shipper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("logship: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "logship")
	s := &Shipper{cfg: cfg, log: log, drainCh: make(chan struct{}), abort: make(chan struct{})}
	s.pool.New = func() any {
		return batch.New(batch.Limits{})
	}

	var err error
	switch cfg.Sink {
	case SinkStdout:
		w := cfg.Stdout
		if w == nil {
			w = os.Stdout
		}
		s.sink = &lineSink{w: w}
	case SinkFile:
		if s.sink, err = newFileSink(cfg.File); err != nil {
			return nil, err
		}
	case SinkCloudWatch:
		if s.sink, err = newCloudWatchSink(cfg, log); err != nil {
			return nil, err
		}
	}
	if s.dl, err = openDeadLetter(cfg.DeadLetterPath); err != nil {
		s.sink.close()
		return nil, err
	}
	scfg := spool.Config{MaxBytes: cfg.Spool.MaxBytes, SegmentBytes: cfg.Spool.SegmentBytes, SyncInterval: cfg.Spool.FsyncInterval}
	if cfg.Spool.Enabled {
		scfg.Dir = cfg.Spool.Dir
	} else if cfg.Sink != SinkStdout {
		log.Warn("logship: spool disabled: records in memory are lost on crash", "sink", cfg.Sink)
	}
	if s.sp, err = spool.Open(scfg, log); err != nil {
		s.sink.close()
		s.dl.close()
		return nil, fmt.Errorf("logship: %w", err)
	}
	if err := s.registerMetrics(reg); err != nil {
		s.sp.Close()
		s.sink.close()
		s.dl.close()
		return nil, err
	}

	senders := cfg.Senders
	if s.sink.ordered() {
		senders = 1
	}
	s.sendCtx, s.cancel = context.WithCancel(context.Background())
	s.batches = make(chan *batch.Batch, senders)
	s.wg.Add(1 + senders)
	go s.batcher()
	for range senders {
		go s.sender()
	}
	if cfg.EMF.Enabled {
		s.emf = newEMF(cfg.EMF, instanceLabel(cfg, s.sink))
		s.bgWG.Add(1)
		go s.emfLoop()
	}
	log.Info("logship: started", "sink", cfg.Sink, "spool", scfg.Dir, "senders", senders,
		"replaying", s.sp.Unacked())
	return s, nil
}

// Ship accepts one record (a JSON object, no trailing newline); the bytes
// are copied. It returns an error only when the record is not accepted:
// the shipper is closed, or the spool is full under the fail_closed policy.
// Records shipped with Ship (flow records, IDS alerts) are not counted in
// the per-request EMF metrics; requests come through ShipRequest.
func (s *Shipper) Ship(ts time.Time, record []byte) error {
	return s.ship(ts, record, schema.Metrics{}, false)
}

// ShipRequest is Ship for the proxy's request records (it implements
// proxy.Recorder): m, the record's metric fields typed by proxy/schema, is
// counted in the EMF metrics.
func (s *Shipper) ShipRequest(ts time.Time, record []byte, m schema.Metrics) error {
	return s.ship(ts, record, m, true)
}

func (s *Shipper) ship(ts time.Time, record []byte, m schema.Metrics, request bool) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if len(record) == 0 {
		return errors.New("logship: empty record")
	}
	if len(record) > s.cfg.MaxEventBytes {
		record = batch.Truncate(record, s.cfg.MaxEventBytes)
		s.c.truncated.Add(1)
	}
	if request && s.emf != nil {
		s.emf.observe(m)
	}
	if _, err := s.sp.Append(ts.UnixMilli(), record); err != nil {
		if errors.Is(err, spool.ErrClosed) {
			return ErrClosed
		}
		if s.cfg.Spool.FullPolicy == FullDrop {
			s.c.dropped.Add(1)
			s.logDrop()
			return nil
		}
		return ErrSpoolFull
	}
	s.c.in.Add(1)
	return nil
}

// Admit reports whether new records would be refused: ErrSpoolFull while
// the spool is full under the fail_closed policy. The proxy asks it for
// every new connection, so it takes one short lock and allocates nothing.
func (s *Shipper) Admit() error {
	if s.cfg.Spool.FullPolicy == FullFailClosed && s.sp.Full() {
		return ErrSpoolFull
	}
	return nil
}

// logDrop logs dropped records loudly but at most every 10 s.
func (s *Shipper) logDrop() {
	s.dropLogMu.Lock()
	defer s.dropLogMu.Unlock()
	if time.Since(s.lastDropLog) < 10*time.Second {
		return
	}
	s.lastDropLog = time.Now()
	s.log.Error("logship: SPOOL FULL, DROPPING RECORDS (spool.full_policy=drop)",
		"dropped_total", s.c.dropped.Load(), "spool_bytes", s.sp.Bytes(), "oldest_unacked", s.sp.OldestUnacked(time.Now()))
}

// Health is nil while records flow. It is red when the spool is full under
// fail_closed (the proxy must stop taking connections), when the oldest
// undelivered record is older than unhealthy_age, and after Close.
func (s *Shipper) Health() error {
	if s.closed.Load() {
		return ErrClosed
	}
	if s.cfg.Spool.FullPolicy == FullFailClosed && s.sp.Full() {
		return fmt.Errorf("logship: spool full (%d bytes), refusing records (fail_closed)", s.sp.Bytes())
	}
	if s.cfg.UnhealthyAge > 0 {
		if age := s.sp.OldestUnacked(time.Now()); age > s.cfg.UnhealthyAge {
			return fmt.Errorf("logship: oldest undelivered record is %s old (unhealthy_age %s)", age.Round(time.Second), s.cfg.UnhealthyAge)
		}
	}
	return nil
}

// Stats is a JSON snapshot for the health endpoint.
type Stats struct {
	Sink          string      `json:"sink"`
	Destination   string      `json:"destination,omitempty"`
	RecordsIn     uint64      `json:"records_in"`
	Acked         uint64      `json:"acked"`
	Retried       uint64      `json:"retried"`
	DeadLettered  uint64      `json:"dead_lettered"`
	Dropped       uint64      `json:"dropped"`
	Truncated     uint64      `json:"truncated"`
	Batches       uint64      `json:"batches"`
	Unacked       uint64      `json:"unacked"`
	OldestUnacked string      `json:"oldest_unacked"`
	Spool         spool.Stats `json:"spool"`
}

// Stats returns the counters.
func (s *Shipper) Stats() Stats {
	st := Stats{
		Sink:          s.cfg.Sink,
		RecordsIn:     s.c.in.Load(),
		Acked:         s.c.acked.Load(),
		Retried:       s.c.retried.Load(),
		DeadLettered:  s.c.deadLettered.Load(),
		Dropped:       s.c.dropped.Load(),
		Truncated:     s.c.truncated.Load(),
		Batches:       s.c.batches.Load(),
		Unacked:       s.sp.Unacked(),
		OldestUnacked: s.sp.OldestUnacked(time.Now()).String(),
		Spool:         s.sp.Stats(),
	}
	if cw, ok := s.sink.(*cwSink); ok {
		st.Destination = cw.group + "/" + cw.stream
	}
	return st
}

// Sync forces everything shipped so far to be written and fsynced to the
// spool now instead of at the next group commit.
func (s *Shipper) Sync() error { return s.sp.Sync() }

// SpoolNextSeq, SpoolHold and SpoolScanFrom give a producer that keeps its
// own input position (logship/evetail) what it needs to skip, after a
// crash, input whose records the spool already holds: the spool's
// (*spool.Spool).NextSeq, Hold and ScanFrom.
func (s *Shipper) SpoolNextSeq() uint64 { return s.sp.NextSeq() }

// SpoolHold: see SpoolNextSeq.
func (s *Shipper) SpoolHold(seq uint64) error { return s.sp.Hold(seq) }

// SpoolScanFrom: see SpoolNextSeq.
func (s *Shipper) SpoolScanFrom(seq uint64, fn func(record []byte) bool) (complete bool, err error) {
	return s.sp.ScanFrom(seq, fn)
}

// Close stops intake, flushes the last batch and keeps delivering until
// the spool is drained or the deadline (drain_deadline, or ctx if sooner)
// passes. Undelivered records stay in the spool for the next start; Close
// then returns an error wrapping ErrUndelivered with their count.
func (s *Shipper) Close(ctx context.Context) error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closeRan {
		return s.closeErr
	}
	s.closeRan = true
	if s.emf != nil {
		close(s.emf.stop)
		s.bgWG.Wait()
	}
	s.closed.Store(true)
	start := time.Now()
	if err := s.sp.Sync(); err != nil {
		s.log.Error("logship: final spool sync", "err", err)
	}
	s.draining.Store(true)
	close(s.drainCh)

	dctx, cancel := context.WithTimeout(ctx, s.cfg.DrainDeadline)
	defer cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-dctx.Done():
		close(s.abort)
		s.cancel()
		<-done
	}
	s.cancel()

	left := s.sp.Unacked()
	var errs []error
	if err := s.sp.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := s.sink.close(); err != nil {
		errs = append(errs, err)
	}
	if err := s.dl.close(); err != nil {
		errs = append(errs, err)
	}
	if left > 0 {
		where := "kept in the spool for the next start"
		if !s.cfg.Spool.Enabled {
			where = "LOST (spool disabled)"
		}
		s.log.Warn("logship: drain deadline reached with records undelivered", "records", left, "fate", where,
			"after", time.Since(start).Round(time.Millisecond))
		errs = append(errs, fmt.Errorf("%w: %d records %s", ErrUndelivered, left, where))
	} else {
		s.log.Info("logship: drained", "after", time.Since(start).Round(time.Millisecond), "acked_total", s.c.acked.Load())
	}
	s.closeErr = errors.Join(errs...)
	return s.closeErr
}
