//go:build linux

package steer

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/prometheus/client_golang/prometheus"
)

// TestE2EWithTunnelDaemon runs the real tunnel daemon (GENEVE from the
// GWLB simulator, tun pairs created on the first packet) with the Steerer as
// its Observer: TCP 443 from the client of each of two endpoints (same
// client address in both VPCs) is intercepted, attributed to its endpoint,
// and the reply goes back through the right tunnel and GENEVE options.
// The gwlbsim appliance namespace has no default route, as a one-arm
// appliance needs none: this failed (SYNs intercepted, no SYN-ACK ever
// sent) until the listeners carried mark_base, see doc.go.
func TestE2EWithTunnelDaemon(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprint("offload=", off), func(t *testing.T) { e2e(t, off) })
	}
}

func e2e(t *testing.T, offload bool) { e2eWith(t, tunnelConfig(), offload) }

// e2eWith runs the test with steering configuration scfg and returns the
// topology (torn down at cleanup) for further checks.
func e2eWith(t *testing.T, scfg Config, offload bool) *gwlbsim.Topology {
	needRoot(t)
	eps := []uint64{0x0123456789abcdef, 0x76bc493b822cd32f}
	var ecs []gwlbsim.EndpointConfig
	for i, ep := range eps {
		ecs = append(ecs, gwlbsim.EndpointConfig{ID: ep, AttachmentID: 0x1000 + uint64(i)})
	}
	topo, err := gwlbsim.NewTopology(gwlbsim.TopologyConfig{Prefix: "st", Endpoints: ecs})
	if err != nil {
		t.Fatalf("topology: %v", err)
	}
	t.Cleanup(func() { topo.Close() })
	// Local delivery (table route_table_base) routes via lo.
	lo, err := topo.Appliance.Netlink().LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.Appliance.Netlink().LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}

	log := testLogger(t)
	s, err := newSteerer(scfg, log, prometheus.NewRegistry(), int(topo.Appliance.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	tp := &topo_{s: s}
	tp.t = t
	tp.startProxy(false)

	cfg := tunnel.DefaultConfig()
	cfg.AllowedSources = []netip.Prefix{netip.PrefixFrom(gwlbsim.GWLBAddr, 32)}
	cfg.Workers = 2
	cfg.Offload = offload
	// make test runs this package again with GWLBPROXY_TEST_DATAPATH=userspace
	// so steering is tested behind both tunnel datapaths.
	if dp := os.Getenv("GWLBPROXY_TEST_DATAPATH"); dp != "" {
		cfg.Datapath = dp
	}
	d, err := tunnel.New(cfg, log, prometheus.NewRegistry(), s)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inns.Do(topo.Appliance.Handle(), func() error { return d.Run(ctx) }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("Run did not return")
		}
	})
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon not ready")
	}
	sctx, scancel := context.WithCancel(context.Background())
	t.Cleanup(scancel)
	sim, err := gwlbsim.Start(sctx, topo, gwlbsim.Config{Logger: log})
	if err != nil {
		t.Fatalf("sim: %v", err)
	}
	t.Cleanup(func() { sim.Close() })

	for round := 0; round < 2; round++ {
		for i, ep := range topo.Endpoints {
			var c net.Conn
			err := ep.Client.Do(func() (err error) {
				d := net.Dialer{Timeout: 20 * time.Second}
				c, err = d.Dial("tcp4", netip.AddrPortFrom(gwlbsim.ServerAddr, 443).String())
				return err
			})
			if err != nil {
				t.Fatalf("endpoint %d: dial: %v; steer stats %+v", i, err, s.Stats())
			}
			c.SetDeadline(time.Now().Add(20 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			local := c.LocalAddr().String()
			c.Close()
			if err != nil {
				t.Fatalf("endpoint %d: read: %v", i, err)
			}
			want := fmt.Sprintf("proxy dst=%s:443 ep=%x ok=true client=%s", gwlbsim.ServerAddr, eps[i], local)
			if strings.TrimSpace(line) != want {
				t.Fatalf("endpoint %d: got %q want %q", i, line, want)
			}
		}
	}
	if st := s.Stats(); st.Tunnels != 2 {
		t.Fatalf("tunnels %d, want 2", st.Tunnels)
	}
	return topo
}

// topo_ reuses startProxy without the namespace topology.
type topo_ = topo
