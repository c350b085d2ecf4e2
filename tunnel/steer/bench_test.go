//go:build linux

package steer

import (
	"net"
	"os"
	"testing"
)

// BenchmarkEndpointOf measures the per-connection attribution cost: one
// conntrack GET over netlink plus the slot lookup.
func BenchmarkEndpointOf(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	n := newNSB(b, "bench")
	cfg := DefaultConfig()
	cfg.EgressInterface = "lo"
	s, err := newSteerer(cfg, nil, nil, int(n.h))
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(b.Context()); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var ln net.Listener
	if err := n.do(func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:0"); return }); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var c net.Conn
	if err := n.do(func() (err error) { c, err = net.Dial("tcp4", ln.Addr().String()); return }); err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// c's tuple is tracked (our table enables conntrack in the namespace)
	// but did not come through a tunnel: EndpointOf does the full GET and
	// answers false.
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, ok := s.EndpointOf(c); ok {
			b.Fatal("loopback connection attributed to a tunnel")
		}
	}
}
