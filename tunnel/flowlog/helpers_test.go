//go:build linux

package flowlog

import (
	"bytes"
	"io"
	"net/netip"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// fakeSource maps ifindex 7 and tunnel slot 1 to endpoint 0x77.
type fakeSource struct{}

func (f fakeSource) EndpointOfMark(m uint32) (uint64, bool) {
	if m&0xffff0000 == 0x47570000 && m&0xffff == 1 {
		return 0x77, true
	}
	return 0, false
}
func (fakeSource) EndpointOfIfIndex(i int) (uint64, bool)                       { return 0x77, i == 7 }
func (fakeSource) RuleFor(uint64, uint8, netip.Addr, netip.Addr, uint16) string { return "r0" }
