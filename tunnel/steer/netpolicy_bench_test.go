//go:build linux

package steer

import (
	"context"
	"net/netip"
	"os"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flowlog"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/prometheus/client_golang/prometheus"
)

// countRecorder counts shipped records.
type countRecorder struct{ n chan struct{} }

func (c countRecorder) Ship(time.Time, []byte) error {
	select {
	case c.n <- struct{}{}:
	default:
	}
	return nil
}

// BenchmarkForwardNetworkPolicy measures, in one run, the forwarding rate
// of the tunnel path (GWLB simulator -> GENEVE -> tunnel daemon -> gwi- ->
// kernel forward -> gwo- -> GENEVE back, one-arm) with the network policy
// and flow records off (no rules, default allow, no flow logger) and on
// (deny by default, a rule allowing the benchmark's UDP, conntrack
// accounting and timestamps on, flow logger reading conntrack events and
// NFLOG). Each variant gets a fresh topology and steerer; the generator is
// gwlbsim.Bench (rate search to <= 1 % loss), unpinned. Reports the
// median best rate of each and on/off. The 64 benchmark flows are long-lived: this measures the cost of
// the policy and accounting per forwarded packet, not flow churn (see
// tunnel/flowlog's BenchmarkRecordPipeline and TestFloodRecordsOrSummaries).
//
//	go test -run '^$' -bench BenchmarkForwardNetworkPolicy -benchtime 1x ./tunnel/steer/
func BenchmarkForwardNetworkPolicy(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (network namespaces, tun, nftables)")
	}
	// Off and on alternate, three rounds each; the medians are reported
	// (one pair is at the mercy of whatever else the machine runs).
	var runs, gen, cost [2][]float64
	for b.Loop() {
		for range 3 {
			for i, on := range []bool{false, true} {
				m := forwardRate(b, on)
				runs[i] = append(runs[i], m.pps)
				gen[i] = append(gen[i], m.sender)
				cost[i] = append(cost[i], m.nsPerPkt)
			}
		}
	}
	off, on := median(runs[0]), median(runs[1])
	b.ReportMetric(off, "off_pps")
	b.ReportMetric(on, "on_pps")
	if off > 0 {
		b.ReportMetric(on/off, "on/off")
	}
	// The generator's sender thread, as a share of one CPU over each
	// run: near 1 it, not the appliance, would be the limit.
	b.ReportMetric(median(gen[0]), "gen_cpu_off")
	b.ReportMetric(median(gen[1]), "gen_cpu_on")
	// CPU the appliance spent per forwarded packet: meaningful even when
	// the generator limits the rate.
	co, cn := median(cost[0]), median(cost[1])
	b.ReportMetric(co, "off_ns/pkt")
	b.ReportMetric(cn, "on_ns/pkt")
	if co > 0 {
		b.ReportMetric(cn/co, "cost_on/off")
	}
	b.Logf("rounds: pps off %.0f on %.0f; appliance ns/pkt off %.0f on %.0f; generator sender CPU share off %.2f on %.2f",
		runs[0], runs[1], cost[0], cost[1], gen[0], gen[1])
}

// cpuTime is this process's CPU time (user + system, every thread).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// costRate is the fixed offered rate the cost per packet is measured at.
const costRate = 30000.0

// benchRun is one forwardRate measurement.
type benchRun struct {
	pps      float64 // best rate within 1 % loss
	sender   float64 // generator sender thread's share of one CPU
	nsPerPkt float64 // appliance CPU per forwarded packet
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// forwardRate measures one variant: the best rate, the generator's sender
// CPU share, and the appliance's CPU per forwarded packet at costRate
// offered (the same for off and on): this process's
// CPU time (the tunnel daemon, the flow logger, and the kernel work done in
// their system calls: forwarding and nftables run in the daemon's writes
// to gwi-*) minus the generator's own threads, over the nftables
// "forwarded" counter (every packet forwarded from the tunnel, on or off).
func forwardRate(b *testing.B, on bool) benchRun {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topo, err := gwlbsim.NewTopology(gwlbsim.TopologyConfig{Prefix: "npb",
		Endpoints: []gwlbsim.EndpointConfig{{ID: 0x0123456789abcdef, AttachmentID: 1}}})
	if err != nil {
		b.Fatal(err)
	}
	defer topo.Close()
	cfg := tunnelConfig()
	cfg.IPv6 = false
	if on {
		cfg.NetworkPolicy = NetworkPolicy{DefaultAction: NetDeny, LogGroup: 4757, Rules: []NetRule{
			{Name: "ssh", Action: NetAllow, Protocol: ProtoTCP, Ports: []policy.PortRange{{Lo: 22, Hi: 22}}},
			{Name: "bench", Action: NetAllow, Protocol: ProtoUDP, Destinations: []netip.Prefix{netip.PrefixFrom(gwlbsim.ServerAddr, 32)},
				Ports: []policy.PortRange{{Lo: 9000, Hi: 9000}}},
		}}
	}
	s, err := newSteerer(cfg, nil, nil, int(topo.Appliance.Handle()))
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if on {
		fcfg := flowlog.DefaultConfig()
		fs := s.FlowSource()
		fcfg.MarkBase, fcfg.MarkMask, fcfg.LogGroup, fcfg.InterceptPorts = fs.MarkBase, fs.MarkMask, fs.LogGroup, fs.InterceptPorts
		var l *flowlog.Logger
		// The logger's sockets and sysctls belong to the appliance
		// namespace: create them there.
		if err := inns.Do(topo.Appliance.Handle(), func() (err error) {
			if l, err = flowlog.New(fcfg, s, countRecorder{make(chan struct{}, 1)}, "bench", nil, nil); err != nil {
				return err
			}
			return l.Start(ctx)
		}); err != nil {
			b.Fatal(err)
		}
		defer l.Close()
	}
	tcfg := tunnel.DefaultConfig()
	tcfg.AllowedSources = []netip.Prefix{netip.PrefixFrom(gwlbsim.GWLBAddr, 32)}
	tcfg.Workers = 1
	d, err := tunnel.New(tcfg, nil, prometheus.NewRegistry(), s)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- inns.Do(topo.Appliance.Handle(), func() error { return d.Run(ctx) }) }()
	defer func() { cancel(); <-done }()
	select {
	case <-d.Ready():
	case err := <-done:
		b.Fatal(err)
	}
	bc := gwlbsim.DefaultBenchConfig(topo)
	warm := bc
	warm.Step, warm.Steps = 500*time.Millisecond, 1
	for deadline := time.Now().Add(30 * time.Second); ; {
		wr, err := gwlbsim.Bench(ctx, warm)
		if err != nil {
			b.Fatal(err)
		}
		if wr.FlatOut.ReceivedPPS > 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("nothing came back (policy on=%v); stats %+v", on, s.Stats())
		}
	}
	r, err := gwlbsim.Bench(ctx, bc)
	if err != nil {
		b.Fatal(err)
	}
	// The cost per packet at one fixed offered rate, the same for off
	// and on (below what this machine forwarded flat out), so both do
	// the same work whatever limits the rate search.
	cb := bc
	cb.Rates, cb.Step = []float64{costRate}, 2*time.Second
	fwd0 := s.Stats().Counters[ctrForwarded].Packets
	c0 := cpuTime()
	cr, err := gwlbsim.Bench(ctx, cb)
	if err != nil {
		b.Fatal(err)
	}
	appCPU := cpuTime() - c0 - cr.SenderCPU // returns are counted by the kernel (gwlbsim), not a thread
	fwd := s.Stats().Counters[ctrForwarded].Packets - fwd0
	var sender float64
	if r.Sending > 0 {
		sender = r.SenderCPU.Seconds() / r.Sending.Seconds()
	}
	b.Logf("policy+flow records on=%v: best %.0f pps (flat out sent %.0f recv %.0f); generator CPU over %s sending: %.0f%% of one CPU",
		on, r.BestPPS, r.FlatOut.SentPPS, r.FlatOut.ReceivedPPS, r.Sending.Round(time.Millisecond), 100*sender)
	if r.FlatOut.SentPPS < 1.2*r.BestPPS {
		b.Logf("warning: flat out the generator sent only %.0f pps, close to the best rate %.0f: the generator may be the limit", r.FlatOut.SentPPS, r.BestPPS)
	}
	var ns float64
	if fwd > 0 {
		ns = float64(appCPU.Nanoseconds()) / float64(fwd)
	}
	b.Logf("  at a fixed %.0f pps (received %.0f, loss %.2f%%): appliance CPU %s for %d forwarded packets: %.0f ns/packet",
		costRate, cr.FlatOut.ReceivedPPS, 100*cr.FlatOut.Loss, appCPU.Round(time.Millisecond), fwd, ns)
	return benchRun{pps: r.BestPPS, sender: sender, nsPerPkt: ns}
}
