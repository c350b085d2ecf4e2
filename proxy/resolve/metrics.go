package resolve

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	queries   *prometheus.CounterVec
	lookups   *prometheus.CounterVec
	bound     *prometheus.CounterVec
	boundHit  prometheus.Counter // the hot path's counter, bound once
	latency   prometheus.Histogram
	truncated prometheus.Counter
	evicted   prometheus.Counter
	names     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gwlbproxy_resolve_queries_total",
			Help: "DNS queries sent, by outcome: ok, nxdomain, nodata, rcode_other, timeout, error, bad_question."}, []string{"result"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gwlbproxy_resolve_lookups_total",
			Help: "LookupNetIP calls: hit, miss, failure_cached."}, []string{"result"}),
		bound: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gwlbproxy_resolve_binding_checks_total",
			Help: "Binding checks: hit, mismatch_cached, failure_cached, resolved_match, mismatch, failed."}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gwlbproxy_resolve_query_seconds",
			Help: "DNS query latency (one question to one server).", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		truncated: prometheus.NewCounter(prometheus.CounterOpts{Name: "gwlbproxy_resolve_truncated_total",
			Help: "UDP answers truncated and retried over TCP."}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{Name: "gwlbproxy_resolve_evicted_total",
			Help: "Names evicted from the full cache."}),
		names: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gwlbproxy_resolve_cached_names",
			Help: "Names in the cache."}),
	}
	if reg != nil {
		// Several resolvers on one registry (binding's and another
		// component's) share the series instead of panicking.
		m.queries = register(reg, m.queries)
		m.lookups = register(reg, m.lookups)
		m.bound = register(reg, m.bound)
		m.latency = register(reg, m.latency)
		m.truncated = register(reg, m.truncated)
		m.evicted = register(reg, m.evicted)
		m.names = register(reg, m.names)
	}
	m.boundHit = m.bound.WithLabelValues("hit")
	return m
}

// register registers c, or returns the collector already registered
// under its name.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(fmt.Sprintf("resolve metrics: %v", err))
	}
	return c
}
