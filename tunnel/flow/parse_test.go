package flow

import (
	"net/netip"
	"testing"
)

func TestParsePacket(t *testing.T) {
	tcpKey := NewKey(ProtoTCP, ap("198.18.0.1:40000"), ap("203.0.113.5:443"))
	udp6Key := NewKey(ProtoUDP, ap("[2001:db8::1]:5353"), ap("[2001:db8::2]:53"))
	tcp6Key := NewKey(ProtoTCP, ap("[2001:db8::1]:40000"), ap("[2001:db8::2]:443"))
	a4, b4 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("203.0.113.5")
	a6, b6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")

	// An original TCP packet as an ICMP error would quote it: the full
	// IPv4 header but only 8 bytes of TCP, while total length says 1500.
	quotedTCP := ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(40000, 443, 4), v4opts{totalAdj: 1500 - 28})
	quotedTCPPortsOnly := ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(40000, 443, 0), v4opts{totalAdj: 1000})
	quotedTCP6 := ipv6(ProtoTCP, "2001:db8::1", "2001:db8::2", nil, ports(40000, 443, 4))
	quotedTCP6[5] += 200 // payload length larger than what is quoted

	tests := []struct {
		name string
		pkt  []byte
		key  Key
		info Info
		want Reason
	}{
		{name: "tcp", pkt: ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(40000, 443, 16), v4opts{}),
			key: tcpKey, info: Info{Proto: ProtoTCP, TCP: true}},
		{name: "tcp reply is same key", pkt: ipv4(ProtoTCP, "203.0.113.5", "198.18.0.1", ports(443, 40000, 16), v4opts{}),
			key: tcpKey, info: Info{Proto: ProtoTCP, TCP: true}},
		{name: "ipv4 options honour IHL", pkt: ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(40000, 443, 16), v4opts{ihl: 60}),
			key: tcpKey, info: Info{Proto: ProtoTCP, TCP: true}},
		{name: "ipv4 trailing padding", pkt: append(ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(40000, 443, 0), v4opts{}), 0, 0, 0, 0, 0, 0),
			key: tcpKey, info: Info{Proto: ProtoTCP, TCP: true}},
		{name: "udp6", pkt: ipv6(ProtoUDP, "2001:db8::2", "2001:db8::1", nil, ports(53, 5353, 4)),
			key: udp6Key, info: Info{Proto: ProtoUDP, IPv6: true}},
		{name: "ipv6 hop-by-hop routing destopts AH", pkt: ipv6(ProtoTCP, "2001:db8::1", "2001:db8::2",
			[]ext{{typ: 0, len: 8}, {typ: 43, len: 24}, {typ: 60, len: 16}, {typ: 51, len: 24}}, ports(40000, 443, 16)),
			key: tcp6Key, info: Info{Proto: ProtoTCP, TCP: true, IPv6: true}},
		{name: "icmp echo uses id", pkt: ipv4(ProtoICMP, "198.18.0.1", "203.0.113.5", echo(8, 77), v4opts{}),
			key: NewKey(ProtoICMP, netip.AddrPortFrom(a4, 77), netip.AddrPortFrom(b4, 77)), info: Info{Proto: ProtoICMP}},
		{name: "icmp echo reply same key", pkt: ipv4(ProtoICMP, "203.0.113.5", "198.18.0.1", echo(0, 77), v4opts{}),
			key: NewKey(ProtoICMP, netip.AddrPortFrom(a4, 77), netip.AddrPortFrom(b4, 77)), info: Info{Proto: ProtoICMP}},
		{name: "icmpv6 echo", pkt: ipv6(ProtoICMPv6, "2001:db8::1", "2001:db8::2", nil, echo(128, 9)),
			key: NewKey(ProtoICMPv6, netip.AddrPortFrom(a6, 9), netip.AddrPortFrom(b6, 9)), info: Info{Proto: ProtoICMPv6, IPv6: true}},
		{name: "icmpv6 neighbour solicitation: addresses only", pkt: ipv6(ProtoICMPv6, "2001:db8::1", "2001:db8::2", nil, icmp(135, 0, make([]byte, 16))),
			key: NewKey(ProtoICMPv6, netip.AddrPortFrom(a6, 0), netip.AddrPortFrom(b6, 0)), info: Info{Proto: ProtoICMPv6, IPv6: true}},
		{name: "gre: addresses only", pkt: ipv4(47, "198.18.0.1", "203.0.113.5", make([]byte, 8), v4opts{}),
			key: NewKey(47, netip.AddrPortFrom(a4, 0), netip.AddrPortFrom(b4, 0)), info: Info{Proto: 47}},
		{name: "frag needed from a router maps to the tcp flow",
			pkt: ipv4(ProtoICMP, "198.18.9.9", "198.18.0.1", icmp(3, 4, quotedTCP), v4opts{}),
			key: tcpKey, info: Info{Proto: ProtoTCP, TCP: true, ICMPError: true}},
		{name: "port unreachable quoting only ports",
			pkt: ipv4(ProtoICMP, "203.0.113.5", "198.18.0.1", icmp(3, 3, quotedTCPPortsOnly), v4opts{}),
			key: tcpKey, info: Info{Proto: ProtoTCP, TCP: true, ICMPError: true}},
		{name: "time exceeded", pkt: ipv4(ProtoICMP, "198.18.9.9", "198.18.0.1", icmp(11, 0, quotedTCP), v4opts{}),
			key: tcpKey, info: Info{Proto: ProtoTCP, TCP: true, ICMPError: true}},
		{name: "icmpv6 packet too big", pkt: ipv6(ProtoICMPv6, "2001:db8::99", "2001:db8::1", nil, icmp(2, 0, quotedTCP6)),
			key: tcp6Key, info: Info{Proto: ProtoTCP, TCP: true, IPv6: true, ICMPError: true}},
		{name: "icmp error quoting too little", pkt: ipv4(ProtoICMP, "198.18.9.9", "198.18.0.1", icmp(3, 4, quotedTCP[:22]), v4opts{}),
			want: BadICMPError},
		{name: "icmp error quoting an icmp error", pkt: ipv4(ProtoICMP, "198.18.9.9", "198.18.0.1",
			icmp(3, 4, ipv4(ProtoICMP, "198.18.0.1", "198.18.9.8", icmp(3, 1, quotedTCP), v4opts{})), v4opts{}), want: BadICMPError},
		{name: "icmpv6 error quoting ipv4", pkt: ipv6(ProtoICMPv6, "2001:db8::99", "2001:db8::1", nil, icmp(1, 0, quotedTCP)),
			want: BadICMPError},
		{name: "empty", pkt: nil, want: Truncated},
		{name: "version 5", pkt: []byte{0x50, 0, 0}, want: BadVersion},
		{name: "ipv4 short", pkt: append([]byte{0x45}, make([]byte, 18)...), want: Truncated},
		{name: "ipv6 short", pkt: append([]byte{0x60}, make([]byte, 38)...), want: Truncated},
		{name: "ipv4 IHL 4", pkt: func() []byte {
			b := ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(1, 2, 16), v4opts{})
			b[0] = 0x44
			return b
		}(), want: BadHeader},
		{name: "ipv4 IHL beyond packet", pkt: func() []byte {
			b := ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", nil, v4opts{})
			b[0] = 0x4f
			return b
		}(), want: Truncated},
		{name: "ipv4 total length beyond packet", pkt: ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(1, 2, 0), v4opts{totalAdj: 10}), want: Truncated},
		{name: "ipv4 total length below header", pkt: ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(1, 2, 0), v4opts{totalAdj: -10}), want: BadHeader},
		{name: "tcp without ports", pkt: ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", []byte{1, 2}, v4opts{}), want: Truncated},
		{name: "ipv6 ext header overrun", pkt: func() []byte {
			b := ipv6(ProtoTCP, "2001:db8::1", "2001:db8::2", []ext{{typ: 60, len: 8}}, ports(1, 2, 0))
			b[41] = 200
			return b
		}(), want: BadHeader},
		{name: "ipv6 payload beyond packet", pkt: func() []byte {
			b := ipv6(ProtoUDP, "2001:db8::1", "2001:db8::2", nil, ports(1, 2, 0))
			b[5] += 8
			return b
		}(), want: Truncated},
		{name: "ipv6 too many ext headers", pkt: ipv6(ProtoUDP, "2001:db8::1", "2001:db8::2",
			func() []ext {
				var e []ext
				for range 20 {
					e = append(e, ext{typ: 60, len: 8})
				}
				return e
			}(), ports(1, 2, 0)), want: TooManyHeaders},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var k Key
			info, r := ParsePacket(tc.pkt, &k)
			if r != tc.want {
				t.Fatalf("reason %v, want %v", r, tc.want)
			}
			if r != OK {
				return
			}
			if k != tc.key {
				t.Errorf("key %v, want %v", k, tc.key)
			}
			if info != tc.info {
				t.Errorf("info %+v, want %+v", info, tc.info)
			}
		})
	}
}

func TestParseFragments(t *testing.T) {
	tcpKey := NewKey(ProtoUDP, ap("198.18.0.1:4000"), ap("203.0.113.5:53"))
	a4, b4 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("203.0.113.5")
	frag4 := NewFragmentKey(ProtoUDP, b4, a4, 0x1234)

	var k Key
	info, r := ParsePacket(ipv4(ProtoUDP, "198.18.0.1", "203.0.113.5", ports(4000, 53, 100), v4opts{id: 0x1234, mf: true}), &k)
	if r != OK || k != tcpKey || !info.Fragment || !info.FirstFragment || info.FragKey != frag4 {
		t.Fatalf("first v4 fragment: %v %v %+v", r, k, info)
	}
	info, r = ParsePacket(ipv4(ProtoUDP, "198.18.0.1", "203.0.113.5", make([]byte, 100), v4opts{id: 0x1234, off: 13, mf: true}), &k)
	if r != OK || k != frag4 || !k.IsFragment() || !info.Fragment || info.FirstFragment {
		t.Fatalf("middle v4 fragment: %v %v %+v", r, k, info)
	}
	info, r = ParsePacket(ipv4(ProtoUDP, "198.18.0.1", "203.0.113.5", make([]byte, 3), v4opts{id: 0x1234, off: 26}), &k)
	if r != OK || k != frag4 || !info.Fragment {
		t.Fatalf("last v4 fragment: %v %v %+v", r, k, info)
	}
	if k.FragmentID() != 0x1234 || k.Proto() != ProtoUDP {
		t.Fatalf("fragment key fields %v", k)
	}

	a6, b6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	frag6 := NewFragmentKey(ProtoUDP, a6, b6, 0xdeadbeef)
	udp6 := NewKey(ProtoUDP, ap("[2001:db8::1]:4000"), ap("[2001:db8::2]:53"))
	info, r = ParsePacket(ipv6(ProtoUDP, "2001:db8::1", "2001:db8::2", []ext{{typ: 0, len: 8}, {typ: 44, len: 8, mf: true, id: 0xdeadbeef}}, ports(4000, 53, 100)), &k)
	if r != OK || k != udp6 || !info.FirstFragment || info.FragKey != frag6 {
		t.Fatalf("first v6 fragment: %v %v %+v", r, k, info)
	}
	info, r = ParsePacket(ipv6(ProtoUDP, "2001:db8::1", "2001:db8::2", []ext{{typ: 44, len: 8, off: 14, id: 0xdeadbeef}}, make([]byte, 30)), &k)
	if r != OK || k != frag6 || !info.Fragment || info.FirstFragment || info.Proto != ProtoUDP {
		t.Fatalf("last v6 fragment: %v %v %+v", r, k, info)
	}
	// An atomic fragment (offset 0, M clear) is a whole datagram.
	info, r = ParsePacket(ipv6(ProtoUDP, "2001:db8::1", "2001:db8::2", []ext{{typ: 44, len: 8, id: 5}}, ports(4000, 53, 0)), &k)
	if r != OK || k != udp6 || info.Fragment {
		t.Fatalf("atomic v6 fragment: %v %v %+v", r, k, info)
	}
}

func TestKeySymmetricAndAccessors(t *testing.T) {
	a, b := ap("198.18.0.1:1000"), ap("198.18.0.1:999")
	k1, k2 := NewKey(ProtoUDP, a, b), NewKey(ProtoUDP, b, a)
	if k1 != k2 || k1.Hash() != k2.Hash() {
		t.Fatal("same address, different ports: not symmetric")
	}
	x, y := k1.Endpoints()
	if x != b || y != a {
		t.Fatalf("endpoints %v %v", x, y)
	}
	if NewKey(ProtoTCP, a, b) == k1 {
		t.Fatal("protocol not in key")
	}
	m := NewKey(ProtoUDP, ap("[::ffff:198.18.0.1]:1000"), b)
	if m != k1 || m.IsIPv6() {
		t.Fatal("mapped address not unmapped")
	}
	if s := NewKey(ProtoTCP, ap("[2001:db8::1]:1"), ap("[2001:db8::2]:2")).String(); s != "tcp [2001:db8::1]:1 <-> [2001:db8::2]:2" {
		t.Fatalf("String = %q", s)
	}
	for r := OK; r < NumReasons; r++ {
		if r.String() == "unknown" {
			t.Fatalf("reason %d unnamed", r)
		}
	}
}

func FuzzParsePacket(f *testing.F) {
	f.Add(ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(40000, 443, 16), v4opts{ihl: 24}))
	f.Add(ipv4(ProtoICMP, "198.18.9.9", "198.18.0.1", icmp(3, 4, ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(1, 2, 4), v4opts{})), v4opts{}))
	f.Add(ipv4(ProtoUDP, "198.18.0.1", "203.0.113.5", make([]byte, 10), v4opts{off: 3}))
	f.Add(ipv6(ProtoTCP, "2001:db8::1", "2001:db8::2", []ext{{typ: 0, len: 8}, {typ: 44, len: 8, mf: true, id: 3}, {typ: 51, len: 12}}, ports(1, 2, 0)))
	f.Add(ipv6(ProtoICMPv6, "2001:db8::1", "2001:db8::2", nil, icmp(2, 0, ipv6(ProtoUDP, "2001:db8::2", "2001:db8::3", nil, ports(1, 2, 0)))))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		var k Key
		info, r := ParsePacket(pkt, &k)
		if r >= NumReasons {
			t.Fatalf("reason %d", r)
		}
		if r != OK {
			return
		}
		if !info.ICMPError && k.IsFragment() != (info.Fragment && !info.FirstFragment) {
			t.Fatalf("fragment key %v with info %+v", k, info)
		}
		if info.FirstFragment && !info.FragKey.IsFragment() {
			t.Fatalf("first fragment without fragment key: %+v", info)
		}
		// Symmetry: the key's endpoints rebuild the same key.
		a, b := k.Endpoints()
		if !k.IsFragment() && NewKey(k.Proto(), b, a) != k {
			t.Fatalf("key %v not rebuilt from its endpoints", k)
		}
		_ = k.String()
	})
}

func BenchmarkParsePacket(b *testing.B) {
	for _, bc := range []struct {
		name string
		pkt  []byte
	}{
		{"tcp4", ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(40000, 443, 16), v4opts{})},
		{"udp6-ext", ipv6(ProtoUDP, "2001:db8::1", "2001:db8::2", []ext{{typ: 0, len: 8}, {typ: 60, len: 8}}, ports(1, 2, 8))},
		{"icmp-error", ipv4(ProtoICMP, "198.18.9.9", "198.18.0.1", icmp(3, 4, ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(1, 2, 4), v4opts{})), v4opts{})},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var k Key
			b.ReportAllocs()
			for b.Loop() {
				if _, r := ParsePacket(bc.pkt, &k); r != OK {
					b.Fatal(r)
				}
			}
		})
	}
}
