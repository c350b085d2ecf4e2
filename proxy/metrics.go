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
	binding   *prometheus.CounterVec
	bindBy    map[string]prometheus.Counter // binding's labels, bound once

	clientLimited prometheus.Counter
	stalled       *prometheus.CounterVec
	maxConns      prometheus.GaugeFunc
	saturation    prometheus.GaugeFunc
}

// bindCount counts a binding outcome without a label lookup per
// connection.
func (m *metrics) bindCount(status string) {
	if c, ok := m.bindBy[status]; ok {
		c.Inc()
		return
	}
	m.binding.WithLabelValues(status).Inc()
}

func newMetrics(reg prometheus.Registerer, p *Proxy) *metrics {
	m := &metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gwlbproxy_proxy_connections_total",
			Help: "Client connections accepted, by scheme."}, []string{"scheme"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gwlbproxy_proxy_tls_decisions_total",
			Help: "TLS connection outcomes: bump, splice, deny, and not-tls (a splice closed at a malformed record header)."}, []string{"action"}),
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
		binding: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gwlbproxy_proxy_binding_total",
			Help: "Destination binding checks (new name on a connection), by outcome: match, mismatch, resolve-failed, none (rule opt-out), off."}, []string{"result"}),
		clientLimited: prometheus.NewCounter(prometheus.CounterOpts{Name: "gwlbproxy_proxy_connections_client_limited_total",
			Help: "Connections refused because their client address had max_conns_per_client connections open."}),
		stalled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gwlbproxy_proxy_stalled_total",
			Help: "Connections ended because one side made no progress for progress_timeout, by side."}, []string{"side"}),
		maxConns: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gwlbproxy_proxy_max_connections",
			Help: "The connection limit in force (max_conns, sized from memory when 0)."}, func() float64 { return float64(p.maxConns) }),
		saturation: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gwlbproxy_proxy_connection_saturation",
			Help: "Open client connections divided by the connection limit (0..1)."}, func() float64 {
			p.mu.Lock()
			n := len(p.active)
			p.mu.Unlock()
			return float64(n) / float64(p.maxConns)
		}),
		mirrorH2: prometheus.NewCounter(prometheus.CounterOpts{Name: "gwlbproxy_mirror_h2_not_mirrored_total",
			Help: "Bumped HTTP/2 connections not mirrored while the decryption mirror is on (HTTP/2 is not mirrored)."}),
	}
	m.bindBy = map[string]prometheus.Counter{}
	for _, s := range []string{bindMatch, bindMismatch, bindFailed, bindOptOut, bindOff} {
		m.bindBy[s] = m.binding.WithLabelValues(s)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.binding, m.accepted, m.decisions, m.requests, m.active, m.limited, m.helloFail, m.upErrs, m.shipFail, m.refused,
			m.clientLimited, m.stalled, m.maxConns, m.saturation, m.mirrorH2} {
			reg.MustRegister(c)
		}
	}
	return m
}
