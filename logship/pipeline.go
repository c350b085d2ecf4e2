package logship

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship/batch"
)

func (s *Shipper) getBatch() *batch.Batch {
	b := s.pool.Get().(*batch.Batch)
	b.Reset()
	return b
}

// batcher is the spool's only reader. It cuts batches at the size, count
// and span limits, or when the oldest record in the batch has waited
// flush_interval, and hands them to the senders in spool order. Each batch
// covers the contiguous spool range [From, To) so acknowledgements tile
// the sequence space even across damaged, skipped frames.
func (s *Shipper) batcher() {
	defer s.wg.Done()
	defer close(s.batches)
	b := s.getBatch()
	cursor := s.sp.FirstUnacked()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	maxEvent := s.cfg.MaxEventBytes
	for {
		draining := s.draining.Load()
		full := false
		n, err := s.sp.Read(func(seq uint64, ts int64, rec []byte) bool {
			if !b.Fits(ts, len(rec)) {
				if b.Len() > 0 {
					full = true
					return false
				}
				// Spooled under a larger max_event_bytes: never drop.
				rec = batch.Truncate(rec, maxEvent)
			}
			if b.Len() == 0 {
				b.From = cursor
				b.Created = time.Now()
			}
			b.Add(seq, ts, rec)
			b.To = seq + 1
			return true
		})
		if err != nil {
			s.log.Error("logship: reading spool", "err", err)
		}
		if b.Len() > 0 && (full || draining || time.Since(b.Created) >= s.cfg.FlushInterval) {
			cursor = b.To
			select {
			case s.batches <- b:
			case <-s.abort:
				return
			}
			b = s.getBatch()
			continue
		}
		if draining && b.Len() == 0 && n == 0 && err == nil {
			return // everything spooled has been handed to the senders
		}
		wait := s.cfg.FlushInterval
		if b.Len() > 0 {
			wait -= time.Since(b.Created)
		}
		if err != nil {
			wait = min(wait, 100*time.Millisecond)
		}
		timer.Reset(max(wait, time.Millisecond))
		select {
		case <-s.sp.Ready():
		case <-timer.C:
		case <-s.drainCh: // flush the partial batch now
		case <-s.abort:
			return
		}
	}
}

// sender delivers batches and acknowledges their spool range.
func (s *Shipper) sender() {
	defer s.wg.Done()
	for b := range s.batches {
		if err := s.deliver(s.sendCtx, b); err != nil {
			continue // drain deadline: the range stays in the spool
		}
		s.sp.Ack(b.From, b.To)
		s.c.acked.Add(uint64(b.Len()))
		s.c.batches.Add(1)
		s.pool.Put(b)
	}
}

func (s *Shipper) deliver(ctx context.Context, b *batch.Batch) error {
	b.Sort()
	s.m.batchSize.Observe(float64(b.Len()))
	return s.putRun(ctx, b, b.Events)
}

// putRun stores evs (a chronological run of b's events), retrying until
// every event is stored or dead-lettered, or ctx ends. Throttling, 5xx,
// timeouts, network and unknown errors are retried forever with jittered
// exponential backoff; a missing stream is created; InvalidParameter
// splits the run in halves until the bad record is alone.
func (s *Shipper) putRun(ctx context.Context, b *batch.Batch, evs []batch.Event) error {
	for attempt := 0; ; attempt++ {
		start := time.Now()
		rej, err := s.sink.put(ctx, b, evs)
		if err == nil {
			s.m.putLatency.Observe(time.Since(start).Seconds())
			for _, r := range rej {
				if err := s.deadLetter(ctx, b, evs[r.lo:r.hi], r.reason); err != nil {
					return err
				}
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch classify(err) {
		case classInvalid:
			if len(evs) == 1 {
				return s.deadLetter(ctx, b, evs, "invalid_parameter: "+err.Error())
			}
			mid := len(evs) / 2
			if err := s.putRun(ctx, b, evs[:mid]); err != nil {
				return err
			}
			return s.putRun(ctx, b, evs[mid:])
		case classNotFound:
			s.log.Warn("logship: log stream or group missing, creating", "err", err)
			if eerr := s.sink.ensure(ctx); eerr != nil {
				err = eerr
			} else if attempt == 0 {
				continue // retry at once after creating
			}
		}
		s.c.retried.Add(1)
		if attempt == 0 || attempt%10 == 0 {
			s.log.Warn("logship: sink write failed, retrying", "attempt", attempt+1, "records", len(evs), "err", err)
		}
		if !sleep(ctx, s.backoff(attempt)) {
			return ctx.Err()
		}
	}
}

// deadLetter writes refused records to the dead-letter file, retrying a
// failing disk like any other sink error.
func (s *Shipper) deadLetter(ctx context.Context, b *batch.Batch, evs []batch.Event, reason string) error {
	for attempt := 0; ; attempt++ {
		err := s.dl.write(b, evs, reason)
		if err == nil {
			s.c.deadLettered.Add(uint64(len(evs)))
			s.log.Warn("logship: records dead-lettered", "records", len(evs), "reason", reason, "file", s.dl.path)
			return nil
		}
		s.log.Error("logship: dead-letter write failed, retrying", "err", err)
		if !sleep(ctx, s.backoff(attempt)) {
			return ctx.Err()
		}
	}
}

// backoff is exponential from min_backoff, capped at max_backoff, with
// jitter over the upper half so a fleet does not retry in lockstep.
func (s *Shipper) backoff(attempt int) time.Duration {
	d := s.cfg.Retry.MinBackoff << min(attempt, 30)
	if d <= 0 || d > s.cfg.Retry.MaxBackoff {
		d = s.cfg.Retry.MaxBackoff
	}
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
