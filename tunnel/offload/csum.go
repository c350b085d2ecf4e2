package offload

import "github.com/gwlbproxy/gwlbproxy/tunnel/csum"

const (
	protoTCP = 6
	protoUDP = 17
)

// pseudo returns the unfolded pseudo-header sum for an L4 segment of
// length l4len in packet pkt (IPv4 or IPv6, addresses at the fixed
// offsets). The checksum itself is tunnel/csum's.
func pseudo(pkt []byte, v6 bool, proto uint8, l4len int) uint64 {
	s := uint64(proto) + uint64(l4len)
	if v6 {
		return csum.Sum(pkt[8:40], s)
	}
	return csum.Sum(pkt[12:20], s)
}

// l4Valid reports whether the TCP/UDP checksum of pkt (L4 at off) is valid.
func l4Valid(pkt []byte, v6 bool, proto uint8, off int) bool {
	return csum.Fold(csum.Sum(pkt[off:], pseudo(pkt, v6, proto, len(pkt)-off))) == 0xffff
}
