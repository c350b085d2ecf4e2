//go:build linux

package steer

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"net/netip"
	"strings"
	"testing"
)

func natConfig() Config {
	c := DefaultConfig()
	c.HTTPPorts = []uint16{80, 8080}
	c.SysctlInterval = 1e9
	return c
}

func tunnelConfig() Config {
	c := natConfig()
	c.EgressMode = EgressTunnel
	return c
}

func TestInterceptNAT(t *testing.T) {
	tp := newTopo(t, natConfig(), "a")
	tp.startProxy(false)
	tn := tp.tun["a"]
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(serverAddr, 80),
		netip.AddrPortFrom(serverAddr, 443),
		netip.AddrPortFrom(serverAddr, 8080),
		netip.AddrPortFrom(serverAddr6, 443),
	} {
		before := tn.out.Load()
		line, local, err := request(t, tn.cli, dst)
		if err != nil {
			t.Fatalf("%s: %v", dst, err)
		}
		want := fmt.Sprintf("proxy dst=%s ep=%x ok=true client=%s", dst, tn.endpointID, local)
		if line != want {
			t.Fatalf("%s: got %q, want %q", dst, line, want)
		}
		if tn.out.Load() == before {
			t.Fatalf("%s: reply did not leave through %s", dst, tn.pair.Out)
		}
	}
	if c := tp.s.Stats().Counters[ctrIntercepted]; c.Packets == 0 {
		t.Fatalf("intercepted counter is 0: %+v", tp.s.Stats())
	}
}

func TestOverlappingClients(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		t.Run(mode, func(t *testing.T) {
			cfg := natConfig()
			cfg.EgressMode = mode
			tp := newTopo(t, cfg, "a", "b")
			tp.startProxy(false)
			for _, x := range []string{"a", "b", "a", "b"} {
				tn := tp.tun[x]
				line, local, err := request(t, tn.cli, netip.AddrPortFrom(serverAddr, 443))
				if err != nil {
					t.Fatalf("tunnel %s: %v", x, err)
				}
				if local.Addr() != clientAddr {
					t.Fatalf("client address %s", local)
				}
				want := fmt.Sprintf("proxy dst=%s:443 ep=%x ok=true client=%s", serverAddr, tn.endpointID, local)
				if line != want {
					t.Fatalf("tunnel %s: got %q, want %q", x, line, want)
				}
			}
		})
	}
}

func TestForwardAndUpstream(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		t.Run(mode, func(t *testing.T) {
			cfg := natConfig()
			cfg.EgressMode = mode
			tp := newTopo(t, cfg, "a")
			tp.startProxy(true)
			tn := tp.tun["a"]

			// Not intercepted: port 22 is forwarded.
			line, local, err := request(t, tn.cli, netip.AddrPortFrom(serverAddr, 22))
			if err != nil {
				t.Fatalf("port 22: %v", err)
			}
			want := "egress " + netip.AddrPortFrom(egressAddr, 0).Addr().String() + ":"
			if mode == EgressTunnel {
				want = "tunnel " + local.String()
			}
			if !strings.HasPrefix(line, want) {
				t.Fatalf("port 22: got %q, want prefix %q", line, want)
			}

			// Intercepted and proxied upstream.
			for _, dst := range []netip.AddrPort{netip.AddrPortFrom(serverAddr, 80), netip.AddrPortFrom(serverAddr, 443)} {
				line, local, err = request(t, tn.cli, dst)
				if err != nil {
					t.Fatalf("%s: %v", dst, err)
				}
				want = fmt.Sprintf("proxied ep=%x via egress %s:", tn.endpointID, egressAddr)
				if mode == EgressTunnel {
					// The server behind the tunnel saw the client's own
					// address and port.
					want = fmt.Sprintf("proxied ep=%x via tunnel %s", tn.endpointID, local)
				}
				if !strings.HasPrefix(line, want) {
					t.Fatalf("%s: got %q, want prefix %q", dst, line, want)
				}
			}
		})
	}
}

// hostFirewall installs, in the appliance namespace, what a typical host
// firewall has (firewalld, ufw, Debian's nftables.conf examples): drop
// packets conntrack classifies as invalid. It is someone else's table: ours
// must work next to it.
func hostFirewall(t *testing.T, n *nsh) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(n.h)))
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Name: "hostfw", Family: nftables.TableFamilyINet})
	for _, h := range []*nftables.ChainHook{nftables.ChainHookInput, nftables.ChainHookOutput, nftables.ChainHookForward} {
		ch := c.AddChain(&nftables.Chain{Name: fmt.Sprint("h", *h), Table: tbl, Type: nftables.ChainTypeFilter, Hooknum: h, Priority: nftables.ChainPriorityFilter})
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(expr.CtStateBitINVALID), Xor: native32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("host firewall: %v", err)
	}
}

// TestUpstreamZone proves that in tunnel mode the client-side connection
// and the proxy's upstream connection, which have the same 5-tuple in the
// same direction, are two conntrack entries: the client side in the
// default zone with the tunnel's mark, the upstream in conntrack_zone. The
// control run without the zone rules shows the merge: one entry only.
// Both runs move 4 MiB through a host firewall that drops ct state invalid.
func TestUpstreamZone(t *testing.T) {
	for _, zone := range []bool{true, false} {
		t.Run(fmt.Sprint("zone=", zone), func(t *testing.T) {
			cfg := tunnelConfig()
			needRoot(t)
			tp := newTopoWith(t, cfg, func(s *Steerer) { s.testNoZone = !zone }, "a")
			hostFirewall(t, tp.app)
			tp.startProxy(true)
			tn := tp.tun["a"]
			dst := netip.AddrPortFrom(serverAddr, 443)
			line, local, total, err := bulk(t, tn.cli, dst)
			want := fmt.Sprintf("proxied ep=%x via tunnel %s", tn.endpointID, local)
			t.Logf("line=%q bytes=%d err=%v", line, total, err)
			if zone && (err != nil || line != want || total != bulkSize) {
				t.Fatalf("upstream through the tunnel failed: line=%q bytes=%d err=%v", line, total, err)
			}
			ct := tp.s.ct.Load()
			m0, err0 := ct.markZone(local, dst, 0)
			mz, errz := ct.markZone(local, dst, cfg.ConntrackZone)
			t.Logf("zone 0: mark %#x err %v; zone %d: mark %#x err %v", m0, err0, cfg.ConntrackZone, mz, errz)
			if err0 != nil || m0 != cfg.tunnelMark(tn.slot) {
				t.Fatalf("client-side entry: mark %#x err %v, want mark %#x", m0, err0, cfg.tunnelMark(tn.slot))
			}
			if zone && (errz != nil || mz != 0) {
				t.Fatalf("upstream entry in zone %d: mark %#x err %v, want a separate entry with mark 0", cfg.ConntrackZone, mz, errz)
			}
			if !zone && errz == nil {
				t.Fatalf("without zone rules an upstream entry exists in zone %d", cfg.ConntrackZone)
			}
		})
	}
}
