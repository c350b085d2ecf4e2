package offload

import (
	"encoding/binary"
	"errors"

	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
)

// Errors from Splitter.Reset; all mean "drop the packet".
var (
	ErrGSOType   = errors.New("offload: unsupported GSO type")
	ErrMalformed = errors.New("offload: malformed packet for its virtio-net header")
	ErrTooBig    = errors.New("offload: segments would exceed the MTU")
)

// MaxHeaderLen is the most header bytes Splitter.Next writes: IPv4 with
// options (60) or IPv6 (40), plus TCP with options (60).
const MaxHeaderLen = 120

// Splitter cuts a GSO super-packet into segments. Use Reset, then call
// Next until it returns false. The zero value is ready for Reset.
type Splitter struct {
	pkt     []byte
	gso     bool
	v6      bool
	proto   uint8
	iphLen  int
	hl      int // IP + L4 header
	seg     int // payload bytes per segment
	off     int // payload offset of the next segment
	i       int
	seq     uint32
	id      uint16
	ecn     bool
	partial uint64 // pseudo-header address sum + proto
}

// Reset prepares to split pkt, the packet that followed hdr in a tun read.
// A non-GSO packet with a partial checksum has it completed in place, and
// GSO() reports false: send pkt as it is. For a GSO packet, no segment
// may be longer than mtu (TCP is cut smaller if the kernel's segment size
// would exceed it; UDP datagrams cannot be, so that is ErrTooBig).
func (s *Splitter) Reset(pkt []byte, hdr VirtioNetHdr, mtu int) error {
	*s = Splitter{pkt: pkt}
	if hdr.GSOType == GSONone {
		if hdr.Flags&FlagNeedsCsum != 0 {
			return completeChecksum(pkt, hdr)
		}
		return nil
	}
	s.gso = true
	if len(pkt) < 20 || hdr.GSOSize == 0 {
		return ErrMalformed
	}
	cs := int(hdr.CsumStart)
	switch pkt[0] >> 4 {
	case 4:
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < 20 || cs != ihl || len(pkt) < ihl || binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 {
			return ErrMalformed
		}
		s.proto = pkt[9]
		s.iphLen = ihl
		s.id = binary.BigEndian.Uint16(pkt[4:])
	case 6:
		if len(pkt) < 40 || cs != 40 {
			return ErrMalformed // extension headers are not segmented here
		}
		s.v6 = true
		s.proto = pkt[6]
		s.iphLen = 40
	default:
		return ErrMalformed
	}
	switch hdr.GSOType &^ GSOECN {
	case GSOTCPv4, GSOTCPv6:
		if s.proto != protoTCP || s.v6 != (hdr.GSOType&^GSOECN == GSOTCPv6) {
			return ErrMalformed
		}
		if len(pkt) < cs+20 {
			return ErrMalformed
		}
		l4 := int(pkt[cs+12]>>4) * 4
		if l4 < 20 || len(pkt) < cs+l4 {
			return ErrMalformed
		}
		s.hl = cs + l4
		s.seq = binary.BigEndian.Uint32(pkt[cs+4:])
		s.ecn = hdr.GSOType&GSOECN != 0
	case GSOUDPL4:
		if s.proto != protoUDP || len(pkt) < cs+8 {
			return ErrMalformed
		}
		s.hl = cs + 8
	default:
		return ErrGSOType
	}
	if hdr.Flags&FlagNeedsCsum != 0 {
		want := uint16(6)
		if s.proto == protoTCP {
			want = 16
		}
		if hdr.CsumOffset != want {
			return ErrMalformed
		}
	}
	s.seg = int(hdr.GSOSize)
	if s.hl+s.seg > mtu {
		if s.proto != protoTCP || mtu <= s.hl {
			return ErrTooBig
		}
		s.seg = mtu - s.hl
	}
	if len(pkt) <= s.hl {
		return ErrMalformed
	}
	s.off = s.hl
	if s.v6 {
		s.partial = csum.Sum(pkt[8:40], uint64(s.proto))
	} else {
		s.partial = csum.Sum(pkt[12:20], uint64(s.proto))
	}
	return nil
}

// GSO reports whether the packet needs splitting.
func (s *Splitter) GSO() bool { return s.gso }

// Segments returns how many segments Next will produce (1 without GSO).
func (s *Splitter) Segments() int {
	if !s.gso {
		return 1
	}
	return (len(s.pkt) - s.hl + s.seg - 1) / s.seg
}

// Next writes the headers of the next segment into hdr (at least
// MaxHeaderLen bytes) and returns their length, the segment's payload (a
// sub-slice of the packet) and the payload's unfolded one's complement
// sum, which the caller can reuse for an outer checksum. It returns
// ok=false when all segments have been produced.
func (s *Splitter) Next(hdr []byte) (n int, payload []byte, payloadSum uint64, ok bool) {
	if !s.gso || s.off >= len(s.pkt) {
		return 0, nil, 0, false
	}
	end := min(s.off+s.seg, len(s.pkt))
	last := end == len(s.pkt)
	payload = s.pkt[s.off:end]
	h := hdr[:s.hl]
	copy(h, s.pkt[:s.hl])
	ih := s.iphLen
	tot := s.hl + len(payload)
	if s.v6 {
		binary.BigEndian.PutUint16(h[4:], uint16(tot-40))
	} else {
		binary.BigEndian.PutUint16(h[2:], uint16(tot))
		binary.BigEndian.PutUint16(h[4:], s.id+uint16(s.i))
		csum.IPv4Header(h[:ih])
	}
	l4 := h[ih:]
	var csumAt int
	if s.proto == protoTCP {
		binary.BigEndian.PutUint32(l4[4:], s.seq+uint32(s.off-s.hl))
		if !last {
			l4[13] &^= tcpFIN | tcpPSH
		}
		if s.i > 0 && s.ecn {
			l4[13] &^= tcpCWR
		}
		csumAt = 16
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(tot-ih))
		csumAt = 6
	}
	l4[csumAt], l4[csumAt+1] = 0, 0
	payloadSum = csum.Sum(payload, 0)
	ps := csum.Add(s.partial, uint64(tot-ih))
	c := ^csum.Fold(csum.Add(csum.Sum(l4, ps), payloadSum))
	if c == 0 && s.proto == protoUDP {
		c = 0xffff // 0 means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(l4[csumAt:], c)
	s.off = end
	s.i++
	return s.hl, payload, payloadSum, true
}

// completeChecksum finishes a CHECKSUM_PARTIAL packet: the kernel left the
// pseudo-header sum at CsumStart+CsumOffset and expects the sum from
// CsumStart to the end to be added.
func completeChecksum(pkt []byte, hdr VirtioNetHdr) error {
	start := int(hdr.CsumStart)
	at := start + int(hdr.CsumOffset)
	if start >= len(pkt) || at+2 > len(pkt) {
		return ErrMalformed
	}
	initial := uint64(binary.BigEndian.Uint16(pkt[at:]))
	pkt[at], pkt[at+1] = 0, 0
	c := ^csum.Fold(csum.Sum(pkt[start:], initial))
	if c == 0 && hdr.CsumOffset == 6 {
		c = 0xffff // UDP: 0 means "no checksum"
	}
	binary.BigEndian.PutUint16(pkt[at:], c)
	return nil
}
