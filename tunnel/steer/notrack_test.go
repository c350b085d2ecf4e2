//go:build linux

package steer

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// geneveEntries counts the conntrack entries of handle h whose original or
// reply direction is UDP to the GENEVE port.
func geneveEntries(t *testing.T, h *netlink.Handle) int {
	t.Helper()
	n := 0
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			t.Fatalf("conntrack list: %v", err)
		}
		for _, f := range flows {
			if f.Forward.Protocol == unix.IPPROTO_UDP && (f.Forward.DstPort == geneve.Port || f.Reverse.DstPort == geneve.Port) {
				n++
			}
		}
	}
	return n
}

// TestNotrackGeneve runs the real tunnel daemon with GENEVE from the GWLB
// simulator: with notrack_geneve the appliance's conntrack table holds no
// entry for the outer packets (in or out) while interception still works
// both ways; without it, it holds one per GWLB flow.
func TestNotrackGeneve(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprint("notrack=", on), func(t *testing.T) {
			cfg := tunnelConfig()
			cfg.NotrackGeneve = on
			cfg.GeneveSources = []netip.Prefix{netip.PrefixFrom(gwlbsim.GWLBAddr, 32)}
			topo := e2eWith(t, cfg, true)
			n := geneveEntries(t, topo.Appliance.Netlink())
			switch {
			case on && n != 0:
				t.Fatalf("notrack_geneve on: %d conntrack entries for UDP %d, want 0", n, geneve.Port)
			case !on && n == 0:
				t.Fatalf("notrack_geneve off: no conntrack entry for UDP %d; the test would not see tracking", geneve.Port)
			}
			t.Logf("conntrack entries for UDP %d: %d", geneve.Port, n)
		})
	}
}

// TestNotrackGeneveInnerFlow: an inner flow to the GENEVE port (a client
// behind GWLB talking GENEVE or anything else on UDP 6081) stays tracked,
// so it is masqueraded (nat) and its replies find their tunnel.
func TestNotrackGeneveInnerFlow(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		t.Run(mode, func(t *testing.T) {
			cfg := natConfig()
			cfg.EgressMode = mode
			tp := newTopo(t, cfg, "a")
			tn := tp.tun["a"]
			srv, side := tp.eg, "egress"
			if mode == EgressTunnel {
				srv, side = tn.srv, "tunnel"
			}
			var pc net.PacketConn
			if err := srv.do(func() (err error) {
				pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(serverAddr, geneve.Port).String())
				return
			}); err != nil {
				t.Fatal(err)
			}
			serveUDP(t, pc, func(msg string, _ net.Addr) string { return side + " " + msg })
			var got string
			var err error
			for i := 0; i < 3 && !strings.HasPrefix(got, side+" hello"); i++ { // UDP: retry on a loaded box
				got, err = udpExchange(t, tn.cli, netip.AddrPortFrom(serverAddr, geneve.Port), 10*time.Second)
			}
			if !strings.HasPrefix(got, side+" hello") {
				t.Fatalf("udp to %s:%d from a tunnel: got %q, %v; want the %s server's echo", serverAddr, geneve.Port, got, err, side)
			}
			if n := geneveEntries(t, tp.app.nl); n != 1 {
				t.Fatalf("%d conntrack entries for the inner flow to UDP %d, want 1", n, geneve.Port)
			}
		})
	}
}

// TestNotrackGeneveRules: the rules are there when on, in both modes, and
// raw chains exist in nat mode only because of them.
func TestNotrackGeneveRules(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		for _, on := range []bool{true, false} {
			cfg := DefaultConfig()
			cfg.EgressMode = mode
			cfg.NotrackGeneve = on
			cfg.GenevePort = 6082
			cfg.GeneveSources = []netip.Prefix{netip.MustParsePrefix("10.0.128.0/24"), netip.MustParsePrefix("2001:db8:4757::/64")}
			s := &Steerer{cfg: cfg}
			rs := s.buildRuleset("eth0")
			var texts []string
			for _, r := range rs.rules {
				texts = append(texts, r.chain+": "+r.text)
			}
			all := strings.Join(texts, "\n")
			_, raw := rs.chains[chainRawPre]
			if want := on || mode == EgressTunnel; raw != want {
				t.Errorf("%s notrack=%v: raw chains %v, want %v", mode, on, raw, want)
			}
			for _, want := range []string{
				chainRawPre + ": iif != @tunnels ip saddr 10.0.128.0/24 meta l4proto udp udp dport 6082 notrack",
				chainRawOut + ": ip daddr 10.0.128.0/24 meta l4proto udp udp dport 6082 notrack",
				chainRawPre + ": iif != @tunnels ip6 saddr 2001:db8:4757::/64 meta l4proto udp udp dport 6082 notrack",
				chainRawOut + ": ip6 daddr 2001:db8:4757::/64 meta l4proto udp udp dport 6082 notrack",
			} {
				if strings.Contains(all, want) != on {
					t.Errorf("%s notrack=%v: rule %q present=%v\n%s", mode, on, want, !on, all)
				}
			}
		}
	}
}

// TestNotrackGeneveMasqueradedPort: in nat mode a forwarded UDP flow from
// a client's source port equal to the GENEVE port keeps that port under
// masquerade (nothing tracked holds it); its replies come back to the
// appliance's GENEVE port from a server outside GWLB's subnets, so they
// must stay tracked to be de-NATed to the client. (An unrestricted
// "udp dport 6081 notrack" loses them.)
func TestNotrackGeneveMasqueradedPort(t *testing.T) {
	cfg := natConfig()
	cfg.NotrackGeneve = true
	cfg.GeneveSources = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/30")}
	tp := newTopo(t, cfg, "a")
	tn := tp.tun["a"]
	var srv net.PacketConn
	if err := tp.eg.do(func() (err error) {
		srv, err = net.ListenPacket("udp4", netip.AddrPortFrom(serverAddr, 7).String())
		return
	}); err != nil {
		t.Fatal(err)
	}
	serveUDP(t, srv, func(msg string, from net.Addr) string { return "echo " + msg + " to " + from.String() })
	var pc net.PacketConn
	if err := tn.cli.do(func() (err error) {
		pc, err = net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", geneve.Port))
		return
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	buf := make([]byte, 2048)
	var got string
	for i := 0; i < 3 && got == ""; i++ { // UDP: retry on a loaded box
		if _, err := pc.WriteTo([]byte("hello"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(serverAddr, 7))); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if k, _, err := pc.ReadFrom(buf); err == nil {
			got = string(buf[:k])
		}
	}
	want := fmt.Sprintf("echo hello to %s:%d", egressAddr, geneve.Port)
	if got != want {
		t.Fatalf("udp from source port %d through nat: got %q, want %q (the reply reached the appliance's GENEVE port but was not de-NATed)", geneve.Port, got, want)
	}
}
