//go:build linux

package steer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
)

// Domain names in network rules. Each name of a rule is resolved by a
// Resolver (proxy/resolve's, the same resolver and cache as destination
// binding) and its addresses are kept in the rule's nftables sets
// (np_dom4_<i>, np_dom6_<i>) as elements whose timeout is the answer's
// TTL. A name is resolved again when three quarters of its TTL have
// passed, so a live name's elements never lapse. When resolution fails,
// the last answers stay until their elements time out, then the name
// matches nothing: the rule fails closed. Failures and lapsed addresses
// are counted (Stats).
//
// Element timeouts are refreshed by deleting and re-adding the element in
// one transaction: kernels before 6.10 ignore a new timeout on an element
// that exists.

// Resolver resolves a name to its A and AAAA addresses and the TTL to keep
// them for. *resolve.Resolver (proxy/resolve) implements it; the
// application passes it with SetResolver.
type Resolver interface {
	LookupNetIP(ctx context.Context, name string) ([]netip.Addr, time.Duration, error)
}

// Bounds on how long an answer is kept and how often a name is asked for.
const (
	minDomainTTL      = 5 * time.Second
	maxDomainTTL      = 24 * time.Hour
	domainRetry       = 5 * time.Second // after a failure
	domainLookupLimit = 5 * time.Second
	// refreshLead is the least time before its elements time out that a
	// name is resolved again (a quarter of the TTL when longer): with the
	// 5 s floor a quarter left too little for the 500 ms tick plus the
	// lookup, and the elements lapsed before the refresh.
	refreshLead = 2500 * time.Millisecond
	// presentMargin: an element whose timeout is nearer than this may
	// have lapsed by the time the transaction commits.
	presentMargin = 100 * time.Millisecond
)

// domainState is one name's current answers.
type domainState struct {
	addrs map[netip.Addr]time.Time // address -> when its elements time out
	next  time.Time                // next resolution
	fails int                      // consecutive failures
}

// domains holds the answers of every name in the network policy.
type domains struct {
	mu    sync.Mutex
	names map[string]*domainState

	resolves, failures, lapsed atomic.Uint64
}

// SetResolver sets the resolver for domain names in network rules. Call
// it before Start; a policy with domains and no resolver fails Start.
func (s *Steerer) SetResolver(r Resolver) { s.resolver = r }

func (s *Steerer) hasDomains() bool {
	for _, r := range s.cfg.NetworkPolicy.Rules {
		if len(r.Domains) > 0 {
			return true
		}
	}
	return false
}

// resolvedNow reports whether a is a current (not timed out) address of
// name.
func (s *Steerer) resolvedNow(name string, a netip.Addr) bool {
	s.dom.mu.Lock()
	defer s.dom.mu.Unlock()
	d := s.dom.names[name]
	if d == nil {
		return false
	}
	exp, ok := d.addrs[a]
	return ok && time.Now().Before(exp)
}

// domainLoop resolves every name when due and updates the sets, until ctx
// ends.
func (s *Steerer) domainLoop(ctx context.Context) {
	defer s.domWG.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		s.refreshDomains(ctx, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refreshDomains resolves the names that are due.
func (s *Steerer) refreshDomains(ctx context.Context, now time.Time) {
	s.dom.mu.Lock()
	var due []string
	for n, d := range s.dom.names {
		if !now.Before(d.next) {
			due = append(due, n)
		}
		for a, exp := range d.addrs {
			if !now.Before(exp) {
				delete(d.addrs, a) // the kernel dropped the elements too
				s.dom.lapsed.Add(1)
			}
		}
	}
	s.dom.mu.Unlock()
	sort.Strings(due)
	for _, n := range due {
		lctx, cancel := context.WithTimeout(ctx, domainLookupLimit)
		addrs, ttl, err := s.resolver.LookupNetIP(lctx, n)
		cancel()
		s.dom.resolves.Add(1)
		if err == nil && len(addrs) == 0 {
			err = errors.New("no addresses")
		}
		if err != nil {
			s.dom.failures.Add(1)
			s.dom.mu.Lock()
			d := s.dom.names[n]
			if d == nil { // dropped by a reload meanwhile
				s.dom.mu.Unlock()
				continue
			}
			d.fails++
			d.next = now.Add(domainRetry)
			kept := len(d.addrs)
			s.dom.mu.Unlock()
			if d.fails == 1 {
				s.log.Warn("network policy: resolving a domain failed; keeping the last answers until they time out", "name", n, "kept", kept, "err", err)
			}
			continue
		}
		ttl = min(max(ttl, minDomainTTL), maxDomainTTL)
		if err := s.installAnswers(n, addrs, ttl, now); err != nil {
			s.dom.failures.Add(1)
			s.log.Warn("network policy: updating domain set", "name", n, "err", err)
			s.dom.mu.Lock()
			if d := s.dom.names[n]; d != nil {
				d.next = now.Add(domainRetry)
			}
			s.dom.mu.Unlock()
			continue
		}
	}
}

// installAnswers puts name's addresses into every set of a rule naming it,
// timing out after ttl, and schedules the next resolution.
func (s *Steerer) installAnswers(name string, addrs []netip.Addr, ttl time.Duration, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.closed {
		return errors.New("steerer not running")
	}
	s.dom.mu.Lock()
	d := s.dom.names[name]
	if d == nil { // dropped by a reload meanwhile
		s.dom.mu.Unlock()
		return nil
	}
	present := make(map[netip.Addr]bool, len(d.addrs))
	// An element still in the kernel must be deleted and added again:
	// before 6.10 adding it leaves its old timeout, and it would lapse
	// while the name still has the address. Our expiry is never later
	// than the kernel's (taken before the add), so an element we believe
	// live for a little while yet is there; one about to lapse may be
	// gone by the commit, and then the add-only retry below is right.
	check := time.Now().Add(presentMargin)
	for a, exp := range d.addrs {
		present[a] = check.Before(exp)
	}
	s.dom.mu.Unlock()
	queue := func(withDelete bool) {
		for _, ds := range s.rs.npDomainSets {
			if !containsStr(ds.domains, name) {
				continue
			}
			set := s.rs.sets[ds.name]
			var add, del []nftables.SetElement
			for _, a := range addrs {
				a = a.Unmap()
				if a.Is6() != ds.v6 {
					continue
				}
				add = append(add, nftables.SetElement{Key: a.AsSlice(), Timeout: ttl})
				if withDelete && present[a] {
					del = append(del, nftables.SetElement{Key: a.AsSlice()})
				}
			}
			if len(del) > 0 {
				_ = s.nft.SetDeleteElements(set, del)
			}
			if len(add) > 0 {
				_ = s.nft.SetAddElements(set, add)
			}
		}
	}
	queue(true)
	if err := s.nft.Flush(); err != nil {
		// An element we thought present had just timed out (the delete
		// failed and took the batch with it): add only.
		queue(false)
		if err2 := s.nft.Flush(); err2 != nil {
			return fmt.Errorf("%w (retry: %v)", err, err2)
		}
	}
	s.dom.mu.Lock()
	for _, a := range addrs {
		d.addrs[a.Unmap()] = now.Add(ttl)
	}
	d.fails = 0
	d.next = now.Add(ttl - max(ttl/4, refreshLead))
	s.dom.mu.Unlock()
	return nil
}

// domainElemsLocked queues every current answer into the domain sets,
// with the time each has left: after a reinstall (repair) the sets are
// empty. Caller holds mu.
func (s *Steerer) domainElemsLocked(now time.Time) error {
	s.dom.mu.Lock()
	defer s.dom.mu.Unlock()
	for _, ds := range s.rs.npDomainSets {
		var add []nftables.SetElement
		for _, n := range ds.domains {
			d := s.dom.names[n]
			if d == nil {
				continue
			}
			for a, exp := range d.addrs {
				if left := exp.Sub(now); a.Is6() == ds.v6 && left > time.Second {
					add = append(add, nftables.SetElement{Key: a.AsSlice(), Timeout: left.Truncate(time.Millisecond)})
				}
			}
		}
		if len(add) > 0 {
			if err := s.nft.SetAddElements(s.rs.sets[ds.name], add); err != nil {
				return err
			}
		}
	}
	return nil
}

func containsStr(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// DomainStats is the state of domain names in network rules.
type DomainStats struct {
	Names    int    `json:"names"`
	Resolved int    `json:"resolved"` // names with at least one live address
	Resolves uint64 `json:"resolves"`
	Failures uint64 `json:"failures"`
	// Lapsed counts addresses whose TTL ran out before a new answer
	// (resolution failing): the rule stopped matching them.
	Lapsed uint64 `json:"lapsed"`
}

func (s *Steerer) domainStats() *DomainStats {
	if !s.hasDomains() {
		return nil
	}
	st := &DomainStats{Resolves: s.dom.resolves.Load(), Failures: s.dom.failures.Load(), Lapsed: s.dom.lapsed.Load()}
	now := time.Now()
	s.dom.mu.Lock()
	defer s.dom.mu.Unlock()
	st.Names = len(s.dom.names)
	for _, d := range s.dom.names {
		for _, exp := range d.addrs {
			if now.Before(exp) {
				st.Resolved++
				break
			}
		}
	}
	return st
}
