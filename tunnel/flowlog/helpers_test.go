//go:build linux

package flowlog

import (
	"bytes"
	"io"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// fakeSource maps ifindex 7 and tunnel slot 1 to endpoint 0x77.
type fakeSource struct{}

// Marks as steer lays them out with max_tunnels 256: slot in the low 9
// bits, the rule id above; rule id 1 is "r0".
func (f fakeSource) EndpointOfMark(m uint32) (uint64, bool) {
	if m&0xffff0000 == 0x47570000 && m&0x1ff == 1 {
		return 0x77, true
	}
	return 0, false
}
func (fakeSource) EndpointOfIfIndex(i int) (uint64, bool) { return 0x77, i == 7 }
func (fakeSource) RuleOfMark(m uint32) (string, string, bool) {
	if m&0xffff0000 == 0x47570000 && (m&0xfe00)>>9 == 1 {
		return "r0", "np-000000000001", true
	}
	return "", "", false
}
func (fakeSource) PolicyVersion() string { return "np-000000000001" }
