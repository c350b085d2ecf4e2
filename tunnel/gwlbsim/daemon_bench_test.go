//go:build linux

package gwlbsim_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
)

// oneArm routes everything arriving on gwi-X back out gwo-X, the minimal
// one-arm steering, so the benchmark measures the tunnel itself.
type oneArm struct{ nl *netlink.Handle }

func (o oneArm) PairUp(ctx context.Context, p tunnel.Pair) error {
	table := 1000 + int(p.Slot)
	if err := o.nl.RouteAdd(&netlink.Route{LinkIndex: p.OutIndex, Table: table, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}); err != nil {
		return err
	}
	r := netlink.NewRule()
	r.IifName, r.Table, r.Priority, r.Family = p.In, table, table, unix.AF_INET
	return o.nl.RuleAdd(r)
}

func (o oneArm) PairDown(ctx context.Context, p tunnel.Pair) error { return nil }

// TestBenchDaemon runs Bench against the tunnel daemon (in process, in the
// appliance namespace) and against plain forwarding on the same
// namespaces, and logs the figures. It is a measurement, not a pass/fail
// performance test: set GWLBSIM_BENCH=1 to run it.
func TestBenchDaemon(t *testing.T) {
	if os.Getenv("GWLBSIM_BENCH") == "" {
		t.Skip("set GWLBSIM_BENCH=1 to measure the tunnel daemon")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	topo, err := gwlbsim.NewTopology(gwlbsim.TopologyConfig{Prefix: "gsb", Endpoints: []gwlbsim.EndpointConfig{{ID: 0x0123456789abcdef, AttachmentID: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Close()
	for _, kv := range [][2]string{{"net/ipv4/conf/all/rp_filter", "0"}, {"net/ipv4/conf/default/rp_filter", "0"}} {
		if err := topo.Appliance.Sysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	cfg := tunnel.DefaultConfig()
	cfg.AllowedSources = []netip.Prefix{netip.PrefixFrom(gwlbsim.GWLBAddr, 32)}
	cfg.Offload = os.Getenv("GWLBSIM_NO_OFFLOAD") == ""
	d, err := tunnel.New(cfg, slog.New(slog.DiscardHandler), nil, oneArm{topo.Appliance.Netlink()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inns.Do(topo.Appliance.Handle(), func() error { return d.Run(ctx) }) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatal(err)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon not ready")
	}
	for _, size := range []int{64, 8472} {
		var res [2]gwlbsim.BenchResult
		for i, mode := range []gwlbsim.Mode{gwlbsim.ModePlain, gwlbsim.ModeTunnel} {
			before := d.Stats()
			bc := gwlbsim.DefaultBenchConfig(topo)
			bc.Mode, bc.PayloadSize = mode, size
			r, err := gwlbsim.Bench(context.Background(), bc)
			if err != nil {
				t.Fatal(err)
			}
			if r.BadLength != 0 || r.FlatOut.ReceivedPPS == 0 {
				t.Fatalf("%s: %+v", mode, r)
			}
			res[i] = r
			if after := d.Stats(); mode == gwlbsim.ModeTunnel && len(after.Tunnels) == 1 {
				a := after.Tunnels[0]
				var b tunnel.TunnelStats
				if len(before.Tunnels) == 1 {
					b = before.Tunnels[0]
				}
				t.Logf("tun writes %d for %d packets in, reads %d for %d packets out; drops %v",
					a.TunWrites-b.TunWrites, a.PacketsIn-b.PacketsIn, a.TunReads-b.TunReads, a.PacketsOut-b.PacketsOut, after.Drops)
			}
			t.Logf("%-6s %5dB: best %8.0f pps %6.2f Gbps (flat out sent %8.0f recv %8.0f loss %4.1f%%) sender cpu %v of %v",
				mode, r.InnerSize, r.BestPPS, r.BestGbps, r.FlatOut.SentPPS, r.FlatOut.ReceivedPPS, r.FlatOut.Loss*100,
				r.SenderCPU.Round(time.Millisecond), r.Duration.Round(time.Millisecond))
		}
		if res[0].BestPPS > 0 {
			t.Logf("%dB: tunnel/plain = %s", res[0].InnerSize, fmt.Sprintf("%.2f", res[1].BestPPS/res[0].BestPPS))
		}
	}
}
