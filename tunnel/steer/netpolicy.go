//go:build linux

package steer

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"golang.org/x/sys/unix"
)

// Network policy for forwarded traffic: everything from the tunnels that
// the proxy does not intercept (every port but the HTTP/TLS ones, UDP,
// ICMP, other protocols). Without it, a deny-by-default proxy policy is
// moot: a workload simply uses another port. The policy is part of the
// table (filter_forward_tunnel, where filter_forward sends every packet
// from a tunnel), so it is installed, replaced and repaired with
// the rest in one nftables transaction.
//
// Evaluation, per packet arriving from a tunnel and forwarded:
//
//  1. QUIC and guard drops (unchanged);
//  2. ct state established,related: accept. Replies, and ICMP errors about
//     an allowed flow (fragmentation needed, unreachable), always pass;
//  3. the rules in order; the first match decides (allow: accept; deny
//     and reject: NFLOG to log_group with prefix "np:<rule>@<version>", then drop, or
//     a TCP reset / ICMP administratively prohibited); destinations may
//     be CIDRs or domain names (domain.go);
//  4. default_action.
//
// Intercepted ports never reach the forward hook (TPROXY delivers them
// locally, or drops them when the listener is missing), so they stay with
// the proxy's policy.

// Network policy actions.
const (
	NetAllow = "allow"
	NetDeny  = "deny" // drop silently
	// NetReject denies and tells the client at once: a TCP reset for
	// TCP, ICMP administratively prohibited otherwise.
	NetReject = "reject"
)

// Protocols a network rule can match.
const (
	ProtoAny    = "any"
	ProtoTCP    = "tcp"
	ProtoUDP    = "udp"
	ProtoICMP   = "icmp"
	ProtoICMPv6 = "icmpv6"
)

// DefaultRuleName is the rule name of the default action in NFLOG
// prefixes, counters and flow records.
const DefaultRuleName = "default"

// NetworkPolicy is the steer.network_policy section.
type NetworkPolicy struct {
	// DefaultAction applies to forwarded traffic no rule matched: allow,
	// deny or reject. Empty: the application fills in the proxy policy's default
	// (deny unless proxy.policy.default_action allows), so a
	// deny-by-default proxy is deny-by-default on every port. Inside this
	// package, empty means allow (the behaviour before network policies).
	DefaultAction string `yaml:"default_action"`
	// Rules are evaluated in order; the first match decides.
	Rules []NetRule `yaml:"rules"`
	// LogGroup is the NFLOG group denied packets are logged to (flow
	// records read it). 0 turns logging of denials off.
	LogGroup uint16 `yaml:"log_group"`
}

// NetRule matches when every non-empty criterion matches (AND); within one
// criterion any entry may match (OR).
type NetRule struct {
	// Name appears in counters, NFLOG prefixes and flow records.
	Name   string `yaml:"name"`
	Action string `yaml:"action"`
	// Endpoints are GWLB endpoint ids ("vpce-<hex>" or bare hex).
	Endpoints []string `yaml:"endpoints,omitempty"`
	// Clients and Destinations are CIDRs of the source and destination.
	Clients      []netip.Prefix `yaml:"clients,omitempty"`
	Destinations []netip.Prefix `yaml:"destinations,omitempty"`
	// Protocol is tcp, udp, icmp, icmpv6 or any (default any).
	Protocol string `yaml:"protocol,omitempty"`
	// Ports are destination ports or ranges ("22", "8000-8100"); only
	// with protocol tcp or udp.
	Ports []policy.PortRange `yaml:"ports,omitempty"`
	// Domains are exact DNS names whose addresses (A and AAAA, resolved
	// by the appliance, kept for their TTL) count as destinations: a rule
	// with Destinations and Domains matches either. No wildcards: a
	// wildcard cannot be resolved.
	Domains []string `yaml:"domains,omitempty"`

	endpoints []uint64
}

// active reports whether the policy changes anything: any rule, or a
// default other than allow.
func (p *NetworkPolicy) active() bool {
	return len(p.Rules) > 0 || p.DefaultAction == NetDeny || p.DefaultAction == NetReject
}

// validate checks the policy; messages start with "network_policy.".
func (p *NetworkPolicy) validate() []error {
	var errs []error
	add := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("network_policy."+format, a...))
	}
	switch p.DefaultAction {
	case "", NetAllow, NetDeny, NetReject:
	default:
		add("default_action: %q is not allow, deny or reject", p.DefaultAction)
	}
	seen := map[string]bool{}
	for i := range p.Rules {
		r := &p.Rules[i]
		if !validRuleName(r.Name) {
			add("rules[%d].name: %q must be 1..64 of A-Z a-z 0-9 _ . - (and not %q)", i, r.Name, DefaultRuleName)
		} else if seen[r.Name] {
			add("rules[%d].name: duplicate %q", i, r.Name)
		}
		seen[r.Name] = true
		if r.Action != NetAllow && r.Action != NetDeny && r.Action != NetReject {
			add("rules[%d].action: %q is not allow, deny or reject", i, r.Action)
		}
		switch r.Protocol {
		case "", ProtoAny, ProtoTCP, ProtoUDP, ProtoICMP, ProtoICMPv6:
		default:
			add("rules[%d].protocol: %q is not tcp, udp, icmp, icmpv6 or any", i, r.Protocol)
		}
		if len(r.Ports) > 0 && r.Protocol != ProtoTCP && r.Protocol != ProtoUDP {
			add("rules[%d].ports: needs protocol tcp or udp", i)
		}
		for j, pr := range r.Ports {
			if pr.Lo == 0 || pr.Hi < pr.Lo {
				add("rules[%d].ports[%d]: %q is not a port or range 1..65535", i, j, pr)
			}
		}
		r.endpoints = nil // fresh: the rules may share arrays with a policy in force (reload)
		for j, e := range r.Endpoints {
			v, err := policy.ParseEndpointID(e)
			if err != nil {
				add("rules[%d].endpoints[%d]: %v", i, j, err)
				continue
			}
			r.endpoints = append(r.endpoints, v)
		}
		for j, c := range r.Clients {
			if !c.IsValid() {
				add("rules[%d].clients[%d]: invalid prefix", i, j)
			}
		}
		for j, c := range r.Destinations {
			if !c.IsValid() {
				add("rules[%d].destinations[%d]: invalid prefix", i, j)
			}
		}
		r.Domains = append([]string(nil), r.Domains...) // normalised in place below
		for j, d := range r.Domains {
			if strings.Contains(d, "*") {
				add("rules[%d].domains[%d]: %q: wildcards cannot be resolved; name each host", i, j, d)
				continue
			}
			n, err := policy.NormalizeName(d)
			if err != nil || n == "" || !strings.Contains(n, ".") {
				add("rules[%d].domains[%d]: %q is not a DNS name", i, j, d)
				continue
			}
			r.Domains[j] = n
		}
		if r.Protocol == ProtoICMP && (hasFamily(r.Clients, true) || hasFamily(r.Destinations, true)) && !hasFamily(r.Clients, false) && !hasFamily(r.Destinations, false) {
			add("rules[%d].protocol: icmp never matches IPv6 clients/destinations (use icmpv6)", i)
		}
	}
	return errs
}

func validRuleName(n string) bool {
	if n == "" || len(n) > 64 || n == DefaultRuleName {
		return false
	}
	for _, c := range n {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

func hasFamily(ps []netip.Prefix, v6 bool) bool {
	for _, p := range ps {
		if p.Addr().Is6() == v6 {
			return true
		}
	}
	return false
}

// npCounter is the named counter of rule name (DefaultRuleName for the
// default action).
func npCounter(name string) string { return "np_" + name }

// npEndpointSet is the set of gwi-* interface indexes of rule i's
// endpoints (filled by PairUp).
func npEndpointSet(i int) string { return fmt.Sprintf("np_ep_%d", i) }

// NFLOGPrefix is the log prefix of denials by rule name in the network
// policy of version (NetworkPolicy.Version): "np:<rule>@<version>", so a
// denied record names the policy that denied the packet even when it is
// read after a reload.
func NFLOGPrefix(rule, version string) string { return "np:" + rule + "@" + version }

// RuleFor names the rule that decides a new flow from endpoint ep with
// protocol proto from src to dst:dport: the first rule that matches, or
// DefaultRuleName. It evaluates the same criteria as the nftables rules
// (flow records name the rule of an allowed flow with it: conntrack's
// destroy events carry no labels). "" when no policy is active.
// resolved reports whether a is a current address of a domain name (nil:
// none is).
func (p *NetworkPolicy) RuleFor(ep uint64, proto uint8, src, dst netip.Addr, dport uint16, resolved func(name string, a netip.Addr) bool) string {
	if !p.active() {
		return ""
	}
	src, dst = src.Unmap(), dst.Unmap()
	for i := range p.Rules {
		if p.Rules[i].matches(ep, proto, src, dst, dport, resolved) {
			return p.Rules[i].Name
		}
	}
	return DefaultRuleName
}

func (r *NetRule) matches(ep uint64, proto uint8, src, dst netip.Addr, dport uint16, resolved func(string, netip.Addr) bool) bool {
	if len(r.endpoints) > 0 && !slices.Contains(r.endpoints, ep) {
		return false
	}
	if len(r.Clients) > 0 && !slices.ContainsFunc(r.Clients, func(p netip.Prefix) bool { return p.Contains(src) }) {
		return false
	}
	if len(r.Destinations)+len(r.Domains) > 0 {
		in := slices.ContainsFunc(r.Destinations, func(p netip.Prefix) bool { return p.Contains(dst) })
		if !in && resolved != nil {
			in = slices.ContainsFunc(r.Domains, func(n string) bool { return resolved(n, dst) })
		}
		if !in {
			return false
		}
	}
	switch r.Protocol {
	case ProtoTCP:
		if proto != unix.IPPROTO_TCP {
			return false
		}
	case ProtoUDP:
		if proto != unix.IPPROTO_UDP {
			return false
		}
	case ProtoICMP:
		if proto != unix.IPPROTO_ICMP {
			return false
		}
	case ProtoICMPv6:
		if proto != unix.IPPROTO_ICMPV6 {
			return false
		}
	}
	if len(r.Ports) > 0 && !slices.ContainsFunc(r.Ports, func(pr policy.PortRange) bool { return dport >= pr.Lo && dport <= pr.Hi }) {
		return false
	}
	return true
}

// npDomainSet is rule i's set of resolved addresses of one family.
func npDomainSet(i int, v6 bool) string {
	if v6 {
		return fmt.Sprintf("np_dom6_%d", i)
	}
	return fmt.Sprintf("np_dom4_%d", i)
}

// npDomainSetOf is a domain set and the names whose addresses it holds.
type npDomainSetOf struct {
	name    string
	v6      bool
	domains []string
}

// anonSet is a constant anonymous set of a policy rule; the placeholder
// name in the rule's Lookup is replaced by the kernel-facing name and ID
// once AddSet has assigned them (install).
type anonSet struct {
	set   *nftables.Set
	elems []nftables.SetElement
	text  string
}

// prefixElems turns prefixes of one family into interval elements,
// merged so none overlap (the kernel rejects overlapping intervals).
func prefixElems(ps []netip.Prefix) ([]nftables.SetElement, string) {
	type rng struct{ lo, hi netip.Addr }
	var rs []rng
	var txt []string
	for _, p := range ps {
		p = p.Masked()
		txt = append(txt, p.String())
		rs = append(rs, rng{p.Addr(), lastAddr(p)})
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].lo.Less(rs[j].lo) })
	var merged []rng
	for _, r := range rs {
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			if next := last.hi.Next(); !next.IsValid() || r.lo.Compare(next) <= 0 {
				if r.hi.Compare(last.hi) > 0 {
					last.hi = r.hi
				}
				continue
			}
		}
		merged = append(merged, r)
	}
	var out []nftables.SetElement
	for _, r := range merged {
		out = append(out, nftables.SetElement{Key: r.lo.AsSlice()})
		if end := r.hi.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out, strings.Join(txt, ", ")
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func portElems(prs []policy.PortRange) ([]nftables.SetElement, string) {
	type rng struct{ lo, hi uint32 }
	var rs []rng
	var txt []string
	for _, p := range prs {
		rs = append(rs, rng{uint32(p.Lo), uint32(p.Hi)})
		txt = append(txt, p.String())
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].lo < rs[j].lo })
	var merged []rng
	for _, r := range rs {
		if n := len(merged); n > 0 && r.lo <= merged[n-1].hi+1 {
			merged[n-1].hi = max(merged[n-1].hi, r.hi)
			continue
		}
		merged = append(merged, r)
	}
	var out []nftables.SetElement
	for _, r := range merged {
		out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(uint16(r.lo))})
		if r.hi < 65535 {
			out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(uint16(r.hi + 1)), IntervalEnd: true})
		}
	}
	return out, strings.Join(txt, ", ")
}

// addNetworkPolicy appends the policy's rules to filter_forward_tunnel (after
// the guards) and its sets to rs. add is buildRuleset's rule adder.
func (s *Steerer) addNetworkPolicy(rs *ruleset, add func(chain, text string, e ...expr.Any)) {
	c := &s.cfg
	np := &c.NetworkPolicy
	t := rs.table
	version := np.Version()
	rs.npCounters = append(rs.npCounters, npCounter(DefaultRuleName))
	add(chainFwdTun, fmt.Sprintf("ct state established,related counter name %s accept", ctrForwarded),
		cat(ctStateIn(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), objref(ctrForwarded), accept())...)

	anon := func(key nftables.SetDatatype, interval bool, elems []nftables.SetElement, text string) *expr.Lookup {
		placeholder := fmt.Sprintf("np_anon_%d", len(rs.anon))
		st := &nftables.Set{Table: t, Anonymous: true, Constant: true, Interval: interval, KeyType: key}
		rs.anon[placeholder] = &anonSet{set: st, elems: elems, text: text}
		rs.anonOrder = append(rs.anonOrder, placeholder)
		return &expr.Lookup{SourceRegister: 1, SetName: placeholder}
	}
	// verdicts are the rule endings for action on traffic of protocol
	// proto: one, or for reject of any protocol two (a TCP reset for TCP,
	// first; ICMP administratively prohibited for the rest).
	type ending struct {
		match []expr.Any
		e     []expr.Any
		txt   string
	}
	verdicts := func(name, action, proto string, id uint16) []ending {
		if action == NetAllow {
			// forwarded keeps counting every forwarded packet (new and
			// established), as it does without a policy. The rule's id
			// goes into the conntrack mark (ruleid.go): flow records
			// read it from the destroy event.
			var e []expr.Any
			txt := ""
			if rs.idsOK && id != 0 {
				e = ctMarkSetField(c.ruleMask(), c.ruleMark(id))
				txt = fmt.Sprintf("ct mark set ct mark & %#x | %#x ", ^c.ruleMask(), c.ruleMark(id))
			}
			e = cat(e, objref(npCounter(name)), objref(ctrForwarded), accept())
			return []ending{{e: e, txt: txt + "counter name " + npCounter(name) + " counter name " + ctrForwarded + " accept"}}
		}
		e := objref(npCounter(name))
		txt := "counter name " + npCounter(name)
		if np.LogGroup != 0 {
			e = append(e, &expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: np.LogGroup, Data: []byte(NFLOGPrefix(name, version))})
			txt += fmt.Sprintf(" log group %d prefix %q", np.LogGroup, NFLOGPrefix(name, version))
		}
		if action != NetReject {
			return []ending{{e: cat(e, drop()), txt: txt + " drop"}}
		}
		rst := ending{e: cat(e, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}), txt: txt + " reject with tcp reset"}
		icmp := ending{e: cat(e, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}),
			txt: txt + " reject with icmpx admin-prohibited"}
		switch proto {
		case ProtoTCP:
			return []ending{rst}
		case "", ProtoAny:
			rst.match, rst.txt = l4proto(unix.IPPROTO_TCP), "meta l4proto tcp "+rst.txt
			return []ending{rst, icmp}
		}
		return []ending{icmp}
	}
	for i := range np.Rules {
		r := &np.Rules[i]
		rs.npCounters = append(rs.npCounters, npCounter(r.Name))
		var base []expr.Any
		text := ""
		if len(r.Endpoints) > 0 {
			name := npEndpointSet(i)
			rs.sets[name] = &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeIFIndex}
			rs.setVals[name] = nil
			rs.npEndpointSets = append(rs.npEndpointSets, npEndpointSetOf{name: name, endpoints: r.endpoints})
			base = append(base, lookup(setTunnels, rs.sets, false)[0], &expr.Lookup{SourceRegister: 1, SetName: name})
			text += fmt.Sprintf(" iif @%s", name)
		}
		// One nft rule per address family the rule's CIDRs need, and per
		// kind of destination (CIDRs, or the domain set the resolver
		// fills: either may match).
		type fam struct {
			v6       bool
			clients  []netip.Prefix
			dsts     []netip.Prefix
			domSet   string // domain set of this family instead of dsts
			familyOK bool
		}
		hasDst := len(r.Destinations)+len(r.Domains) > 0
		var fams []fam
		if len(r.Clients) == 0 && !hasDst {
			fams = []fam{{familyOK: false}}
		} else {
			for _, v6 := range []bool{false, true} {
				if v6 && !c.IPv6 {
					continue
				}
				f := fam{v6: v6, familyOK: true}
				for _, p := range r.Clients {
					if p.Addr().Is6() == v6 {
						f.clients = append(f.clients, p)
					}
				}
				for _, p := range r.Destinations {
					if p.Addr().Is6() == v6 {
						f.dsts = append(f.dsts, p)
					}
				}
				if len(r.Clients) > 0 && len(f.clients) == 0 {
					continue
				}
				if len(f.dsts) > 0 || !hasDst {
					fams = append(fams, f)
				}
				if len(r.Domains) > 0 {
					name, typ := npDomainSet(i, v6), nftables.TypeIPAddr
					if v6 {
						typ = nftables.TypeIP6Addr
					}
					rs.sets[name] = &nftables.Set{Table: t, Name: name, KeyType: typ, HasTimeout: true}
					rs.npDomainSets = append(rs.npDomainSets, npDomainSetOf{name: name, v6: v6, domains: r.Domains})
					fams = append(fams, fam{v6: v6, clients: f.clients, domSet: name, familyOK: true})
				}
			}
		}
		for _, f := range fams {
			e := append([]expr.Any(nil), base...)
			txt := text
			if f.familyOK {
				ipn, typ, fp, off, n := "ip", nftables.TypeIPAddr, byte(unix.NFPROTO_IPV4), uint32(12), uint32(4)
				if f.v6 {
					ipn, typ, fp, off, n = "ip6", nftables.TypeIP6Addr, unix.NFPROTO_IPV6, 8, 16
				}
				e = append(e, nfproto(fp)...)
				if len(f.clients) > 0 {
					elems, t := prefixElems(f.clients)
					e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}, anon(typ, true, elems, t))
					txt += fmt.Sprintf(" %s saddr { %s }", ipn, t)
				}
				if len(f.dsts) > 0 {
					elems, t := prefixElems(f.dsts)
					e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off + n, Len: n}, anon(typ, true, elems, t))
					txt += fmt.Sprintf(" %s daddr { %s }", ipn, t)
				}
				if f.domSet != "" {
					e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off + n, Len: n}, &expr.Lookup{SourceRegister: 1, SetName: f.domSet})
					txt += fmt.Sprintf(" %s daddr @%s", ipn, f.domSet)
				}
			}
			switch r.Protocol {
			case ProtoTCP, ProtoUDP, ProtoICMP, ProtoICMPv6:
				p := map[string]byte{ProtoTCP: unix.IPPROTO_TCP, ProtoUDP: unix.IPPROTO_UDP, ProtoICMP: unix.IPPROTO_ICMP, ProtoICMPv6: unix.IPPROTO_ICMPV6}[r.Protocol]
				e = append(e, l4proto(p)...)
				txt += " meta l4proto " + r.Protocol
			}
			if len(r.Ports) > 0 {
				elems, t := portElems(r.Ports)
				e = append(e, tcpDport()...)
				e = append(e, anon(nftables.TypeInetService, true, elems, t))
				txt += fmt.Sprintf(" th dport { %s }", t)
			}
			var id uint16
			if rs.idsOK {
				id = rs.ids.rules[i]
			}
			for _, v := range verdicts(r.Name, r.Action, r.Protocol, id) {
				add(chainFwdTun, strings.TrimPrefix(txt+" "+v.txt, " "), cat(e, v.match, v.e)...)
			}
		}
	}
	def := np.DefaultAction
	if def == "" {
		def = NetAllow
	}
	for _, v := range verdicts(DefaultRuleName, def, ProtoAny, rs.ids.def) {
		add(chainFwdTun, v.txt, cat(v.match, v.e)...)
	}
}

// npEndpointSetOf is a rule's endpoint set and the endpoint ids whose
// tunnels' gwi-* indexes belong in it.
type npEndpointSetOf struct {
	name      string
	endpoints []uint64
}

// npEndpointElems are the elements of every endpoint set for the live
// pairs. Caller holds mu.
func (s *Steerer) npEndpointElems() map[string][]nftables.SetElement {
	out := map[string][]nftables.SetElement{}
	for _, es := range s.rs.npEndpointSets {
		var elems []nftables.SetElement
		for _, p := range s.pairs {
			for _, ep := range es.endpoints {
				if p.EndpointID == ep {
					elems = append(elems, nftables.SetElement{Key: elemIfIndex(p.InIndex)})
					break
				}
			}
		}
		out[es.name] = elems
	}
	return out
}

// resolveAnon gives the anonymous sets their kernel-facing names: after
// AddSet assigned each its ID, every Lookup naming a placeholder is pointed
// at it.
func (rs *ruleset) resolveAnon() {
	for _, r := range rs.rules {
		for _, e := range r.exprs {
			l, ok := e.(*expr.Lookup)
			if !ok {
				continue
			}
			// After the first install the Lookup already carries the
			// set's name and ID, which AddSet keeps on reinstalls.
			if a, ok := rs.anon[l.SetName]; ok {
				l.SetName, l.SetID = a.set.Name, a.set.ID
			}
		}
	}
}

func ctStateIn(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(bits), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
	}
}

// npEndpointSetsOf names the endpoint sets endpoint ep belongs in. Caller
// holds mu.
func (s *Steerer) npEndpointSetsOf(ep uint64) []string {
	var out []string
	for _, es := range s.rs.npEndpointSets {
		for _, e := range es.endpoints {
			if e == ep {
				out = append(out, es.name)
				break
			}
		}
	}
	return out
}

// explainNetworkPolicy summarises the network policy for check --explain
// (the rules themselves are in filter_forward_tunnel above).
func (s *Steerer) explainNetworkPolicy(np *NetworkPolicy) string {
	var b strings.Builder
	b.WriteString("\n## network policy (forwarded traffic that is not intercepted; in filter_forward_tunnel above)\n")
	if !np.active() {
		b.WriteString("# no rules and default_action allow: every forwarded flow passes (only QUIC and guard ranges dropped)\n")
		return b.String()
	}
	def := np.DefaultAction
	if def == "" {
		def = NetAllow
	}
	fmt.Fprintf(&b, "# order: established/related accept (replies, ICMP errors of allowed flows), then %d rule(s), first match wins, then default_action %s\n", len(np.Rules), def)
	fmt.Fprintf(&b, "# intercepted TCP ports %v (HTTP) and %v (TLS) never reach this chain: the proxy's policy decides them\n", s.cfg.HTTPPorts, s.cfg.TLSPorts)
	for i, r := range np.Rules {
		proto := r.Protocol
		if proto == "" {
			proto = ProtoAny
		}
		fmt.Fprintf(&b, "# %d. %s %s proto=%s", i+1, r.Name, r.Action, proto)
		if len(r.Endpoints) > 0 {
			fmt.Fprintf(&b, " endpoints=%v", r.Endpoints)
		}
		if len(r.Clients) > 0 {
			fmt.Fprintf(&b, " clients=%v", r.Clients)
		}
		if len(r.Destinations) > 0 {
			fmt.Fprintf(&b, " destinations=%v", r.Destinations)
		}
		if len(r.Domains) > 0 {
			fmt.Fprintf(&b, " domains=%v", r.Domains)
		}
		if len(r.Ports) > 0 {
			fmt.Fprintf(&b, " ports=%v", r.Ports)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "# policy_version %s (flow records carry it)\n", np.Version())
	if np.LogGroup != 0 {
		fmt.Fprintf(&b, "# denied packets are logged to NFLOG group %d (prefix np:<rule>@<policy_version>) for flow records\n", np.LogGroup)
	}
	return b.String()
}
