//go:build linux

package steer

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// udpExchange sends one datagram from n to dst and waits up to wait for an
// answer.
func udpExchange(t *testing.T, n *nsh, dst netip.AddrPort, wait time.Duration) (string, error) {
	t.Helper()
	var pc net.PacketConn
	if err := n.do(func() (err error) { pc, err = net.ListenPacket("udp4", "0.0.0.0:0"); return }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.WriteTo([]byte("hello"), net.UDPAddrFromAddrPort(dst)); err != nil {
		return "", err
	}
	pc.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	k, _, err := pc.ReadFrom(buf)
	return string(buf[:k]), err
}

func ping(t *testing.T, n *nsh, dst netip.Addr, wait time.Duration) error {
	t.Helper()
	var c *icmp.PacketConn
	if err := n.do(func() (err error) { c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0"); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 0x4757, Seq: 1, Data: []byte("gwlbproxy")}}
	b, _ := msg.Marshal(nil)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 1500)
		for {
			k, from, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			m, err := icmp.ParseMessage(1, buf[:k])
			if err == nil && m.Type == ipv4.ICMPTypeEchoReply && from.String() == dst.String() {
				return nil
			}
		}
	}
	return errors.New("no echo reply")
}

func TestGuards(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		t.Run(mode, func(t *testing.T) {
			cfg := natConfig()
			cfg.EgressMode = mode
			tp := newTopo(t, cfg, "a")
			tp.startProxy(false)
			tn := tp.tun["a"]
			side := "egress"
			if mode == EgressTunnel {
				side = "tunnel"
			}

			// Ping is forwarded (and its reply returns through gwo-*).
			if err := ping(t, tn.cli, serverAddr, 20*time.Second); err != nil {
				t.Fatalf("ping %s: %v", serverAddr, err)
			}

			// UDP to a non-QUIC port passes; UDP 443 is dropped and counted.
			got, err := udpExchange(t, tn.cli, netip.AddrPortFrom(serverAddr, 4433), 20*time.Second)
			if err != nil || !strings.HasPrefix(got, side+" hello") {
				t.Fatalf("udp 4433: %q %v", got, err)
			}
			if got, err := udpExchange(t, tn.cli, netip.AddrPortFrom(serverAddr, 443), 2*time.Second); err == nil {
				t.Fatalf("udp 443 answered: %q", got)
			}
			waitFor(t, "quic_dropped counter", func() bool { return tp.s.Stats().Counters[ctrQUICDropped].Packets > 0 })

			// Instance metadata is never reached from a tunnel (the egress
			// namespace does answer on 169.254.169.254:22 if asked).
			if c, err := dial(t, tn.cli, netip.MustParseAddrPort("169.254.169.254:22"), 2*time.Second); err == nil {
				c.Close()
				t.Fatal("169.254.169.254:22 reachable from a tunnel")
			}
			waitFor(t, "guard_dropped counter", func() bool { return tp.s.Stats().Counters[ctrGuardDropped].Packets > 0 })

			// The appliance's own address is not reachable from a tunnel.
			if c, err := dial(t, tn.cli, netip.AddrPortFrom(egressAddr, 22), 2*time.Second); err == nil {
				c.Close()
				t.Fatal("appliance address reachable from a tunnel")
			}
			waitFor(t, "local_dropped counter", func() bool { return tp.s.Stats().Counters[ctrLocalDropped].Packets > 0 })

			// A direct connection to the listener ports from another
			// interface, and from the appliance itself, is refused.
			for _, p := range []uint16{cfg.HTTPListenPort, cfg.TLSListenPort} {
				_, err := dial(t, tp.eg, netip.AddrPortFrom(egressAddr, p), 20*time.Second)
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("direct connect to %s:%d from egress: %v, want connection refused", egressAddr, p, err)
				}
				_, err = dial(t, tp.app, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p), 20*time.Second)
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("local connect to 127.0.0.1:%d: %v, want connection refused", p, err)
				}
			}
			if tp.s.Stats().Counters[ctrDirectRefused].Packets == 0 {
				t.Fatal("direct_refused counter is 0")
			}
			if err := tp.s.Health(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCloseRemovesEverything: after PairDown and Close nothing of ours
// remains; a restart over a crashed run's leftovers replaces them.
func TestCloseRemovesEverything(t *testing.T) {
	cfg := tunnelConfig()
	tp := newTopo(t, cfg, "a", "b")
	tn := tp.tun["b"]
	ctx := context.Background()
	if err := tp.s.PairDown(ctx, tn.pair); err != nil {
		t.Fatal(err)
	}
	assertRouting(t, tp, cfg, func(table int) bool { return table == cfg.tunnelTable(tn.slot) }, 0)
	if !strings.Contains(tp.s.Explain(), "gwi-a") || strings.Contains(tp.s.Explain(), "gwi-b") {
		t.Fatalf("Explain after PairDown:\n%s", tp.s.Explain())
	}

	// A "crashed" run: a second steerer on the same namespace installs
	// over the first one's table and rules without Close.
	s2, err := newSteerer(cfg, testLogger(t), nil, int(tp.app.h))
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Start(ctx); err != nil {
		t.Fatalf("restart over leftovers: %v", err)
	}
	if err := s2.PairUp(ctx, tp.tun["a"].pair); err != nil {
		t.Fatal(err)
	}
	// One table, no duplicate rules.
	assertRouting(t, tp, cfg, func(table int) bool { return table == int(cfg.RouteTableBase) }, 2)
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tp.s.Close(); err != nil {
		t.Fatal(err)
	}
	assertRouting(t, tp, cfg, func(int) bool { return true }, 0)
	c, err := nftables.New(nftables.WithNetNSFd(int(tp.app.h)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == cfg.TableName {
			t.Fatalf("table %s still there after Close", tb.Name)
		}
	}
	if tp.s.Health() == nil {
		t.Fatal("healthy after Close")
	}
}

// assertRouting checks that exactly want rules (v4+v6) point at tables in
// our range matching sel, and that no route remains in a selected table
// when want is 0.
func assertRouting(t *testing.T, tp *topo, cfg Config, sel func(int) bool, want int) {
	t.Helper()
	ours := func(table int) bool {
		return table >= int(cfg.RouteTableBase) && table <= int(cfg.RouteTableBase)+maxSlot && sel(table)
	}
	n := 0
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := tp.app.nl.RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if ours(r.Table) {
				n++
			}
		}
		routes, err := tp.app.nl.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if ours(r.Table) && want == 0 {
				t.Fatalf("route %v in table %d remains", r, r.Table)
			}
		}
	}
	if n != want {
		t.Fatalf("%d rules in our tables, want %d", n, want)
	}
}
