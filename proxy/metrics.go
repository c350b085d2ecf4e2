package proxy

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	accepted  *prometheus.CounterVec
	decisions *prometheus.CounterVec
	requests  *prometheus.CounterVec
	active    prometheus.Gauge
	limited   prometheus.Counter
	helloFail prometheus.Counter
	upErrs    prometheus.Counter
	shipFail  prometheus.Counter
	refused   prometheus.Counter
	mirrorH2  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gwlbproxy_proxy_connections_total",
			Help: "Client connections accepted, by scheme."}, []string{"scheme"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gwlbproxy_proxy_tls_decisions_total",
			Help: "TLS connection outcomes: bump, splice, deny."}, []string{"action"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gwlbproxy_proxy_requests_total",
			Help: "HTTP requests by policy action."}, []string{"action"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gwlbproxy_proxy_active_connections",
			Help: "Client connections currently open."}),
		limited: prometheus.NewCounter(prometheus.CounterOpts{Name: "gwlbproxy_proxy_connections_limited_total",
			Help: "Connections closed at once because max_conns was reached."}),
		helloFail: prometheus.NewCounter(prometheus.CounterOpts{Name: "gwlbproxy_proxy_client_hello_failures_total",
			Help: "TLS-port connections without a readable ClientHello (not TLS, timeout, malformed)."}),
		upErrs: prometheus.NewCounter(prometheus.CounterOpts{Name: "gwlbproxy_proxy_upstream_errors_total",
			Help: "Upstream dial, TLS verification or response failures."}),
		shipFail: prometheus.NewCounter(prometheus.CounterOpts{Name: "gwlbproxy_proxy_records_rejected_total",
			Help: "Records the Recorder did not accept."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "gwlbproxy_proxy_connections_refused_total",
			Help: "Connections reset at once because Admit refused them (log spool full under fail_closed)."}),
		mirrorH2: prometheus.NewCounter(prometheus.CounterOpts{Name: "gwlbproxy_mirror_h2_not_mirrored_total",
			Help: "Bumped HTTP/2 connections not mirrored while the decryption mirror is on (HTTP/2 is not mirrored)."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.accepted, m.decisions, m.requests, m.active, m.limited, m.helloFail, m.upErrs, m.shipFail, m.refused, m.mirrorH2} {
			reg.MustRegister(c)
		}
	}
	return m
}
