//go:build linux

package steer

import (
	"net/netip"
	"testing"
	"time"
)

// TestWhyTProxyNeedsLocalRoute reproduces the classic "TPROXY rule has no
// effect": with the TPROXY rule matching (the intercepted counter moves)
// but without the fwmark -> local-table rule, the routing decision after
// prerouting still sees a non-local destination. The packet carries the
// socket TPROXY assigned, and ip_forward drops forwarded packets that have a
// socket: the SYN vanishes, the client times out, nothing is logged.
func TestWhyTProxyNeedsLocalRoute(t *testing.T) {
	cfg := natConfig()
	cfg.SysctlInterval = time.Hour // no self-repair of the removed rules during the experiment
	tp := newTopo(t, cfg, "a")
	tp.startProxy(false)
	tn := tp.tun["a"]
	rules, _ := tp.s.baseRoutes()
	for _, r := range rules {
		if err := tp.app.nl.RuleDel(r); err != nil {
			t.Fatal(err)
		}
	}
	before := tp.s.Stats().Counters[ctrIntercepted].Packets
	c, err := dial(t, tn.cli, netip.AddrPortFrom(serverAddr, 80), 3*time.Second)
	if err == nil {
		c.Close()
		t.Fatal("connection succeeded without the local-delivery rule")
	}
	after := tp.s.Stats().Counters[ctrIntercepted].Packets
	t.Logf("dial: %v; intercepted counter %d -> %d", err, before, after)
	if after == before {
		t.Fatal("TPROXY rule did not match: the experiment shows nothing")
	}
	// Put it back: interception works again.
	if err := tp.s.addRouting(rules, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := request(t, tn.cli, netip.AddrPortFrom(serverAddr, 80)); err != nil {
		t.Fatalf("with the rule back: %v", err)
	}
}
