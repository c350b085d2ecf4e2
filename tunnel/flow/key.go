package flow

import (
	"fmt"
	"net/netip"
)

// IP protocol numbers the flow code looks at.
const (
	ProtoICMP    = 1
	ProtoTCP     = 6
	ProtoUDP     = 17
	ProtoICMPv6  = 58
	ProtoSCTP    = 132
	ProtoUDPLite = 136
)

const (
	kindV6   = 1 << 0 // addresses are IPv6 (else IPv4 in the first 4 bytes)
	kindFrag = 1 << 1 // fragment key: id holds the IP identification
)

// Key identifies a bidirectional flow. It is comparable (usable as a map
// key) and symmetric: the endpoints are stored in a canonical order, so both
// directions of a flow produce equal Keys.
//
// For TCP, UDP, UDP-Lite and SCTP the ports are part of the key; for ICMP
// and ICMPv6 echo the echo identifier is used as both ports so concurrent
// pings are distinct flows; for other protocols only the addresses count.
// A fragment key (IsFragment) instead carries the IP identification and
// names one fragmented datagram, not a flow.
type Key struct {
	lo, hi         [16]byte
	loPort, hiPort uint16
	id             uint32
	proto          uint8
	kind           uint8
}

// NewKey returns the Key of a flow between a and b (in either order) using
// protocol proto. If either address is IPv4 the flow is IPv4 (an
// IPv4-mapped IPv6 address is unmapped); otherwise it is IPv6, as it would
// be for an IPv6 packet that carries IPv4-mapped addresses.
func NewKey(proto uint8, a, b netip.AddrPort) Key {
	var k Key
	aa, ba, v6 := family(a.Addr(), b.Addr())
	if v6 {
		k.kind = kindV6
	}
	k.set(proto, addrBytes(aa), addrBytes(ba), a.Port(), b.Port())
	return k
}

func family(a, b netip.Addr) (netip.Addr, netip.Addr, bool) {
	if a.Is4() || b.Is4() {
		return a.Unmap(), b.Unmap(), false
	}
	return a, b, true
}

// NewFragmentKey returns the fragment key of the datagram with the given
// addresses, protocol and IP identification.
func NewFragmentKey(proto uint8, a, b netip.Addr, id uint32) Key {
	var k Key
	a, b, v6 := family(a, b)
	if v6 {
		k.kind = kindV6
	}
	k.kind |= kindFrag
	k.id = id
	k.set(proto, addrBytes(a), addrBytes(b), 0, 0)
	return k
}

func addrBytes(a netip.Addr) [16]byte {
	if a.Is4() {
		var b [16]byte
		v4 := a.As4()
		copy(b[:], v4[:])
		return b
	}
	return a.As16()
}

// set fills the key in canonical order: the lower (address, port) first.
func (k *Key) set(proto uint8, a, b [16]byte, ap, bp uint16) {
	k.proto = proto
	if less(&b, bp, &a, ap) {
		a, b, ap, bp = b, a, bp, ap
	}
	k.lo, k.hi, k.loPort, k.hiPort = a, b, ap, bp
}

func less(a *[16]byte, ap uint16, b *[16]byte, bp uint16) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return ap < bp
}

// Proto returns the IP protocol of the flow.
func (k Key) Proto() uint8 { return k.proto }

// IsFragment reports whether k is a fragment key.
func (k Key) IsFragment() bool { return k.kind&kindFrag != 0 }

// IsIPv6 reports whether the flow is IPv6.
func (k Key) IsIPv6() bool { return k.kind&kindV6 != 0 }

// FragmentID returns the IP identification of a fragment key.
func (k Key) FragmentID() uint32 { return k.id }

// Endpoints returns the two ends of the flow in canonical order (not in
// the direction of any particular packet).
func (k Key) Endpoints() (a, b netip.AddrPort) {
	return netip.AddrPortFrom(k.addr(&k.lo), k.loPort), netip.AddrPortFrom(k.addr(&k.hi), k.hiPort)
}

func (k Key) addr(b *[16]byte) netip.Addr {
	if k.kind&kindV6 != 0 {
		return netip.AddrFrom16(*b)
	}
	return netip.AddrFrom4([4]byte(b[:4]))
}

// Hash returns a well-mixed 64-bit hash of the key. It is symmetric like
// the key and stable for the life of the process (it has no random seed, so
// it must not be exposed to attackers as the only defence against
// collisions; the table's maps are seeded by the runtime).
func (k Key) Hash() uint64 {
	h := uint64(k.proto)<<56 ^ uint64(k.kind)<<48 ^ uint64(k.loPort)<<32 ^ uint64(k.hiPort)<<16 ^ uint64(k.id)
	h = mix(h ^ le64(k.lo[0:8]))
	h = mix(h ^ le64(k.lo[8:16]))
	h = mix(h ^ le64(k.hi[0:8]))
	h = mix(h ^ le64(k.hi[8:16]))
	return h
}

func le64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// mix is the splitmix64 finaliser.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// String formats the key for logs, e.g. "tcp 198.18.0.1:40000 <-> 203.0.113.5:443".
func (k Key) String() string {
	a, b := k.Endpoints()
	if k.IsFragment() {
		return fmt.Sprintf("frag proto %d %s <-> %s id %d", k.proto, a.Addr(), b.Addr(), k.id)
	}
	name := fmt.Sprintf("proto %d", k.proto)
	switch k.proto {
	case ProtoTCP:
		name = "tcp"
	case ProtoUDP:
		name = "udp"
	case ProtoICMP:
		name = "icmp"
	case ProtoICMPv6:
		name = "icmpv6"
	case ProtoSCTP:
		name = "sctp"
	}
	return fmt.Sprintf("%s %s <-> %s", name, a, b)
}
