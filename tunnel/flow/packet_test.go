package flow

import (
	"encoding/binary"
	"net/netip"
)

// Test packet builders. They produce well-formed headers with the fields
// the parser reads; checksums are left zero since the parser ignores them.

type v4opts struct {
	ihl      int // in bytes, 20 if zero
	id       uint16
	off      uint16 // fragment offset in 8-byte units
	mf       bool
	totalAdj int // added to the total length field
}

func ipv4(proto uint8, src, dst string, l4 []byte, o v4opts) []byte {
	ihl := o.ihl
	if ihl == 0 {
		ihl = 20
	}
	b := make([]byte, ihl, ihl+len(l4))
	b[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(b[2:], uint16(ihl+len(l4)+o.totalAdj))
	binary.BigEndian.PutUint16(b[4:], o.id)
	frag := o.off
	if o.mf {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:], frag)
	b[8] = 64
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	for i := 20; i < ihl; i++ {
		b[i] = 1 // NOP options
	}
	return append(b, l4...)
}

// ext is an IPv6 extension header: its type and total length in bytes.
type ext struct {
	typ uint8
	len int
	// fragment fields
	off uint16
	mf  bool
	id  uint32
}

func ipv6(proto uint8, src, dst string, exts []ext, l4 []byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	b[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	next := &b[6]
	for _, e := range exts {
		*next = e.typ
		h := make([]byte, e.len)
		switch e.typ {
		case 44:
			binary.BigEndian.PutUint16(h[2:], e.off<<3)
			if e.mf {
				h[3] |= 1
			}
			binary.BigEndian.PutUint32(h[4:], e.id)
		case 51:
			h[1] = byte(e.len/4 - 2)
		default:
			h[1] = byte(e.len/8 - 1)
		}
		b = append(b, h...)
		next = &b[len(b)-len(h)]
	}
	*next = proto
	b = append(b, l4...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

func ports(sp, dp uint16, rest int) []byte {
	b := make([]byte, 4+rest)
	binary.BigEndian.PutUint16(b, sp)
	binary.BigEndian.PutUint16(b[2:], dp)
	return b
}

func icmp(typ, code uint8, rest []byte) []byte {
	return append([]byte{typ, code, 0, 0, 0, 0, 0, 0}, rest...)
}

func echo(typ uint8, id uint16) []byte {
	b := []byte{typ, 0, 0, 0, 0, 0, 0, 1}
	binary.BigEndian.PutUint16(b[4:], id)
	return b
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
