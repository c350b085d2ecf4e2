//go:build linux

package steer

import (
	"context"
	"net/netip"
	"os"
	"sort"
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
	var runs [2][]float64
	for b.Loop() {
		for range 3 {
			for i, on := range []bool{false, true} {
				runs[i] = append(runs[i], forwardRate(b, on))
			}
		}
	}
	off, on := median(runs[0]), median(runs[1])
	b.ReportMetric(off, "off_pps")
	b.ReportMetric(on, "on_pps")
	if off > 0 {
		b.ReportMetric(on/off, "on/off")
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func forwardRate(b *testing.B, on bool) float64 {
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
	b.Logf("policy+flow records on=%v: best %.0f pps (flat out sent %.0f recv %.0f)", on, r.BestPPS, r.FlatOut.SentPPS, r.FlatOut.ReceivedPPS)
	return r.BestPPS
}
