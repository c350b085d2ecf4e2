package offload

import (
	"encoding/binary"
	"math/bits"

	"github.com/gwlbproxy/gwlbproxy/tunnel/udp"
)

const (
	protoTCP = 6
	protoUDP = 17
)

// sum is the unfolded one's complement sum of b added to s.
func sum(b []byte, s uint64) uint64 { return udp.Checksum(b, s) }

// addSum adds two unfolded sums with end-around carry.
func addSum(a, b uint64) uint64 {
	s, c := bits.Add64(a, b, 0)
	return s + c
}

// Fold folds a one's complement sum to 16 bits.
func Fold(s uint64) uint16 {
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	return uint16(s)
}

// pseudo returns the unfolded pseudo-header sum for an L4 segment of
// length l4len in packet pkt (IPv4 or IPv6, addresses at the fixed
// offsets).
func pseudo(pkt []byte, v6 bool, proto uint8, l4len int) uint64 {
	s := uint64(proto) + uint64(l4len)
	if v6 {
		return sum(pkt[8:40], s)
	}
	return sum(pkt[12:20], s)
}

// l4Valid reports whether the TCP/UDP checksum of pkt (L4 at off) is valid.
func l4Valid(pkt []byte, v6 bool, proto uint8, off int) bool {
	return Fold(sum(pkt[off:], pseudo(pkt, v6, proto, len(pkt)-off))) == 0xffff
}

// ipv4HeaderChecksum recomputes the IPv4 header checksum of h in place.
func ipv4HeaderChecksum(h []byte) {
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], ^Fold(sum(h, 0)))
}
