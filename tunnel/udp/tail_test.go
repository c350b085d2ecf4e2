//go:build linux

package udp

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
)

// TestEncapTailMatchesEncap: a datagram built from a head and a separately
// summed tail (even or odd head length, IPv4 and IPv6) carries exactly the
// bytes and checksum Encap computes for the same payload in one piece.
func TestEncapTailMatchesEncap(t *testing.T) {
	for _, fam := range []struct{ src, dst netip.AddrPort }{
		{netip.MustParseAddrPort("198.18.0.2:10001"), netip.MustParseAddrPort("198.18.0.1:6081")},
		{netip.MustParseAddrPort("[2001:db8::2]:10001"), netip.MustParseAddrPort("[2001:db8::1]:6081")},
	} {
		for _, headLen := range []int{0, 1, 40, 77, 120} {
			for _, tailLen := range []int{1, 2, 63, 1448, 8472} {
				payload := make([]byte, headLen+tailLen)
				for i := range payload {
					payload[i] = byte(i*13 + headLen)
				}
				one := make([]byte, HeaderRoom+len(payload))
				copy(one[HeaderRoom:], payload)
				want, err := Encap(one, HeaderRoom, len(payload), fam.src, fam.dst, 64)
				if err != nil {
					t.Fatal(err)
				}
				head := make([]byte, HeaderRoom+headLen)
				copy(head[HeaderRoom:], payload[:headLen])
				tail := payload[headLen:]
				got, err := EncapTail(head, HeaderRoom, headLen, tail, csum.Sum(tail, 0), fam.src, fam.dst, 64)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(append(bytes.Clone(got), tail...), want) {
					t.Fatalf("%s head %d tail %d: differs", fam.dst, headLen, tailLen)
				}
			}
		}
	}
}
