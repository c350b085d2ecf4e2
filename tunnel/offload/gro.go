package offload

import (
	"bytes"
	"encoding/binary"

	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
)

// MaxSegments bounds how many packets one super-packet carries (the
// kernel's UDP_MAX_SEGMENTS; TCP GRO stops at 64 too).
const MaxSegments = 64

// maxSuperLen bounds a super-packet: the IPv4 total length and the IPv6
// payload length are 16-bit.
const maxSuperLen = 65535

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80
)

// Super is one packet to write after Coalesce: the head packet (whose
// headers Coalesce rewrote when others were merged into it) followed by
// the payloads of the merged packets. Write Hdr, then Parts.
type Super struct {
	// Head is the index of the head packet in the batch.
	Head int
	// Hdr is the virtio-net header to write before it: zero for a packet
	// that was not merged with any other.
	Hdr VirtioNetHdr
	// Segments is the number of original packets in it.
	Segments int
	first    int32 // first merged packet index, -1 if none
}

type groKey struct {
	src, dst [16]byte
	sport    uint16
	dport    uint16
	proto    uint8
	v6       bool
}

type groItem struct {
	key     groKey
	head    int32
	last    int32 // last merged packet index, -1
	first   int32
	n       uint16 // segments
	gsoSize uint16
	lastLen uint16 // payload of the last segment
	iphLen  uint8
	l4Len   uint8
	proto   uint8
	v6      bool
	open    bool
	checked bool // head checksum verified
	total   int  // bytes of the super-packet
	nextSeq uint32
	nextID  uint16
	hasPSH  bool
	df      bool
}

// Coalescer merges the packets of a batch. It keeps its tables between
// calls, so a Coalescer used for one batch at a time allocates nothing
// once warm. Not safe for concurrent use.
type Coalescer struct {
	// UDP enables UDP coalescing (the tun device accepted USO).
	UDP bool

	items []groItem
	next  []int32 // next[i]: packet merged after packet i, -1
	flows map[groKey]int32
	out   []Super
}

// NewCoalescer returns a Coalescer sized for batches of n packets.
func NewCoalescer(n int, udp bool) *Coalescer {
	return &Coalescer{
		UDP:   udp,
		items: make([]groItem, 0, n),
		next:  make([]int32, n),
		flows: make(map[groKey]int32, n),
		out:   make([]Super, 0, n),
	}
}

// Coalesce merges what it can of pkts (whole IP packets; the slices'
// contents are rewritten in place for heads of merged packets) and returns
// the packets to write, in an order that keeps every flow's packets in
// order. The result is valid until the next call.
func (c *Coalescer) Coalesce(pkts [][]byte) []Super {
	c.items = c.items[:0]
	c.out = c.out[:0]
	clear(c.flows)
	if cap(c.next) < len(pkts) {
		c.next = make([]int32, len(pkts))
	}
	c.next = c.next[:len(pkts)]
	for i, p := range pkts {
		c.next[i] = -1
		c.add(pkts, i, p)
	}
	for i := range c.items {
		it := &c.items[i]
		s := Super{Head: int(it.head), Segments: int(it.n), first: it.first}
		if it.n > 1 {
			s.Hdr = finish(pkts[it.head], it)
		}
		c.out = append(c.out, s)
	}
	return c.out
}

// AppendParts appends to dst the byte slices that make up s: the head
// packet and the payload of every merged packet.
func (c *Coalescer) AppendParts(dst [][]byte, pkts [][]byte, s *Super) [][]byte {
	dst = append(dst, pkts[s.Head])
	if s.Segments > 1 {
		hl := int(s.Hdr.HdrLen)
		for j := s.first; j >= 0; j = c.next[j] {
			dst = append(dst, pkts[j][hl:])
		}
	}
	return dst
}

// candidate parses p far enough to decide whether it may be merged. It
// returns ok=false for anything else.
func (c *Coalescer) candidate(p []byte, it *groItem) bool {
	if len(p) < 20 || len(p) > maxSuperLen {
		return false
	}
	var proto uint8
	switch p[0] >> 4 {
	case 4:
		if p[0]&0x0f != 5 || int(binary.BigEndian.Uint16(p[2:])) != len(p) {
			return false // IP options, or padding/short
		}
		if p[6]&0x20 != 0 || binary.BigEndian.Uint16(p[6:])&0x1fff != 0 {
			return false // fragment
		}
		if p[6]&0x80 != 0 {
			return false // reserved flag
		}
		proto = p[9]
		it.iphLen = 20
		it.df = p[6]&0x40 != 0
		copy(it.key.src[:], p[12:16])
		copy(it.key.dst[:], p[16:20])
	case 6:
		if len(p) < 40 || int(binary.BigEndian.Uint16(p[4:]))+40 != len(p) {
			return false
		}
		proto = p[6] // extension headers are not merged
		it.iphLen = 40
		it.v6 = true
		copy(it.key.src[:], p[8:24])
		copy(it.key.dst[:], p[24:40])
	default:
		return false
	}
	it.key.v6 = it.v6
	it.key.proto = proto
	it.proto = proto
	l4 := p[it.iphLen:]
	switch proto {
	case protoTCP:
		if len(l4) < 20 {
			return false
		}
		hl := int(l4[12]>>4) * 4
		if hl < 20 || len(l4) < hl {
			return false
		}
		flags := l4[13]
		if flags != tcpACK && flags != tcpACK|tcpPSH {
			return false
		}
		if len(l4) == hl || l4[12]&0x0f != 0 {
			return false // no payload, or reserved bits (AccECN) set
		}
		it.l4Len = uint8(hl)
		it.hasPSH = flags&tcpPSH != 0
		it.nextSeq = binary.BigEndian.Uint32(l4[4:]) + uint32(len(l4)-hl)
	case protoUDP:
		if !c.UDP || len(l4) <= 8 || int(binary.BigEndian.Uint16(l4[4:])) != len(l4) {
			return false
		}
		if binary.BigEndian.Uint16(l4[6:]) == 0 {
			return false // no checksum: merging would invent one
		}
		it.l4Len = 8
	default:
		return false
	}
	it.key.sport = binary.BigEndian.Uint16(l4[0:])
	it.key.dport = binary.BigEndian.Uint16(l4[2:])
	pl := len(p) - int(it.iphLen) - int(it.l4Len)
	it.gsoSize, it.lastLen = uint16(pl), uint16(pl)
	it.total = len(p)
	if !it.v6 {
		it.nextID = binary.BigEndian.Uint16(p[4:]) + 1
	}
	return true
}

func (c *Coalescer) add(pkts [][]byte, i int, p []byte) {
	cand := groItem{head: int32(i), last: -1, first: -1, n: 1}
	if !c.candidate(p, &cand) {
		// Not mergeable: no packet after it between the same hosts may be
		// merged into one before it, or it would overtake this one.
		c.closeHosts(p)
		c.items = append(c.items, cand)
		return
	}
	if idx, ok := c.flows[cand.key]; ok {
		it := &c.items[idx]
		if it.open && c.merge(pkts, it, &cand, i, p) {
			return
		}
		it.open = false
	}
	cand.open = !cand.hasPSH
	c.flows[cand.key] = int32(len(c.items))
	c.items = append(c.items, cand)
}

// closeHosts closes every open item between the addresses of p.
func (c *Coalescer) closeHosts(p []byte) {
	var src, dst []byte
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		src, dst = p[12:16], p[16:20]
	case len(p) >= 40 && p[0]>>4 == 6:
		src, dst = p[8:24], p[24:40]
	default:
		return
	}
	for j := range c.items {
		it := &c.items[j]
		if !it.open {
			continue
		}
		n := len(src)
		if (n == 16) == it.v6 && bytes.Equal(it.key.src[:n], src) && bytes.Equal(it.key.dst[:n], dst) {
			it.open = false
		}
	}
}

// merge appends packet i (parsed into cand) to it if the rules allow.
func (c *Coalescer) merge(pkts [][]byte, it, cand *groItem, i int, p []byte) bool {
	head := pkts[it.head]
	if it.n >= MaxSegments || it.total+int(cand.gsoSize) > maxSuperLen {
		return false
	}
	if cand.gsoSize > it.gsoSize || it.lastLen != it.gsoSize {
		return false // only the last segment may be short
	}
	if it.l4Len != cand.l4Len {
		return false
	}
	// IP header fields that must match (everything GSO copies).
	if it.v6 {
		if !bytes.Equal(head[:4], p[:4]) || head[7] != p[7] {
			return false // version/traffic class/flow label, hop limit
		}
	} else {
		if head[1] != p[1] || head[8] != p[8] || head[6]&0xe0 != p[6]&0xe0 {
			return false // TOS/ECN, TTL, flags
		}
		// Segmentation numbers segments with consecutive ids; only DF
		// (atomic) datagrams may have had other ids (RFC 6864).
		if !it.df && binary.BigEndian.Uint16(p[4:]) != it.nextID {
			return false
		}
	}
	ih := int(it.iphLen)
	if it.proto == protoTCP {
		h, q := head[ih:], p[ih:]
		if binary.BigEndian.Uint32(q[4:]) != it.nextSeq {
			return false // not contiguous
		}
		if !bytes.Equal(h[8:12], q[8:12]) || !bytes.Equal(h[14:16], q[14:16]) || !bytes.Equal(h[18:20], q[18:20]) {
			return false // ack, window, urgent pointer
		}
		if !bytes.Equal(h[20:it.l4Len], q[20:it.l4Len]) {
			return false // options (timestamps must be equal too)
		}
	}
	if !it.checked {
		if !l4Valid(head, it.v6, it.proto, ih) {
			it.open = false
			return false
		}
		it.checked = true
	}
	if !l4Valid(p, it.v6, it.proto, ih) {
		return false
	}
	if it.first < 0 {
		it.first = int32(i)
	} else {
		c.next[it.last] = int32(i)
	}
	it.last = int32(i)
	it.n++
	it.total += int(cand.gsoSize)
	it.lastLen = cand.gsoSize
	it.nextID++
	if it.proto == protoTCP {
		it.nextSeq += uint32(cand.gsoSize)
		if cand.hasPSH {
			it.hasPSH = true
			head[ih+13] |= tcpPSH
			it.open = false // PSH ends a merge
		}
	}
	return true
}

// finish rewrites the head's headers for the merged length and returns the
// virtio-net header that makes the kernel treat it as a GSO packet with a
// partial checksum.
func finish(head []byte, it *groItem) VirtioNetHdr {
	ih := int(it.iphLen)
	h := VirtioNetHdr{
		Flags:     FlagNeedsCsum,
		HdrLen:    uint16(ih + int(it.l4Len)),
		GSOSize:   it.gsoSize,
		CsumStart: uint16(ih),
	}
	if it.v6 {
		binary.BigEndian.PutUint16(head[4:], uint16(it.total-ih))
	} else {
		binary.BigEndian.PutUint16(head[2:], uint16(it.total))
		csum.IPv4Header(head[:ih])
	}
	l4len := it.total - ih
	var csumAt int
	if it.proto == protoTCP {
		h.CsumOffset = 16
		h.GSOType = GSOTCPv4
		if it.v6 {
			h.GSOType = GSOTCPv6
		}
	} else {
		h.CsumOffset = 6
		h.GSOType = GSOUDPL4
		binary.BigEndian.PutUint16(head[ih+4:], uint16(l4len))
	}
	csumAt = ih + int(h.CsumOffset)
	// CHECKSUM_PARTIAL: the field holds the folded, uncomplemented
	// pseudo-header sum; the kernel (or our Splitter) adds the rest.
	binary.BigEndian.PutUint16(head[csumAt:], csum.Fold(pseudo(head, it.v6, it.proto, l4len)))
	return h
}
