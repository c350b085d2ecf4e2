package logship

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// counters are plain atomics so Stats and Prometheus read the same numbers
// and Ship pays one atomic add per record.
type counters struct {
	in, acked, retried, deadLettered, dropped, truncated atomic.Uint64
	batches                                              atomic.Uint64
}

type metrics struct {
	putLatency prometheus.Histogram
	batchSize  prometheus.Histogram
}

func (s *Shipper) registerMetrics(reg prometheus.Registerer) error {
	s.m = metrics{
		putLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "gwlbproxy_logship_put_duration_seconds",
			Help:    "Latency of one successful sink write (PutLogEvents call).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "gwlbproxy_logship_batch_records",
			Help:    "Records per batch handed to the sink.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
	}
	if reg == nil {
		return nil
	}
	c := &s.c
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	cs := []prometheus.Collector{
		s.m.putLatency, s.m.batchSize,
		counter("gwlbproxy_logship_records_in_total", "Records accepted by Ship.", &c.in),
		counter("gwlbproxy_logship_records_acked_total", "Records delivered to the sink or dead-lettered (spool acknowledged).", &c.acked),
		counter("gwlbproxy_logship_put_retries_total", "Sink writes retried after a retryable error.", &c.retried),
		counter("gwlbproxy_logship_records_dead_lettered_total", "Records the sink refused for good, written to the dead-letter file.", &c.deadLettered),
		counter("gwlbproxy_logship_records_dropped_total", "Records dropped because the spool was full (drop policy).", &c.dropped),
		counter("gwlbproxy_logship_records_truncated_total", "Records over max_event_bytes shipped truncated.", &c.truncated),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gwlbproxy_logship_spool_bytes", Help: "Bytes in the spool."},
			func() float64 { return float64(s.sp.Bytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gwlbproxy_logship_oldest_unacked_seconds", Help: "Age of the oldest record not yet delivered."},
			func() float64 { return s.sp.OldestUnacked(time.Now()).Seconds() }),
	}
	for _, col := range cs {
		if err := reg.Register(col); err != nil {
			return fmt.Errorf("logship: registering metrics: %w", err)
		}
	}
	return nil
}
