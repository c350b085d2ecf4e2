package offload

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
)

// roundTrip coalesces copies of pkts, splits every result as the tun
// reader would, and checks each original packet comes back in flow order
// and byte for byte (save the ids of DF IPv4 packets, RFC 6864). It
// returns the Supers for further checks.
func roundTrip(t testing.TB, pkts [][]byte, udp bool, mtu int) []Super {
	t.Helper()
	in := make([][]byte, len(pkts))
	for i, p := range pkts {
		in[i] = bytes.Clone(p)
	}
	c := NewCoalescer(len(pkts), udp)
	supers := c.Coalesce(in)
	var order []int
	var got [][]byte
	var sp Splitter
	hdr := make([]byte, MaxHeaderLen)
	for si := range supers {
		s := &supers[si]
		var whole []byte
		for _, part := range c.AppendParts(nil, in, s) {
			whole = append(whole, part...)
		}
		idx := []int{s.Head}
		for j := s.first; j >= 0; j = c.next[j] {
			idx = append(idx, int(j))
		}
		if len(idx) != s.Segments {
			t.Fatalf("super %d: %d indices, Segments %d", si, len(idx), s.Segments)
		}
		if s.Segments == 1 && s.Hdr != (VirtioNetHdr{}) {
			t.Fatalf("super %d: single packet with header %+v", si, s.Hdr)
		}
		// What the kernel hands back after forwarding: the same bytes and
		// header (the checksum field still partial).
		if err := sp.Reset(whole, s.Hdr, mtu); err != nil {
			t.Fatalf("super %d: reset: %v (hdr %+v)", si, err, s.Hdr)
		}
		if !sp.GSO() {
			got = append(got, whole)
			order = append(order, idx...)
			continue
		}
		if sp.Segments() != s.Segments && mtu >= 65535 {
			t.Fatalf("super %d: splitter says %d segments, coalescer %d", si, sp.Segments(), s.Segments)
		}
		for {
			n, pl, _, ok := sp.Next(hdr)
			if !ok {
				break
			}
			seg := append(bytes.Clone(hdr[:n]), pl...)
			got = append(got, seg)
		}
		order = append(order, idx...)
	}
	if mtu < 65535 {
		return supers // re-segmented: sizes differ from the originals
	}
	if len(got) != len(pkts) {
		t.Fatalf("%d packets in, %d out", len(pkts), len(got))
	}
	last := map[string]int{}
	for k, i := range order {
		p := pkts[i]
		if f := flowID(p); f != "" {
			if prev, ok := last[f]; ok && prev > i {
				t.Fatalf("packet %d overtook packet %d of the same flow", i, prev)
			}
			last[f] = i
		}
		if !samePacket(p, got[k]) {
			t.Fatalf("packet %d changed:\n in %x\nout %x", i, p, got[k])
		}
	}
	return supers
}

// flowID is the addresses, protocol and ports of p, or "" (every packet
// of a flow, mergeable or not, must keep its place).
func flowID(p []byte) string {
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		ihl := int(p[0]&15) * 4
		if len(p) >= ihl+4 {
			return string(p[12:20]) + string(p[9]) + string(p[ihl:ihl+4])
		}
	case len(p) >= 44 && p[0]>>4 == 6:
		return string(p[8:40]) + string(p[6]) + string(p[40:44])
	}
	return ""
}

func samePacket(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) >= 20 && a[0]>>4 == 4 && a[6]&0x40 != 0 {
		a, b = bytes.Clone(a), bytes.Clone(b)
		a[4], a[5], a[10], a[11] = 0, 0, 0, 0
		b[4], b[5], b[10], b[11] = 0, 0, 0, 0
	}
	return bytes.Equal(a, b)
}

func tcpStream(v6 bool, n, mss, last int, flagsLast uint8) [][]byte {
	src, dst := v4pair(40000, 443)
	if v6 {
		src, dst = v6pair(40000, 443)
	}
	var out [][]byte
	seq := uint32(1000)
	for i := 0; i < n; i++ {
		size, fl := mss, uint8(tcpACK)
		if i == n-1 {
			size, fl = last, flagsLast
		}
		out = append(out, build(pktSpec{v6: v6, tcp: true, src: src, dst: dst, payload: payload(size, byte(i)),
			seq: seq, ack: 77, flags: fl, id: uint16(100 + i), df: true,
			opts: []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}}))
		seq += uint32(size)
	}
	return out
}

func udpStream(v6 bool, n, size, last int, sp uint16) [][]byte {
	src, dst := v4pair(sp, 53)
	if v6 {
		src, dst = v6pair(sp, 53)
	}
	var out [][]byte
	for i := 0; i < n; i++ {
		s := size
		if i == n-1 {
			s = last
		}
		out = append(out, build(pktSpec{v6: v6, src: src, dst: dst, payload: payload(s, byte(i)), id: uint16(7 + i)}))
	}
	return out
}

func wantSupers(t *testing.T, got []Super, segs ...int) {
	t.Helper()
	var g []int
	for _, s := range got {
		g = append(g, s.Segments)
	}
	if fmt.Sprint(g) != fmt.Sprint(segs) {
		t.Fatalf("segments per written packet %v, want %v", g, segs)
	}
}

func TestTCPRoundTrip(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, tc := range []struct {
			name      string
			n, last   int
			flagsLast uint8
			want      []int
		}{
			{"full", 8, 1000, tcpACK, []int{8}},
			{"short last", 8, 10, tcpACK, []int{8}},
			{"psh last", 8, 1000, tcpACK | tcpPSH, []int{8}},
			{"fin last", 8, 1000, tcpACK | tcpFIN, []int{7, 1}},
			{"ece last", 4, 1000, tcpACK | tcpECE, []int{3, 1}},
			{"longer last", 5, 1200, tcpACK, []int{4, 1}},
			{"single", 1, 1000, tcpACK, []int{1}},
		} {
			t.Run(fmt.Sprintf("v6=%v/%s", v6, tc.name), func(t *testing.T) {
				s := roundTrip(t, tcpStream(v6, tc.n, 1000, tc.last, tc.flagsLast), true, 65535)
				wantSupers(t, s, tc.want...)
				if s[0].Segments > 1 {
					wt := uint8(GSOTCPv4)
					if v6 {
						wt = GSOTCPv6
					}
					h := s[0].Hdr
					if h.GSOType != wt || h.GSOSize != 1000 || h.Flags != FlagNeedsCsum || h.CsumOffset != 16 || int(h.HdrLen) != int(h.CsumStart)+32 {
						t.Fatalf("header %+v", h)
					}
				}
			})
		}
	}
}

func TestUDPRoundTrip(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprint("v6=", v6), func(t *testing.T) {
			s := roundTrip(t, udpStream(v6, 10, 64, 64, 5000), true, 65535)
			wantSupers(t, s, 10)
			if s[0].Hdr.GSOType != GSOUDPL4 || s[0].Hdr.GSOSize != 64 || s[0].Hdr.CsumOffset != 6 {
				t.Fatalf("header %+v", s[0].Hdr)
			}
			wantSupers(t, roundTrip(t, udpStream(v6, 10, 64, 20, 5000), true, 65535), 10)
			wantSupers(t, roundTrip(t, udpStream(v6, 3, 64, 80, 5000), true, 65535), 2, 1)
			// Without USO nothing UDP is merged.
			wantSupers(t, roundTrip(t, udpStream(v6, 3, 64, 64, 5000), false, 65535), 1, 1, 1)
		})
	}
}

func TestMaxSegmentsAndLength(t *testing.T) {
	wantSupers(t, roundTrip(t, udpStream(false, 70, 16, 16, 5000), true, 65535), 64, 6)
	// 8 x 8472-byte UDP payloads: 65535 allows 7.
	wantSupers(t, roundTrip(t, udpStream(false, 8, 8472, 8472, 5000), true, 65535), 7, 1)
}

func TestInterleavedFlowsKeepOrder(t *testing.T) {
	a := udpStream(false, 4, 100, 100, 1111)
	b := udpStream(false, 4, 100, 100, 2222)
	var pkts [][]byte
	for i := range a {
		pkts = append(pkts, a[i], b[i])
	}
	wantSupers(t, roundTrip(t, pkts, true, 65535), 4, 4)
}

func TestNotMerged(t *testing.T) {
	src, dst := v4pair(1000, 2000)
	base := pktSpec{src: src, dst: dst, payload: payload(100, 1), df: true}
	mk := func(f func(*pktSpec)) []byte {
		s := base
		f(&s)
		return build(s)
	}
	for _, tc := range []struct {
		name string
		pkts [][]byte
		want []int
	}{
		{"ip options", [][]byte{mk(func(s *pktSpec) { s.ipOpts = []byte{1, 1, 1, 0} }), mk(func(s *pktSpec) { s.ipOpts = []byte{1, 1, 1, 0} })}, []int{1, 1}},
		{"fragments", [][]byte{mk(func(s *pktSpec) { s.frag, s.df = true, false }), mk(func(s *pktSpec) { s.frag, s.df = true, false; s.id = 1 })}, []int{1, 1}},
		{"ecn differs", [][]byte{mk(func(s *pktSpec) { s.tos = 1 }), mk(func(s *pktSpec) { s.tos = 3 })}, []int{1, 1}},
		{"ecn same", [][]byte{mk(func(s *pktSpec) { s.tos = 2 }), mk(func(s *pktSpec) { s.tos = 2 })}, []int{2}},
		{"ttl differs", [][]byte{mk(func(s *pktSpec) { s.ttl = 3 }), mk(func(s *pktSpec) { s.ttl = 4 })}, []int{1, 1}},
		{"df differs", [][]byte{mk(func(s *pktSpec) {}), mk(func(s *pktSpec) { s.df = false; s.id = 1 })}, []int{1, 1}},
		{"bad checksum head", [][]byte{mk(func(s *pktSpec) { s.badCsum = true }), mk(func(s *pktSpec) {}), mk(func(s *pktSpec) {})}, []int{1, 2}},
		{"bad checksum tail", [][]byte{mk(func(s *pktSpec) {}), mk(func(s *pktSpec) { s.badCsum = true }), mk(func(s *pktSpec) {})}, []int{1, 1, 1}},
		{"zero udp checksum", [][]byte{mk(func(s *pktSpec) { s.zeroCsum = true }), mk(func(s *pktSpec) { s.zeroCsum = true })}, []int{1, 1}},
		{"non-df ids not consecutive", [][]byte{mk(func(s *pktSpec) { s.df = false; s.id = 5 }), mk(func(s *pktSpec) { s.df = false; s.id = 9 })}, []int{1, 1}},
		{"non-df ids consecutive", [][]byte{mk(func(s *pktSpec) { s.df = false; s.id = 0xffff }), mk(func(s *pktSpec) { s.df = false; s.id = 0 })}, []int{2}},
		{"empty payload", [][]byte{mk(func(s *pktSpec) { s.payload = nil }), mk(func(s *pktSpec) { s.payload = nil })}, []int{1, 1}},
		// A packet that cannot be merged stops later packets between the
		// same hosts from being merged in front of it.
		{"barrier", [][]byte{mk(func(s *pktSpec) {}), mk(func(s *pktSpec) { s.ipOpts = []byte{1, 1, 1, 0} }), mk(func(s *pktSpec) {})}, []int{1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantSupers(t, roundTrip(t, tc.pkts, true, 65535), tc.want...)
		})
	}
}

func TestTCPNotMerged(t *testing.T) {
	src, dst := v4pair(1000, 443)
	mk := func(seq uint32, f func(*pktSpec)) []byte {
		s := pktSpec{tcp: true, src: src, dst: dst, payload: payload(100, byte(seq)), seq: seq, ack: 5, flags: tcpACK, df: true}
		if f != nil {
			f(&s)
		}
		return build(s)
	}
	for _, tc := range []struct {
		name string
		pkts [][]byte
		want []int
	}{
		{"seq gap", [][]byte{mk(0, nil), mk(200, nil)}, []int{1, 1}},
		{"retransmit", [][]byte{mk(0, nil), mk(0, nil)}, []int{1, 1}},
		{"ack differs", [][]byte{mk(0, nil), mk(100, func(s *pktSpec) { s.ack = 6 })}, []int{1, 1}},
		{"window differs", [][]byte{mk(0, nil), mk(100, func(s *pktSpec) { s.window = 9 })}, []int{1, 1}},
		{"options differ", [][]byte{mk(0, func(s *pktSpec) { s.opts = []byte{1, 1, 1, 1} }), mk(100, func(s *pktSpec) { s.opts = []byte{1, 1, 1, 0} })}, []int{1, 1}},
		{"psh head", [][]byte{mk(0, func(s *pktSpec) { s.flags |= tcpPSH }), mk(100, nil)}, []int{1, 1}},
		{"cwr", [][]byte{mk(0, nil), mk(100, func(s *pktSpec) { s.flags |= tcpCWR })}, []int{1, 1}},
		{"syn", [][]byte{mk(0, func(s *pktSpec) { s.flags = tcpSYN | tcpACK }), mk(100, nil)}, []int{1, 1}},
		{"urg", [][]byte{mk(0, nil), mk(100, func(s *pktSpec) { s.flags |= tcpURG })}, []int{1, 1}},
		{"pure ack barrier", [][]byte{mk(0, nil), mk(100, func(s *pktSpec) { s.payload = nil }), mk(100, nil)}, []int{1, 1, 1}},
		{"after psh", [][]byte{mk(0, nil), mk(100, func(s *pktSpec) { s.flags |= tcpPSH }), mk(200, nil)}, []int{2, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantSupers(t, roundTrip(t, tc.pkts, true, 65535), tc.want...)
		})
	}
}

// TestSplitMTU: a TCP super-packet whose segment size exceeds the MTU is
// cut to fit; a UDP one cannot be and is refused.
func TestSplitMTU(t *testing.T) {
	pkts := tcpStream(false, 4, 3000, 3000, tcpACK)
	c := NewCoalescer(4, true)
	s := c.Coalesce(pkts)
	if len(s) != 1 {
		t.Fatalf("%d supers", len(s))
	}
	var whole []byte
	for _, p := range c.AppendParts(nil, pkts, &s[0]) {
		whole = append(whole, p...)
	}
	var sp Splitter
	if err := sp.Reset(whole, s[0].Hdr, 1500); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, MaxHeaderLen)
	var stream []byte
	n := 0
	for {
		hl, pl, _, ok := sp.Next(hdr)
		if !ok {
			break
		}
		seg := append(bytes.Clone(hdr[:hl]), pl...)
		if len(seg) > 1500 || !l4Valid(seg, false, protoTCP, 20) || csum.Fold(csum.Sum(seg[:20], 0)) != 0xffff {
			t.Fatalf("segment %d: len %d", n, len(seg))
		}
		if seq := binary.BigEndian.Uint32(seg[24:]); seq != 1000+uint32(len(stream)) {
			t.Fatalf("segment %d seq %d", n, seq)
		}
		stream = append(stream, pl...)
		n++
	}
	var want []byte
	for _, p := range tcpStream(false, 4, 3000, 3000, tcpACK) {
		want = append(want, p[52:]...)
	}
	if !bytes.Equal(stream, want) || n != 9 {
		t.Fatalf("%d segments, stream equal %v", n, bytes.Equal(stream, want))
	}
	u := udpStream(false, 2, 3000, 3000, 9)
	s = c.Coalesce(u)
	whole = append(append([]byte{}, u[0]...), u[1][28:]...)
	if err := sp.Reset(whole, s[0].Hdr, 1500); err != ErrTooBig {
		t.Fatalf("udp over mtu: %v", err)
	}
}

// TestCompleteChecksum: a locally generated packet read with a partial
// checksum leaves with a valid one.
func TestCompleteChecksum(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		src, dst := v4pair(1, 2)
		p := build(pktSpec{tcp: tcp, src: src, dst: dst, payload: payload(333, 3), flags: tcpACK})
		proto, at := uint8(protoUDP), 26
		if tcp {
			proto, at = protoTCP, 36
		}
		binary.BigEndian.PutUint16(p[at:], csum.Fold(pseudo(p, false, proto, len(p)-20)))
		h := VirtioNetHdr{Flags: FlagNeedsCsum, CsumStart: 20, CsumOffset: uint16(at - 20)}
		var sp Splitter
		if err := sp.Reset(p, h, 1500); err != nil || sp.GSO() {
			t.Fatal(err)
		}
		if !l4Valid(p, false, proto, 20) {
			t.Fatalf("tcp=%v: checksum not completed", tcp)
		}
	}
	var sp Splitter
	if err := sp.Reset(make([]byte, 30), VirtioNetHdr{Flags: FlagNeedsCsum, CsumStart: 20, CsumOffset: 16}, 1500); err != ErrMalformed {
		t.Fatalf("offset past the end: %v", err)
	}
}

func TestVirtioHeaderEncoding(t *testing.T) {
	h := VirtioNetHdr{Flags: 1, GSOType: GSOTCPv4, HdrLen: 52, GSOSize: 1448, CsumStart: 20, CsumOffset: 16}
	var b [VirtioNetHdrLen]byte
	h.Encode(b[:])
	// Little-endian host layout, as the kernel's struct virtio_net_hdr.
	if want := []byte{1, 1, 52, 0, 0xa8, 0x05, 20, 0, 16, 0}; binary.NativeEndian.Uint16([]byte{1, 0}) == 1 && !bytes.Equal(b[:], want) {
		t.Fatalf("encoded %x want %x", b, want)
	}
	var g VirtioNetHdr
	if err := g.Decode(b[:]); err != nil || g != h {
		t.Fatalf("decoded %+v %v", g, err)
	}
	if g.Decode(b[:9]) == nil {
		t.Fatal("short header accepted")
	}
}
