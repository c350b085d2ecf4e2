//go:build linux

package steer

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestTunnelLookupOncePerBaseChain: a packet from a tunnel pays the
// iif @tunnels lookup once per base chain (issue 20): every rule of the
// *_tunnel chains and the guard chains is free of it, and no base chain
// tests it in more than one rule, except raw_prerouting's notrack rules
// (iif != @tunnels), which tunnel packets never reach (its first rule
// sends them away).
func TestTunnelLookupOncePerBaseChain(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		cfg := DefaultConfig()
		cfg.EgressMode = mode
		cfg.GeneveSources = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12")}
		cfg.NetworkPolicy = NetworkPolicy{DefaultAction: NetDeny, Rules: []NetRule{
			{Name: "ssh", Action: NetAllow, Protocol: ProtoTCP, Ports: []policy.PortRange{{Lo: 22, Hi: 22}}},
			{Name: "ep", Action: NetAllow, Endpoints: []string{"vpce-0123456789abcdef0"}},
		}}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		s := &Steerer{cfg: cfg}
		rs := s.buildRuleset("eth0")
		perChain := map[string]int{}
		for _, r := range rs.rules {
			if usesTunnels(r.exprs) {
				perChain[r.chain]++
			}
			if strings.HasSuffix(r.chain, "_tunnel") || strings.Contains(r.chain, "_guard") {
				if usesTunnels(r.exprs) {
					t.Errorf("%s: %s: %q tests @tunnels again", mode, r.chain, r.text)
				}
			}
		}
		for _, name := range rs.order {
			ch := rs.chains[name]
			if ch.Hooknum == nil {
				continue
			}
			want := 1
			if name == chainRawPre {
				want = 1 + len(cfg.GeneveSources)
			}
			if name == chainRouteOut || name == chainRawOut || name == chainNATPost {
				want = 0
			}
			if perChain[name] > want {
				t.Errorf("%s: base chain %s tests @tunnels in %d rules, want at most %d", mode, name, perChain[name], want)
			}
		}
		// The first rule of raw_prerouting takes tunnel packets away
		// before the notrack rules.
		for _, r := range rs.rules {
			if r.chain == chainRawPre {
				if !strings.HasPrefix(r.text, "iif @tunnels ") {
					t.Errorf("%s: first raw_prerouting rule %q, want iif @tunnels goto/accept", mode, r.text)
				}
				break
			}
		}
	}
}

func usesTunnels(es []expr.Any) bool {
	for _, e := range es {
		if l, ok := e.(*expr.Lookup); ok && l.SetName == setTunnels {
			return true
		}
	}
	return false
}

// TestCollisionMasksCtMark: both lookups of the tuple_collision rule see
// ct mark & routeMask, never the network policy rule id bits (ruleMask)
// that netpol keeps in the same conntrack mark.
func TestCollisionMasksCtMark(t *testing.T) {
	cfg := DefaultConfig()
	s := &Steerer{cfg: cfg}
	rs := s.buildRuleset("eth0")
	mask := native32(cfg.routeMask())
	n := 0
	for _, r := range rs.rules {
		if !strings.Contains(r.text, "counter name "+ctrCollision) {
			continue
		}
		n++
		// The register each lookup reads must have been masked
		// since the ct mark was loaded into it.
		masked := map[uint32]bool{}
		for _, e := range r.exprs {
			switch e := e.(type) {
			case *expr.Ct:
				if e.Key == expr.CtKeyMARK && !e.SourceRegister {
					masked[e.Register] = false
				}
			case *expr.Bitwise:
				if string(e.Mask) == string(mask) && e.SourceRegister == e.DestRegister {
					masked[e.DestRegister] = true
				}
			case *expr.Lookup:
				switch e.SetName {
				case setTunnelMarks:
					if !masked[1] {
						t.Errorf("%q: tunnel_marks lookup of an unmasked ct mark", r.text)
					}
				case setTunnelOwner:
					if !masked[9] {
						t.Errorf("%q: tunnel_owner lookup of an unmasked ct mark", r.text)
					}
				}
			}
		}
	}
	if n != 2 {
		t.Fatalf("%d tuple_collision rules, want 2 (http and tls ports)", n)
	}
}
