//go:build linux

package steer

import (
	"fmt"
	"sort"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Explain lists, for the configured mode, the nftables rules, the policy
// routing (base and per live tunnel, or an example tunnel before any is up)
// and the sysctls with their current values. The nft text is generated from
// the same specs that are installed, so it cannot drift from the kernel.
func (s *Steerer) Explain() string {
	s.mu.Lock()
	egress := s.egress
	rs := s.rs
	pairs := make([]tunnel.Pair, 0, len(s.pairs))
	for _, p := range s.pairs {
		pairs = append(pairs, p)
	}
	lo := s.loIndex
	np := s.cfg.NetworkPolicy
	s.mu.Unlock()
	if egress == "" && !s.cfg.tunnelMode() {
		egress = s.cfg.EgressInterface
		if egress == "" {
			egress = "<default route interface>"
		}
	}
	if rs == nil {
		rs = s.buildRuleset(egress)
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i].Slot < pairs[j].Slot })

	var b strings.Builder
	c := &s.cfg
	fmt.Fprintf(&b, "# gwlbproxy steering, egress_mode %s", c.EgressMode)
	if c.tunnelMode() {
		b.WriteString(" (one-arm: everything returns into its tunnel; upstream keeps client ip:port)\n")
	} else {
		fmt.Fprintf(&b, " (two-arm: forwarded traffic masqueraded out %s; upstream from the appliance's address)\n", egress)
	}
	fmt.Fprintf(&b, "# marks: %#x = intercepted (local delivery), %#x+slot = tunnel slot; tables: %d = local delivery, %d+slot = tunnel slot\n",
		c.MarkBase, c.MarkBase, c.RouteTableBase, c.RouteTableBase)
	fmt.Fprintf(&b, "# conntrack mark: slot in bits %#x (max_tunnels %d), id of the network policy rule that allowed the flow in bits %#x (flow records read it); only mark & %#x is copied to packets\n\n",
		c.slotMask(), c.MaxTunnels, c.ruleMask(), c.routeMask())

	fmt.Fprintf(&b, "## nftables (one table, replaced atomically)\ntable inet %s {\n", c.TableName)
	for _, n := range append(append([]string(nil), counterNames...), rs.npCounters...) {
		fmt.Fprintf(&b, "  counter %s\n", n)
	}
	for _, name := range rs.setNames() {
		st := rs.sets[name]
		kind := "set"
		typ := st.KeyType.Name
		if st.IsMap {
			kind = "map"
			typ += " : " + st.DataType.Name
		}
		var elems []string
		for _, e := range rs.setVals[name] {
			if len(e.Key) == 2 {
				elems = append(elems, fmt.Sprint(uint16(e.Key[0])<<8|uint16(e.Key[1])))
			}
		}
		dyn := ""
		if name == setTunnels || name == mapTunnelMark || name == setTunnelMarks || name == setTunnelOwner {
			dyn = " # elements added by PairUp, removed by PairDown"
		}
		for _, ds := range rs.npDomainSets {
			if ds.name == name {
				kind, typ = "set", st.KeyType.Name+"; flags timeout"
				dyn = " # addresses of " + strings.Join(ds.domains, ", ") + " from the resolver, each timing out after its DNS TTL"
			}
		}
		for _, es := range rs.npEndpointSets {
			if es.name == name {
				var ids []string
				for _, e := range es.endpoints {
					ids = append(ids, policy.FormatEndpointID(e))
				}
				dyn = " # gwi-* of endpoints " + strings.Join(ids, ", ") + ", added by PairUp"
			}
		}
		fmt.Fprintf(&b, "  %s %s { type %s; elements = { %s } }%s\n", kind, name, typ, strings.Join(elems, ", "), dyn)
	}
	for _, cn := range rs.order {
		ch := rs.chains[cn]
		if ch.Hooknum == nil {
			fmt.Fprintf(&b, "  chain %s {  # regular chain: entered only by the goto/jump above that names it\n", cn)
		} else {
			fmt.Fprintf(&b, "  chain %s { type %s hook %s priority %d;\n", cn, ch.Type, hookName(uint32(*ch.Hooknum)), *ch.Priority)
		}
		for _, r := range rs.rules {
			if r.chain == cn {
				fmt.Fprintf(&b, "    %s\n", r.text)
			}
		}
		b.WriteString("  }\n")
	}
	b.WriteString("}\n")
	b.WriteString(s.explainNetworkPolicy(&np))
	b.WriteString("\n## policy routing\n")
	rules, routes := s.baseRoutesWithLo(lo)
	writeRouting(&b, rules, routes, "")
	example := len(pairs) == 0
	if example {
		pairs = []tunnel.Pair{{In: "gwi-<X>", Out: "gwo-<X>", Slot: 1}}
	}
	for _, p := range pairs {
		rules, routes := s.pairRoutes(p)
		note := ""
		if example {
			note = " (example: per tunnel, slot N)"
		}
		fmt.Fprintf(&b, "# tunnel %s/%s slot %d endpoint %017x%s\n", p.In, p.Out, p.Slot, p.EndpointID, note)
		writeRouting(&b, rules, routes, p.Out)
	}
	b.WriteString("\n## sysctls (wanted = current)\n")
	list := s.baseSysctls()
	for _, p := range pairs {
		list = append(list, pairSysctls(p.In, p.Out)...)
	}
	for _, sc := range list {
		fmt.Fprintf(&b, "%s = %s (now %s)  # %s\n", sc.key, sc.val, s.readSysctl(sc), sc.why)
	}
	b.WriteString("net.ipv4.tcp_fwmark_accept (not written)  # no effect here: the listeners carry SO_MARK mark_base, which accepted sockets inherit\n")
	return b.String()
}

// baseRoutesWithLo is baseRoutes for lo index lo. It takes mu: the
// re-assert loop reads loIndex concurrently.
func (s *Steerer) baseRoutesWithLo(lo int) ([]*netlink.Rule, []*netlink.Route) {
	s.mu.Lock()
	defer s.mu.Unlock()
	save := s.loIndex
	s.loIndex = lo
	r, rt := s.baseRoutes()
	s.loIndex = save
	return r, rt
}

func writeRouting(b *strings.Builder, rules []*netlink.Rule, routes []*netlink.Route, dev string) {
	for _, r := range rules {
		fam := "-4"
		if r.Family == unix.AF_INET6 {
			fam = "-6"
		}
		sel := ""
		if r.IifName != "" {
			sel = "iif " + r.IifName
		} else {
			sel = fmt.Sprintf("fwmark %#x", r.Mark)
		}
		fmt.Fprintf(b, "ip %s rule add priority %d %s lookup %d\n", fam, r.Priority, sel, r.Table)
	}
	for _, rt := range routes {
		fam := "-4"
		if rt.Family == unix.AF_INET6 {
			fam = "-6"
		}
		if rt.Type == unix.RTN_LOCAL {
			fmt.Fprintf(b, "ip %s route add local %s dev lo table %d\n", fam, rt.Dst, rt.Table)
		} else {
			fmt.Fprintf(b, "ip %s route add default dev %s table %d\n", fam, dev, rt.Table)
		}
	}
}

func hookName(h uint32) string {
	switch h {
	case unix.NF_INET_PRE_ROUTING:
		return "prerouting"
	case unix.NF_INET_LOCAL_IN:
		return "input"
	case unix.NF_INET_FORWARD:
		return "forward"
	case unix.NF_INET_LOCAL_OUT:
		return "output"
	case unix.NF_INET_POST_ROUTING:
		return "postrouting"
	}
	return fmt.Sprint(h)
}
