//go:build linux

package steer

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Self-repair. Someone else can take steering away at any time: an operator
// running `nft flush ruleset`, a config-management run that rewrites the
// ruleset or the ip rules, a firewall service restarted. Intercepted
// traffic is then dropped or forwarded uninspected until the appliance
// notices. Every sysctl_interval (and at once when Health finds something
// wrong) the Steerer compares the kernel with what it installed and puts
// back what differs:
//
//   - nftables: the table, its chains, the number of rules in each chain,
//     the counter objects and the elements of every set and map (the
//     per-tunnel elements from the live pairs). Any difference reinstalls
//     the whole table in one transaction, the same atomic replace as Start,
//     with the elements of the live pairs in the same batch; the counters
//     restart from zero;
//   - policy routing: every ip rule and route of the base table and of the
//     live pairs; missing ones are added back (existing ones untouched).
//
// Each repair is counted (Stats, gwlbproxy_steer_repairs_total) and logged
// once, with what was found. Health is red from the moment something is
// found missing until it is back.
//
// The listeners those rules deliver to repair themselves (relisten.go): a
// listener whose accept fails for good is re-opened on its address.

// drift is what differs between the kernel and what steer installed.
type drift struct {
	nft    []string // any entry: reinstall the table
	rules  []*netlink.Rule
	routes []*netlink.Route
}

func (d drift) empty() bool { return len(d.nft)+len(d.rules)+len(d.routes) == 0 }

func (d drift) String() string {
	parts := append([]string(nil), d.nft...)
	for _, r := range d.rules {
		parts = append(parts, fmt.Sprintf("ip %s rule priority %d table %d missing", famFlag(r.Family), r.Priority, r.Table))
	}
	for _, r := range d.routes {
		parts = append(parts, fmt.Sprintf("ip %s route %s table %d missing", famFlag(r.Family), r.Dst, r.Table))
	}
	return strings.Join(parts, "; ")
}

// wantRouting is every rule and route that should exist now. Caller holds mu.
func (s *Steerer) wantRouting() ([]*netlink.Rule, []*netlink.Route) {
	rules, routes := s.baseRoutes()
	for _, p := range s.pairs {
		r, rt := s.pairRoutes(p)
		rules = append(rules, r...)
		routes = append(routes, rt...)
	}
	return rules, routes
}

// wantElements is the content every set and map should have: the port sets
// from the configuration, the tunnel set and map from the live pairs.
// Keys (and map values) as bytes. Caller holds mu.
func (s *Steerer) wantElements() map[string]map[string]string {
	out := map[string]map[string]string{}
	for name, elems := range s.rs.setVals {
		m := map[string]string{}
		for _, e := range elems {
			m[string(e.Key)] = string(e.Val)
		}
		out[name] = m
	}
	tun, marks, live, owner := map[string]string{}, map[string]string{}, map[string]string{}, map[string]string{}
	for _, p := range s.pairs {
		k := string(elemIfIndex(p.InIndex))
		tun[k] = ""
		marks[k] = string(native32(s.cfg.tunnelMark(p.Slot)))
		live[string(native32(s.cfg.tunnelMark(p.Slot)))] = ""
		owner[string(s.cfg.ownerKey(p.InIndex, p.Slot))] = ""
	}
	out[setTunnels], out[mapTunnelMark] = tun, marks
	out[setTunnelMarks], out[setTunnelOwner] = live, owner
	for name, elems := range s.npEndpointElems() {
		m := map[string]string{}
		for _, e := range elems {
			m[string(e.Key)] = ""
		}
		out[name] = m
	}
	return out
}

// checkLocked compares the kernel with what is installed. An error means
// the kernel could not be asked. Caller holds mu; the steerer is running.
func (s *Steerer) checkLocked() (drift, error) {
	var d drift
	var err error
	if d.nft, err = s.nftDrift(); err != nil {
		return d, err
	}
	d.rules, d.routes, err = s.routingDrift()
	return d, err
}

func (s *Steerer) nftDrift() ([]string, error) {
	t := s.rs.table
	if _, err := s.nft.ListTableOfFamily(t.Name, t.Family); err != nil {
		// ENOENT is the usual answer; any other failure to read the table
		// is also best answered by installing it again.
		return []string{fmt.Sprintf("table inet %s missing (%v)", t.Name, err)}, nil
	}
	var out []string
	chains, err := s.nft.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	have := map[string]bool{}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == t.Name {
			have[c.Name] = true
		}
	}
	wantRules := map[string]int{}
	for _, r := range s.rs.rules {
		wantRules[r.chain]++
	}
	for _, name := range s.rs.order {
		if !have[name] {
			out = append(out, "chain "+name+" missing")
			continue
		}
		delete(have, name)
		rules, err := s.nft.GetRules(t, s.rs.chains[name])
		if err != nil {
			return nil, fmt.Errorf("rules of chain %s: %w", name, err)
		}
		if len(rules) != wantRules[name] {
			out = append(out, fmt.Sprintf("chain %s has %d rules, want %d", name, len(rules), wantRules[name]))
		}
	}
	for name := range have {
		out = append(out, "unexpected chain "+name)
	}
	for name, want := range s.wantElements() {
		elems, err := s.nft.GetSetElements(s.rs.sets[name])
		if err != nil {
			out = append(out, fmt.Sprintf("set %s unreadable (%v)", name, err))
			continue
		}
		got := make(map[string]string, len(elems))
		for _, e := range elems {
			got[string(e.Key)] = string(e.Val)
		}
		if !sameElements(got, want, s.rs.sets[name].IsMap) {
			out = append(out, fmt.Sprintf("set %s has %d elements, want %d (or different ones)", name, len(got), len(want)))
		}
	}
	objs, err := s.nft.GetNamedObjects(t)
	if err != nil {
		return nil, fmt.Errorf("counters: %w", err)
	}
	named := map[string]bool{}
	for _, o := range objs {
		if no, ok := o.(*nftables.NamedObj); ok {
			named[no.Name] = true
		}
	}
	for _, n := range append(append([]string(nil), counterNames...), s.rs.npCounters...) {
		if !named[n] {
			out = append(out, "counter "+n+" missing")
		}
	}
	return out, nil
}

func sameElements(got, want map[string]string, isMap bool) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		g, ok := got[k]
		if !ok || isMap && g != v {
			return false
		}
	}
	return true
}

func (s *Steerer) routingDrift() ([]*netlink.Rule, []*netlink.Route, error) {
	wantRules, wantRoutes := s.wantRouting()
	haveRules := map[int][]netlink.Rule{}
	haveRoutes := map[int][]netlink.Route{} // by table; one dump per family
	for _, fam := range s.families() {
		rs, err := s.nl.RuleList(fam)
		if err != nil {
			return nil, nil, fmt.Errorf("list rules: %w", err)
		}
		haveRules[fam] = rs
		routes, err := s.nl.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if s.ours(r.Table) {
				haveRoutes[r.Table] = append(haveRoutes[r.Table], r)
			}
		}
	}
	var missRules []*netlink.Rule
	for _, w := range wantRules {
		found := false
		for _, h := range haveRules[w.Family] {
			if h.Priority == w.Priority && h.Table == w.Table && h.Mark == w.Mark && h.IifName == w.IifName {
				found = true
				break
			}
		}
		if !found {
			missRules = append(missRules, w)
		}
	}
	var missRoutes []*netlink.Route
	for _, w := range wantRoutes {
		typ := w.Type
		if typ == 0 {
			typ = unix.RTN_UNICAST // what netlink installs for 0
		}
		found := false
		for _, h := range haveRoutes[w.Table] {
			if h.Family == w.Family && isDefault(h.Dst) && h.LinkIndex == w.LinkIndex && h.Type == typ {
				found = true
				break
			}
		}
		if !found {
			missRoutes = append(missRoutes, w)
		}
	}
	return missRules, missRoutes, nil
}

func famFlag(f int) string {
	if f == unix.AF_INET6 {
		return "-6"
	}
	return "-4"
}

func isDefault(n *net.IPNet) bool { return n == nil || n.IP.IsUnspecified() && isZeroMask(n.Mask) }

// repairLocked puts back what d names: routing first (as PairUp does: a
// packet must never be marked before its route exists), then the table.
// Caller holds mu.
func (s *Steerer) repairLocked(d drift) error {
	var errs []error
	if len(d.rules)+len(d.routes) > 0 {
		if err := s.addRouting(d.rules, d.routes); err != nil {
			errs = append(errs, err)
		} else {
			s.routingRepairs.Add(1)
		}
	}
	if len(d.nft) > 0 {
		if err := s.reinstallLocked(); err != nil {
			errs = append(errs, fmt.Errorf("nftables: %w", err))
		} else {
			s.nftRepairs.Add(1)
		}
	}
	return errors.Join(errs...)
}

// reinstallLocked replaces the table atomically, elements of the live pairs
// included. Caller holds mu.
func (s *Steerer) reinstallLocked() error {
	if err := s.rs.install(s.nft); err != nil {
		return err
	}
	var keys, marks, live, owner []nftables.SetElement
	for _, p := range s.pairs {
		keys = append(keys, nftables.SetElement{Key: elemIfIndex(p.InIndex)})
		marks = append(marks, nftables.SetElement{Key: elemIfIndex(p.InIndex), Val: native32(s.cfg.tunnelMark(p.Slot))})
		live = append(live, nftables.SetElement{Key: native32(s.cfg.tunnelMark(p.Slot))})
		owner = append(owner, nftables.SetElement{Key: s.cfg.ownerKey(p.InIndex, p.Slot)})
	}
	if len(keys) > 0 {
		if err := s.nft.SetAddElements(s.rs.sets[setTunnels], keys); err != nil {
			return err
		}
		if err := s.nft.SetAddElements(s.rs.sets[mapTunnelMark], marks); err != nil {
			return err
		}
		if err := s.nft.SetAddElements(s.rs.sets[setTunnelMarks], live); err != nil {
			return err
		}
		if err := s.nft.SetAddElements(s.rs.sets[setTunnelOwner], owner); err != nil {
			return err
		}
	}
	for name, elems := range s.npEndpointElems() {
		if len(elems) == 0 {
			continue
		}
		if err := s.nft.SetAddElements(s.rs.sets[name], elems); err != nil {
			return err
		}
	}
	if err := s.domainElemsLocked(time.Now()); err != nil {
		return err
	}
	if err := s.nft.Flush(); err != nil {
		return fmt.Errorf("table %s: %w", s.cfg.TableName, err)
	}
	return nil
}

// selfRepairLocked checks and, if needed, repairs; logs once per repair.
// Caller holds mu; the steerer is running.
func (s *Steerer) selfRepairLocked() {
	d, err := s.checkLocked()
	if err != nil {
		s.repairFailures.Add(1)
		s.log.Warn("checking steering", "err", err)
		return
	}
	if d.empty() {
		return
	}
	if err := s.repairLocked(d); err != nil {
		s.repairFailures.Add(1)
		if msg := d.String() + err.Error(); msg != s.lastRepair { // once, not every interval
			s.lastRepair = msg
			s.log.Error("steering altered by someone else; repair failed, retrying every sysctl_interval", "found", d.String(), "err", err)
		}
		return
	}
	s.lastRepair = ""
	s.log.Warn("steering altered by someone else; repaired", "found", d.String(), "tunnels", len(s.pairs))
}

// kickRepair asks the re-assert loop for a check now (Health found
// something wrong). Never blocks.
func (s *Steerer) kickRepair() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}
