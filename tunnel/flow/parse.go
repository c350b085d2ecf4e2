package flow

import "encoding/binary"

// Reason says why ParsePacket rejected a packet. String gives a snake_case
// metric label.
type Reason uint8

// Reasons, in metric order. NumReasons sizes per-reason counter arrays.
const (
	OK             Reason = iota
	Truncated             // shorter than a header it announces
	BadVersion            // IP version nibble is neither 4 nor 6
	BadHeader             // IHL below 5, total length below the header, extension header overrun
	TooManyHeaders        // IPv6 extension header chain longer than we walk
	BadICMPError          // an ICMP error that quotes no usable packet
	NumReasons
)

var reasonNames = [NumReasons]string{
	OK:             "ok",
	Truncated:      "truncated",
	BadVersion:     "bad_version",
	BadHeader:      "bad_header",
	TooManyHeaders: "too_many_headers",
	BadICMPError:   "bad_icmp_error",
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// maxExtHeaders bounds the IPv6 extension header walk; real traffic has a
// handful, hostile traffic could have hundreds.
const maxExtHeaders = 16

// Info describes a parsed packet beyond its Key.
type Info struct {
	// Proto is the flow's transport protocol (for an ICMP error, that of
	// the quoted packet).
	Proto uint8
	// TCP is set when the flow is TCP, which selects the TCP idle timeout.
	TCP bool
	// IPv6 is set for IPv6 packets.
	IPv6 bool
	// Fragment is set for any fragment (first or not).
	Fragment bool
	// FirstFragment is set for the fragment at offset 0 with more to come;
	// FragKey is then the key that later fragments of the datagram carry,
	// and the table maps it to the flow.
	FirstFragment bool
	FragKey       Key
	// ICMPError is set when the key is that of the packet an ICMP error
	// quotes.
	ICMPError bool
}

// ParsePacket parses an inner IPv4 or IPv6 packet and fills k with its flow
// key. For a non-first fragment k is a fragment key (k.IsFragment()), which
// Table resolves through the mapping learned from the first fragment. On
// any Reason other than OK the packet should be dropped and counted.
func ParsePacket(pkt []byte, k *Key) (Info, Reason) {
	return parse(pkt, k, false)
}

func parse(pkt []byte, k *Key, quoted bool) (Info, Reason) {
	if len(pkt) < 1 {
		return Info{}, Truncated
	}
	switch pkt[0] >> 4 {
	case 4:
		return parse4(pkt, k, quoted)
	case 6:
		return parse6(pkt, k, quoted)
	}
	return Info{}, BadVersion
}

func parse4(pkt []byte, k *Key, quoted bool) (Info, Reason) {
	if len(pkt) < 20 {
		return Info{}, Truncated
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < 20 {
		return Info{}, BadHeader
	}
	if len(pkt) < ihl {
		return Info{}, Truncated
	}
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	if total < ihl {
		return Info{}, BadHeader
	}
	if total < len(pkt) {
		pkt = pkt[:total] // link-layer padding
	} else if total > len(pkt) && !quoted {
		// A quoted packet is routinely cut short; a real one is not.
		return Info{}, Truncated
	}
	var src, dst [16]byte
	copy(src[:4], pkt[12:16])
	copy(dst[:4], pkt[16:20])
	info := Info{Proto: pkt[9]}
	frag := binary.BigEndian.Uint16(pkt[6:8])
	id := uint32(binary.BigEndian.Uint16(pkt[4:6]))
	off, more := frag&0x1fff, frag&0x2000 != 0
	return transport(pkt[ihl:], k, info, 0, src, dst, off != 0, more, id, quoted)
}

func parse6(pkt []byte, k *Key, quoted bool) (Info, Reason) {
	if len(pkt) < 40 {
		return Info{}, Truncated
	}
	plen := int(binary.BigEndian.Uint16(pkt[4:6]))
	if 40+plen < len(pkt) {
		pkt = pkt[:40+plen]
	} else if 40+plen > len(pkt) && !quoted {
		return Info{}, Truncated
	}
	src, dst := [16]byte(pkt[8:24]), [16]byte(pkt[24:40])
	next := pkt[6]
	b := pkt[40:]
	var nonFirst, more, isFrag bool
	var id uint32
	for i := 0; ; i++ {
		if i == maxExtHeaders {
			return Info{}, TooManyHeaders
		}
		var hlen int
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(b) < 2 {
				return Info{}, Truncated
			}
			hlen = (int(b[1]) + 1) * 8
		case 51: // authentication header
			if len(b) < 2 {
				return Info{}, Truncated
			}
			hlen = (int(b[1]) + 2) * 4
		case 44: // fragment
			if len(b) < 8 {
				return Info{}, Truncated
			}
			hlen = 8
			isFrag = true
			fo := binary.BigEndian.Uint16(b[2:4])
			nonFirst = fo>>3 != 0
			more = fo&1 != 0
			id = binary.BigEndian.Uint32(b[4:8])
		default:
			info := Info{Proto: next, IPv6: true}
			if isFrag && !nonFirst && !more {
				// An atomic fragment (offset 0, no more) is a whole
				// datagram: treat it as unfragmented.
				isFrag = false
			}
			if !isFrag {
				nonFirst, more = false, false
			}
			return transport(b, k, info, kindV6, src, dst, nonFirst, more, id, quoted)
		}
		if len(b) < hlen {
			return Info{}, BadHeader
		}
		next = b[0]
		b = b[hlen:]
		if nonFirst {
			// Headers after the fragment header are in the first fragment
			// only; next already names the fragmented protocol.
			return transport(nil, k, Info{Proto: next, IPv6: true}, kindV6, src, dst, true, more, id, quoted)
		}
	}
}

// transport finishes the key from the transport header l4.
func transport(l4 []byte, k *Key, info Info, kind uint8, src, dst [16]byte, nonFirst, more bool, id uint32, quoted bool) (Info, Reason) {
	proto := info.Proto
	info.TCP = proto == ProtoTCP
	if nonFirst {
		info.Fragment = true
		*k = Key{id: id, kind: kind | kindFrag}
		k.set(proto, src, dst, 0, 0)
		return info, OK
	}
	if more {
		info.Fragment, info.FirstFragment = true, true
		info.FragKey = Key{id: id, kind: kind | kindFrag}
		info.FragKey.set(proto, src, dst, 0, 0)
	}
	var sp, dp uint16
	switch proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP, ProtoUDPLite:
		if len(l4) < 4 {
			return Info{}, Truncated
		}
		sp, dp = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	case ProtoICMP, ProtoICMPv6:
		if (proto == ProtoICMP) != (kind&kindV6 == 0) {
			break // ICMP in IPv6 or ICMPv6 in IPv4: key on addresses only
		}
		if len(l4) < 4 {
			return Info{}, Truncated
		}
		typ := l4[0]
		if isICMPError(proto, typ) {
			if quoted {
				// Errors about errors are never sent (RFC 792, 4443).
				return Info{}, BadICMPError
			}
			if len(l4) < 8 {
				return Info{}, Truncated
			}
			qi, r := parse(l4[8:], k, true)
			if r != OK {
				return Info{}, BadICMPError
			}
			qi.ICMPError = true
			// Fragment state is the error datagram's own: its later
			// fragments map to the quoted flow through its FragKey.
			qi.Fragment, qi.FirstFragment, qi.FragKey = info.Fragment, info.FirstFragment, info.FragKey
			if qi.IPv6 != (kind&kindV6 != 0) {
				return Info{}, BadICMPError
			}
			return qi, OK
		}
		if isEcho(proto, typ) {
			if len(l4) < 8 {
				return Info{}, Truncated
			}
			sp = binary.BigEndian.Uint16(l4[4:6])
			dp = sp
		}
	}
	*k = Key{kind: kind}
	k.set(proto, src, dst, sp, dp)
	return info, OK
}

func isICMPError(proto, typ uint8) bool {
	if proto == ProtoICMP {
		return typ == 3 || typ == 11 || typ == 12 // unreachable, time exceeded, parameter problem
	}
	return typ >= 1 && typ <= 4 // unreachable, packet too big, time exceeded, parameter problem
}

func isEcho(proto, typ uint8) bool {
	if proto == ProtoICMP {
		return typ == 8 || typ == 0
	}
	return typ == 128 || typ == 129
}
