//go:build linux

package steer

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// dropDefaultRoutes removes the appliance's default routes: a one-arm
// appliance (egress_mode tunnel) needs none, and the gwlbsim appliance
// namespace has none.
func dropDefaultRoutes(t *testing.T, n *nsh) {
	t.Helper()
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		if err := n.nl.RouteDel(&netlink.Route{Family: fam, Dst: anyNet(fam)}); err != nil {
			t.Fatalf("%s: delete default route: %v", n.name, err)
		}
	}
}

// TestTunnelModeWithoutDefaultRoute: in egress_mode tunnel nothing leaves
// by the main table, so the appliance may have no route to the clients at
// all. The proxy's SYN-ACK (sent by the kernel during the handshake, before
// the output route chain re-marks it into the tunnel) must still find an
// initial route, or it is dropped and the connection stays in SYN_SENT.
// Intercepted (answered locally and proxied upstream through the tunnel)
// and forwarded connections, IPv4 and IPv6, all complete.
func TestTunnelModeWithoutDefaultRoute(t *testing.T) {
	tp := newTopo(t, tunnelConfig(), "a")
	dropDefaultRoutes(t, tp.app)
	tp.startProxy(true)
	tn := tp.tun["a"]
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(serverAddr, 443),
		netip.AddrPortFrom(serverAddr, 80),
		netip.AddrPortFrom(serverAddr6, 443),
	} {
		line, local, err := request(t, tn.cli, dst)
		if err != nil {
			t.Fatalf("%s: %v (steer stats %+v)", dst, err, tp.s.Stats())
		}
		want := fmt.Sprintf("proxied ep=%x via tunnel %s", tn.endpointID, local)
		if !strings.HasPrefix(line, want) {
			t.Fatalf("%s: got %q, want prefix %q", dst, line, want)
		}
	}
	line, local, err := request(t, tn.cli, netip.AddrPortFrom(serverAddr, 22))
	if err != nil {
		t.Fatalf("forwarded port 22: %v", err)
	}
	if want := "tunnel " + local.String(); line != want {
		t.Fatalf("port 22: got %q, want %q", line, want)
	}
}
