//go:build linux

package tunnel

import (
	"sync/atomic"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons. The hot path counts into per-worker arrays indexed by
// these; names are metric labels and Stats keys.
const (
	dropForeignSource = iota // GENEVE from outside allowed_sources
	dropOversize             // datagram larger than the receive buffer
	dropTunnelLimit          // max_tunnels reached
	dropPendingFull          // new tunnel's pending queue full
	dropTunnelDown           // tunnel failed to come up or is being destroyed
	dropTunWrite             // writing to gwi- failed
	dropNoFlow               // return packet with no flow (GWLB only accepts flows it started)
	dropSend                 // sending to GWLB failed
	dropGSOMalformed         // super-packet read from a tun with a virtio-net header that does not fit it
	dropGSOOverMTU           // UDP super-packet whose datagrams exceed the MTU (GWLB would drop them)
	dropGeneveBase           // + geneve.Reason
	dropInnerBase     = dropGeneveBase + int(geneve.NumReasons)
	dropReturnBase    = dropInnerBase + int(flow.NumReasons)
	numDrops          = dropReturnBase + int(flow.NumReasons)
)

var dropNames = func() [numDrops]string {
	var n [numDrops]string
	n[dropForeignSource] = "foreign_source"
	n[dropOversize] = "oversize"
	n[dropTunnelLimit] = "tunnel_limit"
	n[dropPendingFull] = "pending_full"
	n[dropTunnelDown] = "tunnel_down"
	n[dropTunWrite] = "tun_write"
	n[dropNoFlow] = "no_flow"
	n[dropSend] = "send_error"
	n[dropGSOMalformed] = "return_gso_malformed"
	n[dropGSOOverMTU] = "return_gso_over_mtu"
	for r := geneve.Reason(0); r < geneve.NumReasons; r++ {
		n[dropGeneveBase+int(r)] = "geneve_" + r.String()
	}
	for r := flow.Reason(0); r < flow.NumReasons; r++ {
		n[dropInnerBase+int(r)] = "inner_" + r.String()
		n[dropReturnBase+int(r)] = "return_" + r.String()
	}
	return n
}()

// dirCounters are one tunnel's counters for one worker, padded so workers
// do not share cache lines.
type dirCounters struct {
	inPackets, inBytes   atomic.Uint64 // GWLB -> gwi-
	outPackets, outBytes atomic.Uint64 // gwi-/gwo- -> GWLB
	learnFailed          atomic.Uint64 // flow table full: forwarded, return unmatched
	tunWrites, tunReads  atomic.Uint64 // system calls; below packets when offloads merge them
	_                    [8]byte
}

// collector exports the daemon's counters at scrape time, so the packet
// path only touches atomics, never label lookups.
type collector struct {
	d *Daemon

	tunnels, created, destroyed, failed    *prometheus.Desc
	packets, bytes, drops, flows, learnErr *prometheus.Desc
	hookFail, pending, tunIO               *prometheus.Desc
}

func newCollector(d *Daemon) *collector {
	ep := []string{"endpoint_id", "interface"}
	return &collector{
		d:         d,
		tunnels:   prometheus.NewDesc("gwlbproxy_tunnel_pairs", "Live tunnel pairs (GWLB endpoints).", nil, nil),
		created:   prometheus.NewDesc("gwlbproxy_tunnel_pairs_created_total", "Tunnel pairs brought up.", nil, nil),
		destroyed: prometheus.NewDesc("gwlbproxy_tunnel_pairs_destroyed_total", "Tunnel pairs destroyed.", nil, nil),
		failed:    prometheus.NewDesc("gwlbproxy_tunnel_pair_failures_total", "Tunnel pairs that failed to come up.", nil, nil),
		packets:   prometheus.NewDesc("gwlbproxy_tunnel_packets_total", "Inner packets per tunnel; direction in = from GWLB, out = back to GWLB.", append(ep, "direction"), nil),
		bytes:     prometheus.NewDesc("gwlbproxy_tunnel_bytes_total", "Inner bytes per tunnel.", append(ep, "direction"), nil),
		drops:     prometheus.NewDesc("gwlbproxy_tunnel_drops_total", "Packets dropped, by reason.", []string{"reason"}, nil),
		flows:     prometheus.NewDesc("gwlbproxy_tunnel_flows", "Live flows per tunnel.", ep, nil),
		learnErr:  prometheus.NewDesc("gwlbproxy_tunnel_flow_learn_failures_total", "Packets forwarded whose flow could not be stored (table full).", ep, nil),
		hookFail:  prometheus.NewDesc("gwlbproxy_tunnel_hook_failures_total", "CREATE/DESTROY hooks that failed or timed out.", nil, nil),
		pending:   prometheus.NewDesc("gwlbproxy_tunnel_pending_packets_total", "Packets queued while a new tunnel came up.", nil, nil),
		tunIO:     prometheus.NewDesc("gwlbproxy_tunnel_tun_io_total", "Tun device writes (direction in) and reads (out); fewer than packets when offloads coalesce them into GSO super-packets.", append(ep, "direction"), nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.tunnels, c.created, c.destroyed, c.failed, c.packets, c.bytes, c.drops, c.flows, c.learnErr, c.hookFail, c.pending, c.tunIO} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	tuns := d.snapshot()
	ch <- prometheus.MustNewConstMetric(c.tunnels, prometheus.GaugeValue, float64(len(tuns)))
	ch <- prometheus.MustNewConstMetric(c.created, prometheus.CounterValue, float64(d.created.Load()))
	ch <- prometheus.MustNewConstMetric(c.destroyed, prometheus.CounterValue, float64(d.destroyed.Load()))
	ch <- prometheus.MustNewConstMetric(c.failed, prometheus.CounterValue, float64(d.failures.Load()))
	ch <- prometheus.MustNewConstMetric(c.hookFail, prometheus.CounterValue, float64(d.hookFailures.Load()))
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.CounterValue, float64(d.pendingQueued.Load()))
	for i, v := range d.dropTotals() {
		ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(v), dropNames[i])
	}
	for _, t := range tuns {
		s := t.counters()
		id, in := geneve.EndpointHex(t.pair.EndpointID), t.pair.In
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(s.PacketsIn), id, in, "in")
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(s.PacketsOut), id, in, "out")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.BytesIn), id, in, "in")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.BytesOut), id, in, "out")
		ch <- prometheus.MustNewConstMetric(c.learnErr, prometheus.CounterValue, float64(s.LearnFailed), id, in)
		ch <- prometheus.MustNewConstMetric(c.tunIO, prometheus.CounterValue, float64(s.TunWrites), id, in, "in")
		ch <- prometheus.MustNewConstMetric(c.tunIO, prometheus.CounterValue, float64(s.TunReads), id, in, "out")
		ch <- prometheus.MustNewConstMetric(c.flows, prometheus.GaugeValue, float64(t.flows.Stats().Flows), id, in)
	}
}
