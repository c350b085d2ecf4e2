//go:build linux

package steer

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestRuleIDs: ids are 1.. in rule order at start; an unchanged rule
// keeps its id across reloads, a changed or new one gets a fresh id, and
// when none is fresh the one released longest ago; the removed rules'
// ids still name them (flows they allowed end after the reload); the mark
// layout leaves the slot bits alone.
func TestRuleIDs(t *testing.T) {
	c := DefaultConfig()
	c.MaxTunnels = 4095 // 12 slot bits: ids 1..15
	if c.maxRuleID() != 15 || c.slotMask() != 0xfff || c.ruleMask() != 0xf000 || c.routeMask() != 0xffff0fff {
		t.Fatalf("layout: max id %d slot %#x rule %#x route %#x", c.maxRuleID(), c.slotMask(), c.ruleMask(), c.routeMask())
	}
	rule := func(name string, port uint16) NetRule {
		return NetRule{Name: name, Action: NetAllow, Protocol: ProtoTCP, Ports: []policy.PortRange{{Lo: port, Hi: port}}}
	}
	s := &Steerer{cfg: c}
	ids := &s.ids
	ids.max = c.maxRuleID()
	apply := func(np NetworkPolicy) assignment {
		t.Helper()
		a, ok := ids.plan(&np)
		if !ok {
			t.Fatal("no ids")
		}
		ids.commit(&np, a, np.Version())
		return a
	}
	p1 := NetworkPolicy{DefaultAction: NetDeny, Rules: []NetRule{rule("a", 1), rule("b", 2)}}
	a1 := apply(p1)
	if a1.rules[0] != 1 || a1.rules[1] != 2 || a1.def != 3 {
		t.Fatalf("start ids %+v", a1)
	}
	// b changes, c is new, a unchanged.
	p2 := NetworkPolicy{DefaultAction: NetDeny, Rules: []NetRule{rule("c", 3), rule("a", 1), rule("b", 22)}}
	a2 := apply(p2)
	if a2.rules[1] != 1 || a2.def != 3 || a2.rules[0] == 2 || a2.rules[2] == 2 || a2.rules[0] == a2.rules[2] {
		t.Fatalf("reload ids %+v (a must keep 1, default 3, nobody may take b's old 2)", a2)
	}
	if n, v, ok := ids.lookup(2); !ok || n != "b" || v != p1.Version() {
		t.Fatalf("old b's id names %q %s %v, want b %s", n, v, ok, p1.Version())
	}
	if n, v, _ := ids.lookup(1); n != "a" || v != p2.Version() {
		t.Fatalf("a's id names %q %s, want the new version", n, v)
	}
	if ids.isLive(2) || !ids.isLive(1) {
		t.Fatal("liveness")
	}
	// Exhaust fresh ids: every reload adds a new definition.
	for i := 0; i < 20; i++ {
		apply(NetworkPolicy{DefaultAction: NetDeny, Rules: []NetRule{rule("a", 1), rule("x", uint16(100+i))}})
	}
	if n, _, _ := ids.lookup(1); n != "a" {
		t.Fatalf("a lost its id: %q", n)
	}

	// RuleOfMark decodes the layout.
	mark := c.tunnelMark(7) | c.ruleMark(1)
	if r, _, ok := s.RuleOfMark(mark); !ok || r != "a" {
		t.Fatalf("RuleOfMark(%#x) = %q %v", mark, r, ok)
	}
	s.epBySlot.Store(uint16(7), uint64(0x77))
	if ep, ok := s.EndpointOfMark(mark); !ok || ep != 0x77 {
		t.Fatalf("EndpointOfMark(%#x) = %x %v: the rule bits must not change the slot", mark, ep, ok)
	}
	if _, _, ok := s.RuleOfMark(0x12340000 | c.ruleMark(1)); ok {
		t.Fatal("a mark that is not ours named a rule")
	}

	// Too many rules for the ids the tunnels leave: refused, named.
	c.NetworkPolicy = NetworkPolicy{DefaultAction: NetDeny}
	for i := 0; i < 15; i++ {
		c.NetworkPolicy.Rules = append(c.NetworkPolicy.Rules, NetRule{Name: "r" + string(rune('a'+i)), Action: NetDeny,
			Destinations: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "network_policy.rules: 15 rules") || !strings.Contains(err.Error(), "tunnel.max_tunnels 4095") {
		t.Fatalf("15 rules with 15 ids: %v", err)
	}
	c.NetworkPolicy.Rules = c.NetworkPolicy.Rules[:14]
	if err := c.Validate(); err != nil {
		t.Fatalf("14 rules with 15 ids: %v", err)
	}
}
