package steer

import (
	"fmt"
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
