//go:build linux

package steer

import (
	"context"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// marked counts the appliance's conntrack entries (IPv4 and IPv6) whose
// mark is exactly mark.
func marked(t *testing.T, tp *topo, mark uint32) int {
	t.Helper()
	n := 0
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := tp.app.nl.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			t.Fatalf("conntrack list: %v", err)
		}
		for _, f := range flows {
			if f.Mark == mark {
				n++
			}
		}
	}
	return n
}

// TestPairDownForgetsFlows: the flows of a tunnel that goes down leave
// conntrack with it (its mark is the next tunnel's), the other tunnel's
// stay.
func TestPairDownForgetsFlows(t *testing.T) {
	cfg := natConfig()
	tp := newTopo(t, cfg, "a", "b")
	tp.startProxy(false)
	for _, name := range []string{"a", "b"} {
		for _, dst := range []netip.AddrPort{netip.AddrPortFrom(serverAddr, 80), netip.AddrPortFrom(serverAddr6, 443)} {
			if _, _, err := request(t, tp.tun[name].cli, dst); err != nil {
				t.Fatalf("%s %s: %v", name, dst, err)
			}
		}
	}
	markA, markB := cfg.tunnelMark(tp.tun["a"].slot), cfg.tunnelMark(tp.tun["b"].slot)
	a, b := marked(t, tp, markA), marked(t, tp, markB)
	if a == 0 || b == 0 {
		t.Fatalf("before PairDown: %d entries with tunnel a's mark %#x, %d with b's %#x; want some of each", a, markA, b, markB)
	}
	if err := tp.s.PairDown(context.Background(), tp.tun["b"].pair); err != nil {
		t.Fatal(err)
	}
	if n := marked(t, tp, markB); n != 0 {
		t.Fatalf("after PairDown of b: %d entries still carry its mark %#x", n, markB)
	}
	if n := marked(t, tp, markA); n != a {
		t.Fatalf("after PairDown of b: tunnel a has %d entries with mark %#x, had %d", n, markA, a)
	}
	// Nothing left to flush is not an error.
	if err := tp.s.ct.Load().flushMark(markB, 0xffffffff); err != nil {
		t.Fatalf("second flush: %v", err)
	}
}
