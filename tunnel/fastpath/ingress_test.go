//go:build linux

package fastpath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

// tc verdicts.
const (
	actOK       = 0
	actShot     = 2
	actRedirect = 7
)

const (
	testEP     = 0x0123456789abcdef
	testAttach = 0x1122334455667788
	gwiIndex   = 4000
	gwoIndex   = 4001
)

var (
	gwlb      = netip.MustParseAddr("198.18.0.1")
	appliance = netip.MustParseAddr("198.18.0.2")
	foreign   = netip.MustParseAddr("198.18.0.66")
	gwlb6     = netip.MustParseAddr("2001:db8:ff::1")
	app6      = netip.MustParseAddr("2001:db8:ff::2")
	foreign6  = netip.MustParseAddr("2001:db8:ff::66")
	client    = netip.MustParseAddr("198.19.0.10")
	server    = netip.MustParseAddr("203.0.113.10")
	client6   = netip.MustParseAddr("2001:db8::10")
	server6   = netip.MustParseAddr("2001:db8:1::10")
	macGWLB   = []byte{0x02, 0, 0, 0, 0, 1}
	macApp    = []byte{0x02, 0, 0, 0, 0, 2}
)

func csum(b []byte, s uint32) uint16 {
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// ip4 builds an IPv4 header + payload; frag is the flags/offset word.
func ip4(src, dst netip.Addr, proto uint8, frag uint16, payload []byte) []byte {
	p := make([]byte, 20, 20+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(p[4:], 0x1234)
	binary.BigEndian.PutUint16(p[6:], frag)
	p[8], p[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], csum(p, 0))
	return append(p, payload...)
}

func ip6(src, dst netip.Addr, next uint8, payload []byte) []byte {
	p := make([]byte, 40, 40+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(len(payload)))
	p[6], p[7] = next, 64
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	return append(p, payload...)
}

// l4 is a transport header with ports and some payload.
func l4(sp, dp uint16) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sp)
	binary.BigEndian.PutUint16(b[2:], dp)
	binary.BigEndian.PutUint16(b[4:], 20)
	return append(b, "payload!"...)
}

// frame wraps a UDP datagram in IPv4 and Ethernet, as GWLB's packets
// arrive on the underlay (UDP checksum 0).
func frame(src netip.Addr, sport, dport uint16, udpPayload []byte) []byte {
	u := make([]byte, 8, 8+len(udpPayload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(udpPayload)))
	u = append(u, udpPayload...)
	eth := append(append(append([]byte{}, macApp...), macGWLB...), 0x08, 0x00)
	return append(eth, ip4(src, appliance, 17, 0x4000, u)...)
}

// frame6 is frame with an IPv6 underlay: src to app6.
func frame6(src netip.Addr, sport, dport uint16, udpPayload []byte) []byte {
	u := make([]byte, 8, 8+len(udpPayload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(udpPayload)))
	u = append(u, udpPayload...)
	eth := append(append(append([]byte{}, macApp...), macGWLB...), 0x86, 0xdd)
	return append(eth, ip6(src, app6, 17, u)...)
}

func genevePkt(proto uint16, cookie uint32, inner []byte, extra ...geneve.Option) []byte {
	return append(geneve.AppendHeader(nil, 0, proto, testEP, testAttach, cookie, extra...), inner...)
}

// underlay is one outer family: how GWLB's frames are built, from which
// addresses.
type underlay struct {
	name                 string
	frame                func(src netip.Addr, sport, dport uint16, udpPayload []byte) []byte
	gwlb, local, foreign netip.Addr
}

var underlays = []underlay{
	{"ipv4 underlay", frame, gwlb, appliance, foreign},
	{"ipv6 underlay", frame6, gwlb6, app6, foreign6},
}

func withTunnel(t *testing.T) *Fastpath {
	f := needBPF(t)
	if err := f.AddTunnel(testEP, 3, gwiIndex, gwoIndex); err != nil {
		t.Fatal(err)
	}
	return f
}

func runIn(t *testing.T, f *Fastpath, pkt []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(pkt)+256)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out}
	ret, err := f.objs.GeneveIngress.Run(opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret, out[:len(opts.DataOut)]
}

func reasonDelta(t *testing.T, f *Fastpath, do func()) [NumReasons]uint64 {
	t.Helper()
	before := f.Counters()
	do()
	after := f.Counters()
	for i := range after {
		after[i] -= before[i]
	}
	return after
}

func TestIngressGood(t *testing.T) {
	f := withTunnel(t)
	for _, tc := range []struct {
		name  string
		proto uint16
		inner []byte
		extra []geneve.Option
	}{
		{"ipv4 udp", geneve.ProtoIPv4, ip4(client, server, 17, 0x4000, l4(40000, 53)), nil},
		{"ipv4 tcp", geneve.ProtoIPv4, ip4(client, server, 6, 0x4000, l4(40001, 443)), nil},
		{"ipv4 icmp echo", geneve.ProtoIPv4, ip4(client, server, 1, 0, []byte{8, 0, 0, 0, 0, 7, 0, 1}), nil},
		{"ipv6 tcp", geneve.ProtoIPv6, ip6(client6, server6, 6, l4(40002, 443)), nil},
		{"extra options", geneve.ProtoIPv4, ip4(client, server, 17, 0x4000, l4(40003, 53)),
			[]geneve.Option{{Class: 0x0109, Type: 5, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8}}, {Class: 0x0108, Type: 9, Data: []byte{9, 9, 9, 9}}}},
		{"ipv6 udp", geneve.ProtoIPv6, ip6(client6, server6, 17, l4(40004, 53)), nil},
		{"ipv6 icmp echo", geneve.ProtoIPv6, ip6(client6, server6, 58, []byte{128, 0, 0, 0, 0, 7, 0, 1}), nil},
	} {
		for _, u := range underlays {
			t.Run(u.name+"/"+tc.name, func(t *testing.T) {
				g := genevePkt(tc.proto, 0x5eed0001, tc.inner, tc.extra...)
				pkt := u.frame(u.gwlb, 10007, 6081, g)
				before := f.Tunnel(3)
				ret, out := runIn(t, f, pkt)
				if ret != actRedirect {
					t.Fatalf("verdict %d, want redirect; counters %v", ret, f.Counters())
				}
				// The outer IPv4/UDP/GENEVE is gone: Ethernet + inner.
				if !bytes.Equal(out[14:], tc.inner) {
					t.Fatalf("decapsulated packet:\n got %x\nwant %x", out[14:], tc.inner)
				}
				var k flow.Key
				if _, r := flow.ParsePacket(tc.inner, &k); r != flow.OK {
					t.Fatal(r)
				}
				var e Entry
				if !f.Lookup(testEP, k, &e) {
					t.Fatalf("flow not learned (%d flows)", f.Flows())
				}
				hdr := g[:len(g)-len(tc.inner)]
				if !bytes.Equal(e.Header, hdr) {
					t.Fatalf("stored header:\n got %x\nwant %x", e.Header, hdr)
				}
				if e.GWLB != netip.AddrPortFrom(u.gwlb, 10007) || e.Local != u.local {
					t.Fatalf("outer addresses: %s from %s", e.GWLB, e.Local)
				}
				after := f.Tunnel(3)
				if after.InPackets != before.InPackets+1 || after.InBytes != before.InBytes+uint64(len(tc.inner)) || after.Last.IsZero() {
					t.Fatalf("tunnel counters %+v -> %+v", before, after)
				}
			})
		}
	}
}

func TestIngressNewestCookieWins(t *testing.T) {
	f := withTunnel(t)
	inner := ip4(client, server, 6, 0x4000, l4(41000, 443))
	for _, c := range []uint32{1, 2, 3} {
		if ret, _ := runIn(t, f, frame(gwlb, 10000+uint16(c), 6081, genevePkt(geneve.ProtoIPv4, c, inner))); ret != actRedirect {
			t.Fatalf("verdict %d", ret)
		}
	}
	var k flow.Key
	flow.ParsePacket(inner, &k)
	// The reply direction finds the same (symmetric) flow.
	reply := ip4(server, client, 6, 0x4000, l4(443, 41000))
	var rk flow.Key
	flow.ParsePacket(reply, &rk)
	var e Entry
	if !f.Lookup(testEP, rk, &e) {
		t.Fatal("reply direction: no flow")
	}
	var h geneve.Header
	if _, r := geneve.Parse(append(e.Header, inner...), &h); r != geneve.OK || h.Cookie != 3 || e.GWLB.Port() != 10003 {
		t.Fatalf("cookie %d port %d (%v), want the newest 3/10003", h.Cookie, e.GWLB.Port(), r)
	}
	if f.Lookup(testEP+1, rk, &e) {
		t.Fatal("flow found under another endpoint")
	}
}

func TestIngressMalformed(t *testing.T) {
	f := withTunnel(t)
	inner := ip4(client, server, 17, 0x4000, l4(40000, 53))
	good := genevePkt(geneve.ProtoIPv4, 7, inner)
	mut := func(m func(g []byte) []byte) []byte { return m(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		g    []byte
		want int
	}{
		{"bad version", mut(func(g []byte) []byte { g[0] |= 0x40; return g }), int(geneve.BadVersion)},
		{"control", mut(func(g []byte) []byte { g[1] |= 0x80; return g }), int(geneve.Control)},
		{"bad protocol", mut(func(g []byte) []byte { g[2], g[3] = 0x88, 0x47; return g }), int(geneve.BadProtocol)},
		{"protocol contradicts inner", mut(func(g []byte) []byte { g[2], g[3] = 0x86, 0xdd; return g }), int(geneve.BadProtocol)},
		{"options overrun header", mut(func(g []byte) []byte { g[8+3] = 0x1f; return g }), int(geneve.BadOptionLength)},
		{"endpoint option wrong size", mut(func(g []byte) []byte {
			// Endpoint option claims 1 word: the rest no longer parses as
			// options of the right size.
			g[8+3] = 1
			return g
		}), int(geneve.BadOptionLength)},
		{"header longer than packet", mut(func(g []byte) []byte { g[0] = 0x3f; return g[:60] }), int(geneve.Truncated)},
		{"no inner packet", good[:40], int(geneve.Truncated)},
		{"critical unknown option", genevePkt(geneve.ProtoIPv4, 7, inner, geneve.Option{Class: 0x0109, Type: 0x85, Data: []byte{1, 2, 3, 4}}), int(geneve.CriticalOption)},
		{"no endpoint", mut(func(g []byte) []byte { g[8+2] = 0x41; return g }), int(geneve.NoEndpoint)},
		{"no attachment", mut(func(g []byte) []byte { g[20+2] = 0x42; return g }), int(geneve.NoAttachment)},
		{"no cookie", mut(func(g []byte) []byte { g[32+2] = 0x43; return g }), int(geneve.NoCookie)},
	} {
		for _, u := range underlays {
			t.Run(u.name+"/"+tc.name, func(t *testing.T) {
				// The userspace parser is the reference: it must agree.
				var h geneve.Header
				if _, r := geneve.Parse(tc.g, &h); int(r) != tc.want {
					t.Fatalf("geneve.Parse says %v, test expects %d", r, tc.want)
				}
				var ret uint32
				d := reasonDelta(t, f, func() { ret, _ = runIn(t, f, u.frame(u.gwlb, 10000, 6081, tc.g)) })
				if ret != actShot || d[tc.want] != 1 {
					t.Fatalf("verdict %d, reason counters %v, want drop by %d", ret, d, tc.want)
				}
			})
		}
	}
}

func TestIngressPassesUp(t *testing.T) {
	f := withTunnel(t)
	inner := ip4(client, server, 17, 0x4000, l4(40000, 53))
	good := genevePkt(geneve.ProtoIPv4, 7, inner)
	otherEP := append(geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, testEP+1, testAttach, 7), inner...)
	icmpErr := ip4(server, client, 1, 0, append([]byte{3, 4, 0, 0, 0, 0, 0x05, 0xdc}, ip4(client, server, 17, 0x4000, l4(40000, 53))[:28]...))
	fragFirst := ip4(client, server, 17, 0x2000, l4(40000, 53))
	fragLater := ip4(client, server, 17, 0x0010, []byte("later fragment bytes"))
	ext6 := ip6(client6, server6, 60, append([]byte{6, 0, 0, 0, 0, 0, 0, 0}, l4(1, 2)...))
	outerFrag := frame(gwlb, 10000, 6081, good)
	outerFrag[14+6] = 0x20 // MF
	// IPv6 underlay: a destination-options header in front of UDP, a
	// payload length that does not match the frame, a protocol that is not
	// UDP.
	udp6 := frame6(gwlb6, 10000, 6081, good)[14+40:]
	ext6outer := append(append(append([]byte{}, macApp...), macGWLB...), 0x86, 0xdd)
	ext6outer = append(ext6outer, ip6(gwlb6, app6, 60, append([]byte{17, 0, 0, 0, 0, 0, 0, 0}, udp6...))...)
	padded6 := append(frame6(gwlb6, 10000, 6081, good), 0, 0, 0, 0)
	notUDP6 := append(append(append([]byte{}, macApp...), macGWLB...), 0x86, 0xdd)
	notUDP6 = append(notUDP6, ip6(gwlb6, app6, 6, udp6)...)
	unknown6 := frame6(gwlb6, 10000, 6081, otherEP)
	mld := append(append(append([]byte{}, macApp...), macGWLB...), 0x86, 0xdd)
	mld = append(mld, ip6(gwlb6, app6, 0, append([]byte{58, 0, 5, 2, 0, 0, 1, 0}, 143, 0, 0, 0, 0, 0, 0, 0))...)
	frag6 := append(append(append([]byte{}, macApp...), macGWLB...), 0x86, 0xdd)
	frag6 = append(frag6, ip6(gwlb6, app6, 44, append([]byte{17, 0, 0, 1, 0, 0, 0, 7}, udp6...))...)
	for _, tc := range []struct {
		name string
		pkt  []byte
		want int // reason counted, -1 none
	}{
		{"unknown endpoint", frame(gwlb, 10000, 6081, otherEP), PassUnknownEndpoint},
		{"icmp error", frame(gwlb, 10000, 6081, genevePkt(geneve.ProtoIPv4, 7, icmpErr)), PassInner},
		{"first fragment", frame(gwlb, 10000, 6081, genevePkt(geneve.ProtoIPv4, 7, fragFirst)), PassInner},
		{"later fragment", frame(gwlb, 10000, 6081, genevePkt(geneve.ProtoIPv4, 7, fragLater)), PassInner},
		{"ipv6 extension header", frame(gwlb, 10000, 6081, genevePkt(geneve.ProtoIPv6, 7, ext6)), PassInner},
		{"outer fragment", outerFrag, PassOuter},
		{"ipv6 underlay extension header", ext6outer, PassOuter},
		{"ipv6 underlay padded", padded6, PassOuter},
		{"ipv6 underlay hop-by-hop, not geneve", mld, -1},
		{"ipv6 underlay first fragment", frag6, PassOuter},
		{"ipv6 underlay not udp", notUDP6, -1},
		{"ipv6 underlay unknown endpoint", unknown6, PassUnknownEndpoint},
		{"ipv6 underlay icmp error", frame6(gwlb6, 10000, 6081, genevePkt(geneve.ProtoIPv4, 7, icmpErr)), PassInner},
		{"other udp port", frame(gwlb, 10000, 6082, good), -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ret uint32
			var out []byte
			d := reasonDelta(t, f, func() { ret, out = runIn(t, f, tc.pkt) })
			if ret != actOK {
				t.Fatalf("verdict %d, want pass (0); counters %v", ret, d)
			}
			if !bytes.Equal(out, tc.pkt) {
				t.Fatal("a passed packet was modified")
			}
			for i, v := range d {
				want := uint64(0)
				if i == tc.want {
					want = 1
				}
				if v != want {
					t.Fatalf("reason counters %v, want only %d", d, tc.want)
				}
			}
		})
	}
}

func TestIngressForeignSource(t *testing.T) {
	f := withTunnel(t)
	g := genevePkt(geneve.ProtoIPv4, 7, ip4(client, server, 17, 0x4000, l4(40000, 53)))
	for _, u := range underlays {
		var ret uint32
		d := reasonDelta(t, f, func() { ret, _ = runIn(t, f, u.frame(u.foreign, 10000, 6081, g)) })
		if ret != actShot || d[ReasonForeignSource] != 1 {
			t.Fatalf("%s: verdict %d counters %v", u.name, ret, d)
		}
		if f.Flows() != 0 {
			t.Fatalf("%s: a foreign packet taught a flow", u.name)
		}
	}
}

func TestRemoveTunnelForgetsFlows(t *testing.T) {
	f := withTunnel(t)
	inner := ip4(client, server, 17, 0x4000, l4(40000, 53))
	if ret, _ := runIn(t, f, frame(gwlb, 10000, 6081, genevePkt(geneve.ProtoIPv4, 7, inner))); ret != actRedirect {
		t.Fatal(ret)
	}
	if f.Flows() != 1 {
		t.Fatalf("%d flows", f.Flows())
	}
	if err := f.RemoveTunnel(testEP, gwiIndex, gwoIndex); err != nil {
		t.Fatal(err)
	}
	if f.Flows() != 0 {
		t.Fatalf("%d flows after removal", f.Flows())
	}
	if ret, _ := runIn(t, f, frame(gwlb, 10000, 6081, genevePkt(geneve.ProtoIPv4, 7, inner))); ret != actOK {
		t.Fatalf("removed endpoint: verdict %d, want pass", ret)
	}
}
