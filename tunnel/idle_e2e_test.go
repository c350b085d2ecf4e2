//go:build linux

package tunnel_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

// chatterDst is routed out gwo- in the appliance namespace by
// TestIdleTimeoutIgnoresNoFlowChatter: packets to it reach the daemon's
// return path and find no flow, like the kernel's own IPv6 chatter.
var chatterDst = netip.MustParseAddr("203.0.113.250")

// TestIdleTimeoutIgnoresNoFlowChatter shows that packets on gwo- that
// find no flow (the kernel's router solicitations and MLD reports, or any
// unroutable packet) do not keep an idle tunnel alive: with a steady
// stream of them, the tunnel is still closed soon after idle_timeout.
func TestIdleTimeoutIgnoresNoFlowChatter(t *testing.T) {
	eachDatapath(t, testIdleTimeoutIgnoresNoFlowChatter)
}

func testIdleTimeoutIgnoresNoFlowChatter(t *testing.T, dp string) {
	const idle = 3 * time.Second
	h := newHarness(t, dp, []uint64{ep0}, func(c *tunnel.Config) { c.IdleTimeout = idle })
	e0 := h.topo.Endpoints[0]
	if err := ping(t, e0, 1, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	lastFlow := time.Now() // no flow traffic after this
	_, out0 := geneve.InterfaceNames(ep0)
	nl := h.topo.Appliance.Netlink()
	link, err := nl.LinkByName(out0)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: chatterDst.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatalf("route %s dev %s: %v", chatterDst, out0, err)
	}
	var c *net.UDPConn
	in(t, h.topo.Appliance, func() (err error) {
		c, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: chatterDst.AsSlice(), Port: 9})
		return err
	})
	defer c.Close()
	noFlow := h.d.Stats().Drops["no_flow"]

	// Chatter every 100 ms (far more often than the kernel's) until the
	// tunnel is destroyed. The housekeeper checks idleness every second,
	// so it must go within idle_timeout + 1 s; 4 s more is slack for a
	// loaded machine. Before the fix the chatter kept it alive for good.
	bound := idle + 5*time.Second
	for h.d.Stats().TunnelsDestroyed == 0 {
		if time.Since(lastFlow) > bound {
			t.Fatalf("tunnel with only no-flow chatter still up %s after its last flow packet (idle_timeout %s); stats %+v",
				time.Since(lastFlow).Round(time.Millisecond), idle, h.d.Stats())
		}
		_, _ = c.Write([]byte("chatter")) // fails once gwo- is gone
		time.Sleep(100 * time.Millisecond)
	}
	gone := time.Since(lastFlow)
	if n := h.d.Stats().Drops["no_flow"] - noFlow; n < 10 {
		t.Fatalf("only %d no_flow drops during the chatter: it did not reach the daemon", n)
	}
	if gone < idle-500*time.Millisecond {
		t.Fatalf("tunnel destroyed %s after its last flow packet, before idle_timeout %s", gone, idle)
	}
	t.Logf("%s datapath: destroyed %s after the last flow packet (idle_timeout %s)", dp, gone.Round(time.Millisecond), idle)
}
