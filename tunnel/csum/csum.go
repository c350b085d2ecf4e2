// Package csum is the one Internet checksum (RFC 1071) of the appliance:
// the outer UDP and IPv4 header checksums tunnel/udp writes, the TCP/UDP
// checksums tunnel/offload completes and recomputes when it splits and
// merges segments, and the frames proxy/mirror builds for the IDS.
//
// Sums are carried unfolded in a uint64 so that pieces of a packet can be
// summed separately (a pseudo header, a header, a payload summed once for
// many segments) and combined with Add before one Fold. Nothing allocates.
//
// The simulator (tunnel/gwlbsim) keeps a naive 16-bit-at-a-time copy on
// purpose: it is the independent check the appliance's packets are held
// against, so it must not share this code.
package csum

import (
	"encoding/binary"
	"math/bits"
)

// Sum adds b, as big-endian 16-bit words (odd length padded with a zero
// byte), to the running one's complement sum s and returns it unfolded.
// It sums 64 bits at a time: the one's complement sum is the same at any
// word width once folded.
func Sum(b []byte, s uint64) uint64 {
	var carry uint64
	for len(b) >= 32 {
		var c uint64
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b[0:]), 0)
		carry += c
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b[8:]), 0)
		carry += c
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b[16:]), 0)
		carry += c
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b[24:]), 0)
		carry += c
		b = b[32:]
	}
	for len(b) >= 8 {
		var c uint64
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b), 0)
		carry += c
		b = b[8:]
	}
	if len(b) >= 4 {
		var c uint64
		s, c = bits.Add64(s, uint64(binary.BigEndian.Uint32(b)), 0)
		carry += c
		b = b[4:]
	}
	if len(b) >= 2 {
		var c uint64
		s, c = bits.Add64(s, uint64(binary.BigEndian.Uint16(b)), 0)
		carry += c
		b = b[2:]
	}
	if len(b) == 1 {
		var c uint64
		s, c = bits.Add64(s, uint64(b[0])<<8, 0)
		carry += c
	}
	// Fold the carries back in (end-around carry).
	for carry != 0 {
		var c uint64
		s, c = bits.Add64(s, carry, 0)
		carry = c
	}
	return s
}

// Add adds two unfolded sums with end-around carry.
func Add(a, b uint64) uint64 {
	s, c := bits.Add64(a, b, 0)
	return s + c
}

// Fold folds an unfolded one's complement sum to 16 bits. The checksum
// field is its complement, ^Fold(s).
func Fold(s uint64) uint16 {
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	return uint16(s)
}

// IPv4Header writes the header checksum of the IPv4 header h (its whole
// length, options included) into h[10:12].
func IPv4Header(h []byte) {
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], ^Fold(Sum(h, 0)))
}
