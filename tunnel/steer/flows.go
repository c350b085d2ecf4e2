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
	v, ok := s.epBySlot.Load(uint16(mark & s.cfg.slotMask()))
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

// RuleFor names the network policy rule that would decide a new flow now
// (see NetworkPolicy.RuleFor). Flow records do not use it: they read the
// rule from the conntrack mark (RuleOfMark).
func (s *Steerer) RuleFor(ep uint64, proto uint8, src, dst netip.Addr, dport uint16) string {
	s.mu.Lock()
	np := s.cfg.NetworkPolicy
	s.mu.Unlock()
	return np.RuleFor(ep, proto, src, dst, dport, s.resolvedNow)
}

// RuleOfMark names the network policy rule that allowed a flow, from the
// rule id its allow verdict set in the flow's conntrack mark (ruleid.go),
// and the version of the network policy that rule was last part of. ok is
// false for a mark without a rule id (no network policy active when the
// flow began).
func (s *Steerer) RuleOfMark(mark uint32) (rule, version string, ok bool) {
	if mark&markMask != s.cfg.MarkBase {
		return "", "", false
	}
	return s.ids.lookup(uint16((mark & s.cfg.ruleMask()) >> s.cfg.slotBits()))
}

// PolicyVersion is the version of the network policy in force
// (NetworkPolicy.Version).
func (s *Steerer) PolicyVersion() string { return *s.npVersion.Load() }

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
