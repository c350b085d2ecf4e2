//go:build linux

package fastpath

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/udp"
)

// skbCtx is the head of struct __sk_buff, up to ifindex: the fields
// BPF_PROG_TEST_RUN lets a test set for a tc program (the rest zero).
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol uint32
	VlanPresent, VlanTCI, VlanProto, Priority  uint32
	IngressIfindex, Ifindex                    uint32
}

// loIndex is the loopback device, which BPF_PROG_TEST_RUN runs tc programs
// on. Registered as a tunnel device with an Ethernet header (dev.l2) it
// stands in for gwo-<X>: test runs of tc programs are always L2.
const loIndex = 1

// withEgress is withTunnel plus the loopback device as the tunnel's
// egress device.
func withEgress(t *testing.T) *Fastpath {
	f := withTunnel(t)
	if err := f.objs.Devs.Put(uint32(loIndex), &fastpathDev{Endpoint: testEP, Slot: 3, L2: 14}); err != nil {
		t.Fatal(err)
	}
	return f
}

// runOut runs the egress program on an inner IP packet leaving "gwo-<X>"
// that entered the appliance on iif.
func runOut(t *testing.T, f *Fastpath, inner []byte, iif uint32) (uint32, []byte) {
	t.Helper()
	et := []byte{0x08, 0x00}
	if inner[0]>>4 == 6 {
		et = []byte{0x86, 0xdd}
	}
	pkt := append(append(append(make([]byte, 0, 14+len(inner)), macApp...), macGWLB...), et...)
	pkt = append(pkt, inner...)
	out := make([]byte, len(pkt)+256)
	ctx := skbCtx{IngressIfindex: iif, Ifindex: loIndex}
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out, Context: ctx}
	ret, err := f.objs.GeneveEgress.Run(opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret, out[:len(opts.DataOut)]
}

// withL4Sum fills in the transport checksum of an IPv4 (no options) or
// IPv6 (no extension headers) packet: TCP, UDP, ICMP, ICMPv6.
func withL4Sum(p []byte) []byte {
	var pseudo uint32
	var l4 []byte
	var proto byte
	if p[0]>>4 == 4 {
		l4, proto = p[20:], p[9]
		pseudo = uint32(proto) + uint32(len(l4)) + 0xffff - uint32(csum(p[12:20], 0))
	} else {
		l4, proto = p[40:], p[6]
		pseudo = uint32(proto) + uint32(len(l4)) + 0xffff - uint32(csum(p[8:40], 0))
	}
	off := map[byte]int{6: 16, 17: 6, 1: 2, 58: 2}[proto]
	l4[off], l4[off+1] = 0, 0
	if proto == 1 {
		pseudo = 0 // ICMP covers the message only
	}
	c := csum(l4, pseudo)
	if c == 0 && proto == 17 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], c)
	return p
}

// icmpEcho is an ICMP (v4) or ICMPv6 echo request body.
func icmpEcho(typ byte) []byte { return []byte{typ, 0, 0, 0, 0, 7, 0, 1, 'p', 'i', 'n', 'g'} }

// TestEgressMatchesUserspace: for a flow the ingress program learned, the
// egress program's outer headers (and the whole packet) are byte for byte
// what the userspace datapath builds for the same flow with udp.Encap,
// UDP checksum included, on both underlay families and both inner ones.
func TestEgressMatchesUserspace(t *testing.T) {
	f := withEgress(t)
	for _, tc := range []struct {
		name       string
		proto      uint16
		fwd, reply []byte
	}{
		{"ipv4 udp", geneve.ProtoIPv4,
			withL4Sum(ip4(client, server, 17, 0x4000, l4(40000, 53))),
			withL4Sum(ip4(server, client, 17, 0x4000, l4(53, 40000)))},
		{"ipv4 tcp", geneve.ProtoIPv4,
			withL4Sum(ip4(client, server, 6, 0x4000, l4(40001, 443))),
			withL4Sum(ip4(server, client, 6, 0x4000, append(l4(443, 40001), make([]byte, 1001)...)))},
		{"ipv4 icmp echo", geneve.ProtoIPv4,
			withL4Sum(ip4(client, server, 1, 0, icmpEcho(8))),
			withL4Sum(ip4(server, client, 1, 0, icmpEcho(0)))},
		{"ipv6 tcp", geneve.ProtoIPv6,
			withL4Sum(ip6(client6, server6, 6, l4(40002, 443))),
			withL4Sum(ip6(server6, client6, 6, l4(443, 40002)))},
		{"ipv6 udp odd length", geneve.ProtoIPv6,
			withL4Sum(ip6(client6, server6, 17, l4(40003, 53))),
			withL4Sum(ip6(server6, client6, 17, append(l4(53, 40003), 0xab)))},
		{"ipv6 icmp echo", geneve.ProtoIPv6,
			withL4Sum(ip6(client6, server6, 58, icmpEcho(128))),
			withL4Sum(ip6(server6, client6, 58, icmpEcho(129)))},
	} {
		for _, u := range underlays {
			t.Run(u.name+"/"+tc.name, func(t *testing.T) {
				g := genevePkt(tc.proto, 0x5eed0042, tc.fwd, geneve.Option{Class: 0x0109, Type: 5, Data: []byte{1, 2, 3, 4}})
				if ret, _ := runIn(t, f, u.frame(u.gwlb, 10042, 6081, g)); ret != actRedirect {
					t.Fatalf("ingress verdict %d", ret)
				}
				hdr := g[:len(g)-len(tc.fwd)]
				before := f.Tunnel(3)
				ret, out := runOut(t, f, tc.reply, gwiIndex)
				if ret != actRedirect {
					t.Fatalf("egress verdict %d, want redirect; counters %v", ret, f.Counters())
				}
				et := []byte{0x08, 0x00}
				if u.gwlb.Is6() {
					et = []byte{0x86, 0xdd}
				}
				wantEth := append(append(append([]byte{}, macGWLB...), macApp...), et...)
				if !bytes.Equal(out[:14], wantEth) {
					t.Fatalf("Ethernet header %x, want %x", out[:14], wantEth)
				}
				// The userspace encapsulation of the same flow.
				hl := udp.HeaderLen(u.gwlb)
				buf := make([]byte, hl, hl+len(hdr)+len(tc.reply))
				buf = append(append(buf, hdr...), tc.reply...)
				want, err := udp.Encap(buf, hl, len(buf)-hl, netip.AddrPortFrom(u.local, 10042), netip.AddrPortFrom(u.gwlb, 6081), udp.DefaultTTL)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out[14:], want) {
					t.Fatalf("encapsulated packet differs from the userspace datapath's:\n got %x\nwant %x", out[14:], want)
				}
				after := f.Tunnel(3)
				if after.OutPackets != before.OutPackets+1 || after.OutBytes != before.OutBytes+uint64(len(tc.reply)) {
					t.Fatalf("tunnel counters %+v -> %+v", before, after)
				}
			})
		}
	}
}

// TestEgressUDPChecksumZero: an inner UDP packet without a checksum gives
// the program nothing to derive the outer checksum from without reading
// the payload. Over IPv4 it sends checksum 0 (legal); over IPv6, where 0
// is not, it leaves the packet to userspace.
func TestEgressUDPChecksumZero(t *testing.T) {
	f := withEgress(t)
	fwd := ip4(client, server, 17, 0x4000, l4(40100, 53))
	reply := ip4(server, client, 17, 0x4000, l4(53, 40100)) // checksum 0
	for _, u := range underlays {
		g := genevePkt(geneve.ProtoIPv4, 9, fwd)
		if ret, _ := runIn(t, f, u.frame(u.gwlb, 10100, 6081, g)); ret != actRedirect {
			t.Fatalf("%s: ingress verdict %d", u.name, ret)
		}
		var ret uint32
		var out []byte
		d := reasonDelta(t, f, func() { ret, out = runOut(t, f, reply, gwiIndex) })
		if u.gwlb.Is4() {
			if ret != actRedirect {
				t.Fatalf("%s: verdict %d, counters %v", u.name, ret, d)
			}
			if c := out[14+20+6:][:2]; c[0] != 0 || c[1] != 0 {
				t.Fatalf("%s: outer UDP checksum %x, want 0", u.name, c)
			}
			continue
		}
		if ret != actOK || d[PassEgressChecksum] != 1 {
			t.Fatalf("%s: verdict %d, counters %v; want pass by egress_checksum", u.name, ret, d)
		}
	}
}

// TestEgressPassesUp: what the program does not encapsulate goes to the
// userspace datapath unchanged, counted by reason.
func TestEgressPassesUp(t *testing.T) {
	f := withEgress(t)
	known := withL4Sum(ip4(client, server, 17, 0x4000, l4(40200, 53)))
	if ret, _ := runIn(t, f, frame(gwlb, 10200, 6081, genevePkt(geneve.ProtoIPv4, 9, known))); ret != actRedirect {
		t.Fatal(ret)
	}
	reply := withL4Sum(ip4(server, client, 17, 0x4000, l4(53, 40200)))
	icmpErr := ip4(server, client, 1, 0, append([]byte{3, 4, 0, 0, 0, 0, 0x05, 0xdc}, known[:28]...))
	for _, tc := range []struct {
		name  string
		inner []byte
		iif   uint32
		want  int
	}{
		{"no flow", withL4Sum(ip4(server, client, 17, 0x4000, l4(53, 40201))), gwiIndex, PassNoFlow},
		{"no flow ipv6", withL4Sum(ip6(server6, client6, 6, l4(443, 40202))), gwiIndex, PassNoFlow},
		{"local socket", reply, 0, PassEgressLocal},
		{"not from a tunnel", reply, 77, PassEgressIngress},
		{"icmp error", icmpErr, gwiIndex, PassInner},
		{"fragment", ip4(server, client, 17, 0x2000, l4(53, 40200)), gwiIndex, PassInner},
		{"ipv4 options", func() []byte {
			p := append([]byte(nil), reply...)
			p[0] = 0x46 // IHL 6: the "options" are the UDP header's first word
			return p
		}(), gwiIndex, PassInner},
		{"length longer than packet", func() []byte {
			p := append([]byte(nil), reply...)
			binary.BigEndian.PutUint16(p[2:], uint16(len(p)+4))
			return p
		}(), gwiIndex, PassInner},
		{"padded", append(append([]byte(nil), reply...), 0, 0, 0, 0), gwiIndex, PassInner},
		{"truncated transport header", ip4(server, client, 6, 0x4000, []byte{0, 53}), gwiIndex, PassInner},
		{"ipv6 extension header", ip6(server6, client6, 60, append([]byte{17, 0, 0, 0, 0, 0, 0, 0}, l4(53, 40200)...)), gwiIndex, PassInner},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ret uint32
			var out []byte
			d := reasonDelta(t, f, func() { ret, out = runOut(t, f, tc.inner, tc.iif) })
			if ret != actOK {
				t.Fatalf("verdict %d, want pass; counters %v", ret, d)
			}
			if !bytes.Equal(out[14:], tc.inner) {
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

// TestLookupIPv6Underlay: the userspace return path reads a flow learned
// over an IPv6 underlay with its IPv6 outer addresses.
func TestLookupIPv6Underlay(t *testing.T) {
	f := withTunnel(t)
	inner := ip4(client, server, 6, 0x4000, l4(40300, 443))
	g := genevePkt(geneve.ProtoIPv4, 11, inner)
	if ret, _ := runIn(t, f, frame6(gwlb6, 10300, 6081, g)); ret != actRedirect {
		t.Fatal(ret)
	}
	k := keyOf(t, inner)
	var e Entry
	if !f.Lookup(testEP, k, &e) {
		t.Fatal("no flow")
	}
	if e.GWLB != netip.AddrPortFrom(gwlb6, 10300) || e.Local != app6 || !bytes.Equal(e.Header, g[:len(g)-len(inner)]) {
		t.Fatalf("entry %+v", e)
	}
}

func keyOf(t *testing.T, p []byte) flow.Key {
	t.Helper()
	var k flow.Key
	if _, r := flow.ParsePacket(p, &k); r != flow.OK {
		t.Fatal(r)
	}
	return k
}

// l4Valid reports whether an IPv4 (no options) or IPv6 packet's header
// checksum (IPv4) and transport checksum (TCP, UDP with a checksum, ICMP,
// ICMPv6) verify.
func l4Valid(p []byte) bool {
	var pseudo uint32
	var l4 []byte
	var proto byte
	if p[0]>>4 == 4 {
		if len(p) < 20 || csum(p[:20], 0) != 0 {
			return false
		}
		l4, proto = p[20:], p[9]
		pseudo = uint32(proto) + uint32(len(l4)) + 0xffff - uint32(csum(p[12:20], 0))
		if proto == 1 {
			pseudo = 0
		}
	} else {
		l4, proto = p[40:], p[6]
		pseudo = uint32(proto) + uint32(len(l4)) + 0xffff - uint32(csum(p[8:40], 0))
	}
	return csum(l4, pseudo) == 0
}

// TestEgressMutations feeds the egress program replies with random bytes
// of their headers changed. Whatever it encapsulates must carry the inner
// packet unchanged behind well-formed outer headers, and when the inner
// packet's own checksums still verify, so must the outer UDP checksum the
// program derived from them (over IPv4 it may also be 0).
func TestEgressMutations(t *testing.T) {
	f := withEgress(t)
	rng := rand.New(rand.NewPCG(20, 12))
	type pair struct{ fwd, reply []byte }
	var pairs []pair
	for i, mk := range []func(sp uint16) pair{
		func(sp uint16) pair {
			return pair{withL4Sum(ip4(client, server, 17, 0x4000, l4(sp, 53))), withL4Sum(ip4(server, client, 17, 0x4000, l4(53, sp)))}
		},
		func(sp uint16) pair {
			return pair{withL4Sum(ip4(client, server, 6, 0x4000, l4(sp, 443))), withL4Sum(ip4(server, client, 6, 0x4000, l4(443, sp)))}
		},
		func(sp uint16) pair {
			return pair{withL4Sum(ip6(client6, server6, 6, l4(sp, 443))), withL4Sum(ip6(server6, client6, 6, l4(443, sp)))}
		},
		func(sp uint16) pair {
			return pair{withL4Sum(ip6(client6, server6, 17, l4(sp, 53))), withL4Sum(ip6(server6, client6, 17, l4(53, sp)))}
		},
	} {
		for j, u := range underlays {
			sp := uint16(41000 + 10*i + j)
			p := mk(sp)
			proto := uint16(geneve.ProtoIPv4)
			if p.fwd[0]>>4 == 6 {
				proto = geneve.ProtoIPv6
			}
			if ret, _ := runIn(t, f, u.frame(u.gwlb, 12000+sp, 6081, genevePkt(proto, 5, p.fwd))); ret != actRedirect {
				t.Fatalf("ingress verdict %d", ret)
			}
			pairs = append(pairs, p)
		}
	}
	var redirected, verified, passed int
	for i := 0; i < 3000; i++ {
		inner := append([]byte(nil), pairs[rng.IntN(len(pairs))].reply...)
		hl := 20
		if inner[0]>>4 == 6 {
			hl = 40
		}
		for n := rng.IntN(3) + 1; n > 0; n-- {
			inner[1+rng.IntN(hl+8-1)] ^= byte(rng.IntN(255) + 1) // never the version nibble
		}
		if rng.IntN(10) == 0 {
			inner = inner[:hl+rng.IntN(len(inner)-hl)]
		}
		ret, out := runOut(t, f, inner, gwiIndex)
		switch ret {
		case actOK:
			passed++
			if !bytes.Equal(out[14:], inner) {
				t.Fatalf("case %d: a passed packet was modified", i)
			}
			continue
		case actRedirect:
		default:
			t.Fatalf("case %d: verdict %d", i, ret)
		}
		redirected++
		o := out[14:]
		var ipl int
		var pseudo uint32
		switch o[0] >> 4 {
		case 4:
			ipl = 20
			if csum(o[:20], 0) != 0 || int(binary.BigEndian.Uint16(o[2:])) != len(o) {
				t.Fatalf("case %d: outer IPv4 header %x (packet %d bytes)", i, o[:20], len(o))
			}
			pseudo = 17 + 0xffff - uint32(csum(o[12:20], 0))
		case 6:
			ipl = 40
			if int(binary.BigEndian.Uint16(o[4:]))+40 != len(o) {
				t.Fatalf("case %d: outer IPv6 payload length %d (packet %d bytes)", i, binary.BigEndian.Uint16(o[4:]), len(o))
			}
			pseudo = 17 + 0xffff - uint32(csum(o[8:40], 0))
		default:
			t.Fatalf("case %d: outer version %d", i, o[0]>>4)
		}
		u := o[ipl:]
		if int(binary.BigEndian.Uint16(u[4:])) != len(u) {
			t.Fatalf("case %d: UDP length %d of %d", i, binary.BigEndian.Uint16(u[4:]), len(u))
		}
		if !bytes.HasSuffix(u, inner) {
			t.Fatalf("case %d: inner packet changed", i)
		}
		if !l4Valid(inner) {
			continue // nothing to derive a valid checksum from
		}
		zero := u[6] == 0 && u[7] == 0
		if zero && ipl == 40 {
			t.Fatalf("case %d: IPv6 outer with UDP checksum 0", i)
		}
		if !zero {
			if csum(u, pseudo+uint32(len(u))) != 0 {
				t.Fatalf("case %d: outer UDP checksum does not verify for a valid inner packet %x", i, inner)
			}
			verified++
		}
	}
	t.Logf("redirected %d (outer checksum verified %d), passed up %d", redirected, verified, passed)
	if redirected == 0 || verified == 0 || passed == 0 {
		t.Fatal("the mutations exercised too little")
	}
}
