package steer

// What flow records (package tunnel/flowlog) need from steering: which
// endpoint a conntrack mark or a gwi-* interface belongs to, which policy
// rule a conntrack label names, and the marks and ports to tell forwarded
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

// RuleOfLabels names the network policy rule that accepted a flow from its
// conntrack labels (see LabelBit).
func (s *Steerer) RuleOfLabels(labels []byte) (string, bool) {
	return s.cfg.NetworkPolicy.RuleOfLabels(labels)
}

// FlowSource is what a flow logger must know about this steering setup.
type FlowSource struct {
	MarkBase       uint32   // tunnel marks are MarkBase+slot
	MarkMask       uint32   // selects the "ours" part of a mark
	LogGroup       uint16   // NFLOG group of denials (0: none)
	InterceptPorts []uint16 // TCP ports handed to the proxy (not forwarded)
	PolicyActive   bool     // a network policy filters forwarded traffic
}

// FlowSource describes this configuration for flow records.
func (s *Steerer) FlowSource() FlowSource {
	fs := FlowSource{MarkBase: s.cfg.MarkBase, MarkMask: markMask, PolicyActive: s.cfg.NetworkPolicy.active()}
	if fs.PolicyActive {
		fs.LogGroup = s.cfg.NetworkPolicy.LogGroup
	}
	fs.InterceptPorts = append(append(fs.InterceptPorts, s.cfg.HTTPPorts...), s.cfg.TLSPorts...)
	return fs
}
