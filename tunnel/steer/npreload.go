//go:build linux

package steer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// Reloading the network policy (SIGHUP, `systemctl reload`).
//
// SetNetworkPolicy validates the new policy, resolves the domain names it
// adds, then replaces the whole table in ONE nftables transaction: the
// same atomic replace as Start and repair (delete and re-create the table
// with every chain, set, counter and the live tunnels' and domains'
// elements in one batch, committed by the kernel at once or not at all).
// No packet sees a moment without rules or with half of the new ones. The
// counters keep their values (passed as initial values in the same batch;
// packets counted between the read and the commit are lost to them). If
// the kernel refuses the batch, the old table, configuration and rule ids
// stay in force and the error names network_policy.
//
// Established flows: every forwarded flow the old policy allowed is
// re-evaluated against the new policy right after the swap, from the
// conntrack table (a dump filtered by our mark):
//   - still allowed by the same rule (same definition): kept;
//   - allowed by another rule: kept, and its conntrack mark is given the
//     new rule's id (its record names the new rule);
//   - denied now: its conntrack entry is deleted, which ends its flow
//     record (with the counts so far); its next packet is a new flow, which
//     the new policy drops (or rejects). A revoked allow takes effect on
//     running sessions, not only on new ones: what an operator removing
//     access expects.
//
// A flow whose allowing rule matched by a domain name keeps matching that
// name while the rule is in the new policy, even if the name's answers
// changed since (a rotating CDN answer does not cut a running download).
// Intercepted flows (the proxy's) and the proxy's upstream connections
// are not touched: the proxy's own reload decides those.

// NetReload is what a network policy reload did.
type NetReload struct {
	Version string `json:"policy_version"`
	Changed bool   `json:"changed"`
	// Established flows re-evaluated: kept with the same rule, moved to
	// another allowing rule, cut because the new policy denies them.
	FlowsKept    int  `json:"flows_kept"`
	FlowsMoved   int  `json:"flows_moved"`
	FlowsCut     int  `json:"flows_cut"`
	FlowsFailed  int  `json:"flows_failed,omitempty"` // update/delete refused (flow ended meanwhile)
	LogGroupKept bool `json:"log_group_kept,omitempty"`
}

// NetworkPolicy returns the network policy in force.
func (s *Steerer) NetworkPolicy() NetworkPolicy {
	s.mu.Lock()
	defer s.mu.Unlock()
	np := s.cfg.NetworkPolicy
	np.Rules = slices.Clone(np.Rules)
	return np
}

// SetNetworkPolicy puts np in force (see above). Errors start with
// "network_policy" and name the field when np is invalid. The NFLOG
// group is bound at start: a different log_group is ignored (kept) and
// reported in NetReload.LogGroupKept.
func (s *Steerer) SetNetworkPolicy(ctx context.Context, np NetworkPolicy) (NetReload, error) {
	var res NetReload
	np.Rules = slices.Clone(np.Rules)
	s.mu.Lock()
	if !s.started || s.closed {
		s.mu.Unlock()
		return res, errors.New("network_policy: steering not running")
	}
	cfg := s.cfg
	s.mu.Unlock()
	if np.LogGroup != cfg.NetworkPolicy.LogGroup {
		np.LogGroup, res.LogGroupKept = cfg.NetworkPolicy.LogGroup, true
	}
	oldVersion := cfg.NetworkPolicy.Version()
	cfg.NetworkPolicy = np
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	np = cfg.NetworkPolicy // validated: parsed endpoints, normalised domains
	res.Version = np.Version()
	if res.Version == oldVersion {
		return res, nil
	}
	res.Changed = true
	if policyHasDomains(&np) && s.resolver == nil {
		return res, errors.New("network_policy: rules have domains but no resolver is configured")
	}
	// Resolve names the old policy did not have before the swap, so
	// their rules match from the first packet.
	fresh := map[string]*domainState{}
	now := time.Now()
	s.dom.mu.Lock()
	for _, r := range np.Rules {
		for _, n := range r.Domains {
			if _, ok := s.dom.names[n]; !ok {
				fresh[n] = &domainState{addrs: map[netip.Addr]time.Time{}}
			}
		}
	}
	s.dom.mu.Unlock()
	for n, d := range fresh {
		lctx, cancel := context.WithTimeout(ctx, domainLookupLimit)
		addrs, ttl, err := s.resolver.LookupNetIP(lctx, n)
		cancel()
		s.dom.resolves.Add(1)
		if err != nil || len(addrs) == 0 {
			s.dom.failures.Add(1)
			s.log.Warn("network policy reload: resolving a new domain failed; its rule matches nothing until it resolves", "name", n, "err", err)
			continue // due at once in the domain loop
		}
		ttl = min(max(ttl, minDomainTTL), maxDomainTTL)
		for _, a := range addrs {
			d.addrs[a.Unmap()] = now.Add(ttl)
		}
		d.next = now.Add(ttl - max(ttl/4, refreshLead))
	}

	s.mu.Lock()
	if !s.started || s.closed {
		s.mu.Unlock()
		return res, errors.New("network_policy: steering not running")
	}
	oldNP, oldRS := s.cfg.NetworkPolicy, s.rs
	init, _ := s.counters()
	s.cfg.NetworkPolicy = np
	rs := s.buildRuleset(s.egress)
	rs.counterInit = init
	s.dom.mu.Lock()
	oldNames := s.dom.names
	names := map[string]*domainState{}
	for _, r := range np.Rules {
		for _, n := range r.Domains {
			if d, ok := oldNames[n]; ok {
				names[n] = d
			} else {
				names[n] = fresh[n]
			}
		}
	}
	s.dom.names = names
	s.dom.mu.Unlock()
	s.rs = rs
	if err := s.reinstallLocked(); err != nil {
		// The kernel refused the batch: nothing of it was applied.
		s.cfg.NetworkPolicy, s.rs = oldNP, oldRS
		s.dom.mu.Lock()
		s.dom.names = oldNames
		s.dom.mu.Unlock()
		s.mu.Unlock()
		return res, fmt.Errorf("network_policy: nftables refused the new rules (the previous ones stay in force): %w", err)
	}
	if rs.idsOK {
		s.ids.commit(&s.cfg.NetworkPolicy, rs.ids, res.Version)
	}
	s.npVersion.Store(&res.Version)
	if len(names) > 0 && !s.domRunning {
		s.domRunning = true
		s.domWG.Add(1)
		go s.domainLoop(s.rctx)
	}
	s.mu.Unlock()
	s.log.Info("network policy reloaded", "policy_version", res.Version, "previous", oldVersion, "rules", len(np.Rules), "default", np.DefaultAction)

	if err := s.reevaluate(&np, rs, &res); err != nil {
		// The new rules are in force; only the clean-up of established
		// flows failed (they run on under the rules they began with).
		s.log.Warn("network policy reload: re-evaluating established flows", "err", err)
	}
	return res, nil
}

func policyHasDomains(np *NetworkPolicy) bool {
	for _, r := range np.Rules {
		if len(r.Domains) > 0 {
			return true
		}
	}
	return false
}

// reevaluate applies the new policy np (installed as rs) to the
// established forwarded flows (see the top of this file).
func (s *Steerer) reevaluate(np *NetworkPolicy, rs *ruleset, res *NetReload) error {
	var c *conntrack.Conn
	var cfgNL *netlink.Config
	if s.ns.fd >= 0 {
		cfgNL = &netlink.Config{NetNS: s.ns.fd}
	}
	c, err := conntrack.Dial(cfgNL)
	if err != nil {
		return fmt.Errorf("conntrack: %w", err)
	}
	defer c.Close()
	flows, err := c.DumpFilter(conntrack.NewFilter().Mark(s.cfg.MarkBase).MarkMask(markMask), nil)
	if err != nil {
		return fmt.Errorf("conntrack dump: %w", err)
	}
	intercepted := append(slices.Clone(s.cfg.HTTPPorts), s.cfg.TLSPorts...)
	ruleMask, shift := s.cfg.ruleMask(), s.cfg.slotBits()
	for i := range flows {
		f := &flows[i]
		o := f.TupleOrig
		if f.Zone != 0 || f.Mark == s.cfg.MarkBase || f.Mark&s.cfg.slotMask() == 0 {
			continue // the proxy's upstream, or not from a tunnel
		}
		if o.Proto.Protocol == unix.IPPROTO_TCP && slices.Contains(intercepted, o.Proto.DestinationPort) {
			continue // intercepted: the proxy's
		}
		oldID := uint16((f.Mark & ruleMask) >> shift)
		ep, _ := s.EndpointOfMark(f.Mark)
		// A flow keeps matching the domains of the rule that allowed it
		// while that rule is in force.
		var own []string
		if name, _, ok := s.ids.lookup(oldID); ok && s.ids.isLive(oldID) {
			for _, r := range np.Rules {
				if r.Name == name {
					own = r.Domains
				}
			}
		}
		resolved := func(n string, a netip.Addr) bool {
			return slices.Contains(own, n) || s.resolvedNow(n, a)
		}
		dport := o.Proto.DestinationPort
		if o.Proto.ICMPv4 || o.Proto.ICMPv6 {
			dport = 0
		}
		rule := np.RuleFor(ep, o.Proto.Protocol, o.IP.SourceAddress, o.IP.DestinationAddress, dport, resolved)
		action, newID := np.DefaultAction, rs.ids.def
		if action == "" {
			action = NetAllow
		}
		for j, r := range np.Rules {
			if r.Name == rule {
				action, newID = r.Action, 0
				if rs.idsOK {
					newID = rs.ids.rules[j]
				}
			}
		}
		switch {
		case action != NetAllow:
			if err := c.Delete(conntrack.Flow{TupleOrig: o, Zone: f.Zone}); err != nil {
				res.FlowsFailed++
				continue
			}
			res.FlowsCut++
		case newID == oldID || !rs.idsOK:
			res.FlowsKept++
		default:
			mark := f.Mark&^ruleMask | s.cfg.ruleMark(newID)
			if err := c.Update(conntrack.Flow{TupleOrig: o, Mark: mark}); err != nil {
				res.FlowsFailed++
				continue
			}
			res.FlowsMoved++
		}
	}
	if res.FlowsCut+res.FlowsMoved+res.FlowsFailed > 0 {
		s.log.Info("network policy reload: established flows re-evaluated", "kept", res.FlowsKept, "moved", res.FlowsMoved, "cut", res.FlowsCut, "failed", res.FlowsFailed)
	}
	return nil
}
