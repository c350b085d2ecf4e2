//go:build linux

package steer

import "net/netip"

// What flow records (package tunnel/flowlog) need from steering: which
// endpoint a conntrack mark or a gwi-* interface belongs to, which policy
// rule decides a flow, and the marks and ports to tell forwarded
// flows from intercepted ones.

// EndpointOfMark returns the GWLB endpoint id of the tunnel whose mark is
// mark (a conntrack mark set by mark_prerouting), also for a tunnel that
// has gone down since.
func (s *Steerer) EndpointOfMark(mark uint32) (uint64, bool) {
	if mark&markMask != s.cfg.MarkBase || mark == s.cfg.MarkBase {
		return 0, false
	}
	v, ok := s.epBySlot.Load(uint16(mark))
	if !ok {
		return 0, false
	}
	return v.(uint64), true
}

// EndpointOfIfIndex returns the GWLB endpoint id of the tunnel whose gwi-*
// device has index idx.
func (s *Steerer) EndpointOfIfIndex(idx int) (uint64, bool) {
	v, ok := s.epByIf.Load(idx)
	if !ok {
		return 0, false
	}
	return v.(uint64), true
}

// RuleFor names the network policy rule that decides a flow (see
// NetworkPolicy.RuleFor).
func (s *Steerer) RuleFor(ep uint64, proto uint8, src, dst netip.Addr, dport uint16) string {
	return s.cfg.NetworkPolicy.RuleFor(ep, proto, src, dst, dport, s.resolvedNow)
}

// FlowSource is what a flow logger must know about this steering setup.
type FlowSource struct {
	MarkBase       uint32   // tunnel marks are MarkBase+slot
	MarkMask       uint32   // selects the "ours" part of a mark
	LogGroup       uint16   // NFLOG group of denials (0: none)
	InterceptPorts []uint16 // TCP ports handed to the proxy (not forwarded)
}

// FlowSource describes this configuration for flow records.
func (s *Steerer) FlowSource() FlowSource {
	fs := FlowSource{MarkBase: s.cfg.MarkBase, MarkMask: markMask}
	if s.cfg.NetworkPolicy.active() {
		fs.LogGroup = s.cfg.NetworkPolicy.LogGroup
	}
	fs.InterceptPorts = append(append(fs.InterceptPorts, s.cfg.HTTPPorts...), s.cfg.TLSPorts...)
	return fs
}
