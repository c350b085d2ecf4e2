package offload

import (
	"encoding/binary"
	"testing"
)

// FuzzSplit feeds the splitter arbitrary virtio-net headers and packets, as
// a misbehaving kernel might: it must never panic, never produce a segment
// over the MTU, and produce exactly Segments() segments.
func FuzzSplit(f *testing.F) {
	add := func(h VirtioNetHdr, p []byte, mtu uint16) {
		b := make([]byte, VirtioNetHdrLen, VirtioNetHdrLen+len(p))
		h.Encode(b)
		f.Add(append(b, p...), mtu)
	}
	pk := tcpStream(false, 3, 500, 100, tcpACK|tcpPSH)
	c := NewCoalescer(3, true)
	s := c.Coalesce(pk)
	var whole []byte
	for _, p := range c.AppendParts(nil, pk, &s[0]) {
		whole = append(whole, p...)
	}
	add(s[0].Hdr, whole, 8500)
	add(s[0].Hdr, whole, 300)
	u := udpStream(true, 3, 64, 10, 7)
	s = c.Coalesce(u)
	whole = whole[:0]
	for _, p := range c.AppendParts(nil, u, &s[0]) {
		whole = append(whole, p...)
	}
	add(s[0].Hdr, whole, 8500)
	add(VirtioNetHdr{Flags: FlagNeedsCsum, CsumStart: 20, CsumOffset: 6}, u[0], 8500)
	add(VirtioNetHdr{GSOType: GSOTCPv4 | GSOECN, GSOSize: 1, CsumStart: 20}, pk[0], 100)
	f.Fuzz(func(t *testing.T, data []byte, mtu uint16) {
		var h VirtioNetHdr
		if h.Decode(data) != nil {
			return
		}
		pkt := data[VirtioNetHdrLen:]
		var sp Splitter
		if err := sp.Reset(pkt, h, int(mtu)); err != nil || !sp.GSO() {
			return
		}
		want := sp.Segments()
		hdr := make([]byte, MaxHeaderLen)
		n := 0
		for {
			hl, pl, _, ok := sp.Next(hdr)
			if !ok {
				break
			}
			if hl > MaxHeaderLen || hl+len(pl) > int(mtu) || len(pl) == 0 {
				t.Fatalf("segment %d: header %d payload %d mtu %d", n, hl, len(pl), mtu)
			}
			n++
		}
		if n != want {
			t.Fatalf("%d segments, Segments() said %d", n, want)
		}
	})
}

// FuzzRoundTrip builds a batch of packets from the fuzzer's bytes (TCP and
// UDP, v4 and v6, two flows, varying sizes, flags, sequence gaps, ids,
// ToS, corrupt checksums, IP options and raw garbage), coalesces and
// splits it, and requires every packet back, in flow order, unchanged.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte{0, 100, 0, 0, 0, 100, 0, 0, 0, 100, 0, 0, 0, 50, 0, 0})
	f.Add([]byte{2, 100, 0, 0, 2, 100, 0, 0, 6, 100, 0, 0, 2, 100, 1, 0, 2, 10, 0, 0})
	f.Add([]byte{3, 200, 0, 0, 3, 200, 0, 0, 3, 200, 0, 0, 3, 200, 2, 0, 3, 200, 0, 4})
	f.Add([]byte{0x10, 100, 0, 0, 0x10, 100, 0, 0, 0x11, 100, 0, 0, 0, 100, 0, 0x80, 0, 100, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var pkts [][]byte
		seq := [2]uint32{1, 1 << 31}
		id := [2]uint16{0xfff0, 9}
		for len(data) >= 4 && len(pkts) < 128 {
			b := data[:4]
			data = data[4:]
			if b[3]&0x80 != 0 {
				// Raw bytes: whatever they are, they go through untouched.
				n := min(int(b[1]), len(data))
				pkts = append(pkts, append([]byte(nil), data[:n]...))
				data = data[n:]
				continue
			}
			fl := int(b[0]>>4) & 1
			v6, tcp := b[0]&1 != 0, b[0]&2 != 0
			src, dst := v4pair(uint16(1000+fl), 443)
			if v6 {
				src, dst = v6pair(uint16(1000+fl), 443)
			}
			s := pktSpec{v6: v6, tcp: tcp, src: src, dst: dst, payload: payload(int(b[1])*3, b[2]),
				seq: seq[fl], ack: 1, flags: tcpACK, id: id[fl], df: b[0]&4 == 0}
			if b[2]&1 != 0 {
				s.flags |= tcpPSH
			}
			if b[2]&2 != 0 {
				s.seq += 5 // gap
			}
			if b[2]&4 != 0 {
				s.flags |= tcpFIN
			}
			if b[3]&1 != 0 {
				s.badCsum = true
			}
			if b[3]&2 != 0 && !v6 {
				s.ipOpts = []byte{1, 1, 1, 0}
			}
			if b[3]&4 != 0 {
				s.tos = 1
			}
			if b[3]&8 != 0 {
				s.id += 3
			}
			if b[3]&16 != 0 {
				s.window = 7
			}
			if !tcp && len(s.payload) == 0 {
				s.payload = []byte{1}
			}
			pkts = append(pkts, build(s))
			seq[fl] = s.seq + uint32(len(s.payload))
			id[fl] = s.id + 1
		}
		if len(pkts) == 0 {
			return
		}
		supers := roundTrip(t, pkts, true, 65535)
		for _, s := range supers {
			if s.Segments > MaxSegments {
				t.Fatalf("%d segments", s.Segments)
			}
			if s.Segments > 1 {
				head := pkts[s.Head]
				if binary.BigEndian.Uint16(head[2:]) > 0 && s.Hdr.GSOSize == 0 {
					t.Fatal("gso size 0")
				}
			}
		}
	})
}
