//go:build linux

package steer

import (
	"errors"
	"fmt"
	"net"

	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func (s *Steerer) families() []int {
	if s.cfg.IPv6 {
		return []int{unix.AF_INET, unix.AF_INET6}
	}
	return []int{unix.AF_INET}
}

func anyNet(family int) *net.IPNet {
	if family == unix.AF_INET6 {
		return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
}

func u32p(v uint32) *uint32 { return &v }

// baseRoutes: local delivery of every packet carrying MarkBase (TPROXY'd
// packets and packets of transparent sockets). The rule sits before the
// per-tunnel iif rules, or intercepted SYNs would go straight back out.
func (s *Steerer) baseRoutes() ([]*netlink.Rule, []*netlink.Route) {
	var rules []*netlink.Rule
	var routes []*netlink.Route
	for _, fam := range s.families() {
		r := netlink.NewRule()
		r.Family = fam
		r.Priority = s.cfg.RulePriority
		r.Mark = s.cfg.MarkBase
		r.Mask = u32p(0xffffffff)
		r.Table = int(s.cfg.RouteTableBase)
		rules = append(rules, r)
		routes = append(routes, &netlink.Route{
			Family: fam, Dst: anyNet(fam), Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST,
			LinkIndex: s.loIndex, Table: int(s.cfg.RouteTableBase),
		})
	}
	return rules, routes
}

// pairRoutes: the tunnel's table sends everything to gwo-*; its mark selects
// that table (proxy replies, NAT replies, ICMP errors); in tunnel mode the
// forwarded traffic from gwi-* uses it too.
func (s *Steerer) pairRoutes(p tunnel.Pair) ([]*netlink.Rule, []*netlink.Route) {
	var rules []*netlink.Rule
	var routes []*netlink.Route
	table := s.cfg.tunnelTable(p.Slot)
	for _, fam := range s.families() {
		r := netlink.NewRule()
		r.Family = fam
		r.Priority = s.cfg.RulePriority + 1
		r.Mark = s.cfg.tunnelMark(p.Slot)
		r.Mask = u32p(0xffffffff)
		r.Table = table
		rules = append(rules, r)
		if s.cfg.tunnelMode() {
			r := netlink.NewRule()
			r.Family = fam
			r.Priority = s.cfg.RulePriority + 2
			r.IifName = p.In
			r.Table = table
			rules = append(rules, r)
		}
		routes = append(routes, &netlink.Route{
			Family: fam, Dst: anyNet(fam), LinkIndex: p.OutIndex, Scope: netlink.SCOPE_LINK, Table: table,
		})
	}
	return rules, routes
}

func (s *Steerer) addRouting(rules []*netlink.Rule, routes []*netlink.Route) error {
	for _, rt := range routes {
		if err := s.nl.RouteReplace(rt); err != nil {
			return fmt.Errorf("route %s table %d: %w", rt.Dst, rt.Table, err)
		}
	}
	for _, r := range rules {
		// Delete first so a restart never leaves a duplicate.
		_ = s.nl.RuleDel(r)
		if err := s.nl.RuleAdd(r); err != nil {
			return fmt.Errorf("rule %s: %w", r, err)
		}
	}
	return nil
}

func (s *Steerer) delRouting(rules []*netlink.Rule, routes []*netlink.Route) error {
	var errs []error
	for _, r := range rules {
		if err := s.nl.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("rule %s: %w", r, err))
		}
	}
	for _, rt := range routes {
		if err := s.nl.RouteDel(rt); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("route table %d: %w", rt.Table, err))
		}
	}
	return errors.Join(errs...)
}

// ours reports whether a routing table number is in our range.
func (s *Steerer) ours(table int) bool {
	return table >= int(s.cfg.RouteTableBase) && table <= int(s.cfg.RouteTableBase)+maxSlot
}

// sweepRouting removes every rule and route that points into our table
// range: leftovers of a crashed run at Start, everything at Close.
func (s *Steerer) sweepRouting() error {
	var errs []error
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := s.nl.RuleList(fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("list rules: %w", err))
			continue
		}
		for i := range rules {
			if s.ours(rules[i].Table) {
				if err := s.nl.RuleDel(&rules[i]); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("rule %s: %w", &rules[i], err))
				}
			}
		}
		routes, err := s.nl.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, fmt.Errorf("list routes: %w", err))
			continue
		}
		for i := range routes {
			if s.ours(routes[i].Table) {
				if err := s.nl.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("route table %d: %w", routes[i].Table, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// defaultRouteInterface is the interface of the IPv4 default route.
func (s *Steerer) defaultRouteInterface() (string, error) {
	routes, err := s.nl.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) && r.LinkIndex > 0 {
			l, err := s.nl.LinkByIndex(r.LinkIndex)
			if err != nil {
				return "", fmt.Errorf("default route link %d: %w", r.LinkIndex, err)
			}
			return l.Attrs().Name, nil
		}
	}
	return "", errors.New("no IPv4 default route")
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}
