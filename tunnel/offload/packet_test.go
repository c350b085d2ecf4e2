package offload

import (
	"encoding/binary"
	"net/netip"

	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
)

// pktSpec describes a test packet.
type pktSpec struct {
	v6       bool
	tcp      bool
	src, dst netip.AddrPort
	payload  []byte
	seq, ack uint32
	flags    uint8
	id       uint16
	df       bool
	tos      uint8
	ttl      uint8
	window   uint16
	opts     []byte // TCP options (multiple of 4)
	ipOpts   []byte // IPv4 options (multiple of 4)
	badCsum  bool
	frag     bool // IPv4 MF set
	zeroCsum bool // UDP checksum 0
}

func v4pair(sp, dp uint16) (netip.AddrPort, netip.AddrPort) {
	return netip.AddrPortFrom(netip.MustParseAddr("198.19.0.10"), sp), netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), dp)
}

func v6pair(sp, dp uint16) (netip.AddrPort, netip.AddrPort) {
	return netip.AddrPortFrom(netip.MustParseAddr("2001:db8::10"), sp), netip.AddrPortFrom(netip.MustParseAddr("2001:db8:1::10"), dp)
}

func build(s pktSpec) []byte {
	if s.ttl == 0 {
		s.ttl = 64
	}
	if s.window == 0 {
		s.window = 501
	}
	l4len := 8 + len(s.payload)
	if s.tcp {
		l4len = 20 + len(s.opts) + len(s.payload)
	}
	var p []byte
	var ih int
	if s.v6 {
		ih = 40
		p = make([]byte, ih+l4len)
		binary.BigEndian.PutUint32(p[0:], 6<<28|uint32(s.tos)<<20|0x12345)
		binary.BigEndian.PutUint16(p[4:], uint16(l4len))
		p[6] = protoUDP
		if s.tcp {
			p[6] = protoTCP
		}
		p[7] = s.ttl
		a, b := s.src.Addr().As16(), s.dst.Addr().As16()
		copy(p[8:], a[:])
		copy(p[24:], b[:])
	} else {
		ih = 20 + len(s.ipOpts)
		p = make([]byte, ih+l4len)
		p[0] = 0x40 | byte(ih/4)
		p[1] = s.tos
		binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		binary.BigEndian.PutUint16(p[4:], s.id)
		if s.df {
			p[6] = 0x40
		}
		if s.frag {
			p[6] |= 0x20
		}
		p[8] = s.ttl
		p[9] = protoUDP
		if s.tcp {
			p[9] = protoTCP
		}
		a, b := s.src.Addr().As4(), s.dst.Addr().As4()
		copy(p[12:], a[:])
		copy(p[16:], b[:])
		copy(p[20:], s.ipOpts)
		csum.IPv4Header(p[:ih])
	}
	l4 := p[ih:]
	binary.BigEndian.PutUint16(l4[0:], s.src.Port())
	binary.BigEndian.PutUint16(l4[2:], s.dst.Port())
	var at int
	if s.tcp {
		binary.BigEndian.PutUint32(l4[4:], s.seq)
		binary.BigEndian.PutUint32(l4[8:], s.ack)
		l4[12] = byte((20+len(s.opts))/4) << 4
		l4[13] = s.flags
		binary.BigEndian.PutUint16(l4[14:], s.window)
		copy(l4[20:], s.opts)
		copy(l4[20+len(s.opts):], s.payload)
		at = 16
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(l4len))
		copy(l4[8:], s.payload)
		at = 6
	}
	proto := uint8(protoUDP)
	if s.tcp {
		proto = protoTCP
	}
	c := ^csum.Fold(csum.Sum(l4, pseudo(p, s.v6, proto, len(l4))))
	if c == 0 && !s.tcp {
		c = 0xffff
	}
	if s.badCsum {
		c ^= 0x0101
	}
	if s.zeroCsum {
		c = 0
	}
	binary.BigEndian.PutUint16(l4[at:], c)
	return p
}

func payload(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}
