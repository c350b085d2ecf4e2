// Package resolve is the appliance's own DNS resolver for destination
// binding: it asks the instance's resolver (the VPC resolver, the same one
// the clients use) for a name's A and AAAA records with their TTLs, which
// net.Resolver does not give, and caches them.
//
// Cache rules: positive answers live for their TTL clamped to
// MinTTL..MaxTTL; "no such name" and "no addresses" for the SOA's negative
// TTL clamped to MinTTL..NegativeTTL; failures (timeouts, SERVFAIL) for
// FailureTTL so a dead resolver costs each name one Timeout, not one per
// connection. Every address a name had stays "seen" for Retain after its
// TTL: a CDN that rotates answers does not make a client's earlier lookup
// wrong. One lookup per name runs at a time (singleflight); a caller whose
// context ends stops waiting, the lookup goes on for the others.
//
// Names are looked up as given (fully qualified, no search list): the
// proxy asks about names clients sent, never about local short names.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"
)

// ErrNotFound is returned (wrapped) by LookupNetIP for names with no A or
// AAAA records (NXDOMAIN or NODATA).
var ErrNotFound = errors.New("no addresses for name")

// Resolver resolves and caches names. Create with New; safe for concurrent
// use.
type Resolver struct {
	cfg     Config
	servers []string
	udp     *dns.Client
	tcp     *dns.Client
	sf      singleflight.Group
	slots   chan struct{} // MaxInflight lookups

	// ResolvConf's nameservers when Servers is empty, re-read when the
	// file changes.
	rcMu      sync.Mutex
	rcRead    bool
	rcMod     time.Time
	rcSize    int64
	rcServers []string
	rcErr     error
	m         *metrics
	now       func() time.Time

	mu    sync.Mutex
	cache map[string]*entry
}

// entry is what is known about one name.
type entry struct {
	answers  []netip.Addr // last successful answer set (may be empty: negative)
	expires  time.Time    // answers (or the negative result) valid until
	fetched  time.Time    // last lookup finished (success or failure)
	failed   error        // last lookup failed; valid until failEnd
	failEnd  time.Time
	seen     map[netip.Addr]time.Time // address -> usable until (TTL + Retain)
	lastUsed time.Time
}

// has says addr is among the name's current or retained addresses.
func (e *entry) has(addr netip.Addr, now time.Time) bool {
	until, ok := e.seen[addr]
	return ok && now.Before(until)
}

func (e *entry) snapshot(now time.Time) []netip.Addr {
	out := make([]netip.Addr, 0, len(e.seen))
	for _, a := range e.answers {
		out = append(out, a)
	}
	for a, until := range e.seen {
		if now.Before(until) && !contains(e.answers, a) {
			out = append(out, a)
		}
	}
	return out
}

func contains(s []netip.Addr, a netip.Addr) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// New builds a resolver. With no Servers, the nameservers of ResolvConf
// are used, and the file is read again whenever it changes (DHCP, a
// resolver daemon starting late): an unreadable file or one without a
// nameserver is not an error here (a boot-time race must not keep the
// appliance down) but makes every lookup fail, closed, until it is fixed;
// ServerList reports it.
func New(cfg Config) (*Resolver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var servers []string
	for _, s := range cfg.Servers {
		a, _ := serverAddr(s)
		servers = append(servers, a)
	}
	r := &Resolver{
		cfg:     cfg,
		servers: servers,
		udp:     &dns.Client{Net: "udp", UDPSize: udpSize},
		tcp:     &dns.Client{Net: "tcp"},
		m:       newMetrics(cfg.Registerer),
		now:     time.Now,
		cache:   map[string]*entry{},
		slots:   make(chan struct{}, cfg.MaxInflight),
	}
	return r, nil
}

// ServerList returns the servers asked, as ip:port, and why there are
// none (ResolvConf unreadable or without a nameserver).
func (r *Resolver) ServerList() ([]string, error) {
	if len(r.servers) > 0 {
		return append([]string(nil), r.servers...), nil
	}
	r.rcMu.Lock()
	defer r.rcMu.Unlock()
	fi, err := os.Stat(r.cfg.ResolvConf)
	if err != nil {
		r.rcServers, r.rcErr = nil, fmt.Errorf("resolv_conf: %w", err)
		return nil, r.rcErr
	}
	if r.rcRead && fi.ModTime().Equal(r.rcMod) && fi.Size() == r.rcSize {
		return r.rcServers, r.rcErr
	}
	r.rcRead, r.rcMod, r.rcSize = true, fi.ModTime(), fi.Size()
	r.rcServers, r.rcErr = readResolvConf(r.cfg.ResolvConf)
	return r.rcServers, r.rcErr
}

func readResolvConf(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("resolv_conf: %w", err)
	}
	var out []string
	for _, s := range cc.Servers {
		a, err := joinHostPort(s, cc.Port)
		if err != nil {
			return nil, fmt.Errorf("resolv_conf %s: %w", path, err)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("resolv_conf: %s lists no nameserver", path)
	}
	return out, nil
}

// udpSize is the EDNS0 buffer size advertised (the DNS flag day 2020
// value: no IP fragmentation).
const udpSize = 1232

// LookupNetIP returns name's A and AAAA addresses and how long they remain
// valid (the TTL clamped to MinTTL..MaxTTL, less the time already cached).
// A name with no addresses gives an error wrapping ErrNotFound; a failed
// lookup another error. IP literals return themselves.
func (r *Resolver) LookupNetIP(ctx context.Context, name string) ([]netip.Addr, time.Duration, error) {
	if a, err := parseLiteral(name); err == nil {
		return []netip.Addr{a.Unmap()}, r.cfg.MaxTTL, nil
	}
	now := r.now()
	r.mu.Lock()
	e := r.cache[name]
	if e != nil {
		e.lastUsed = now
		if now.Before(e.failEnd) {
			err := e.failed
			r.mu.Unlock()
			r.m.lookups.WithLabelValues("failure_cached").Inc()
			return nil, 0, err
		}
		if now.Before(e.expires) {
			addrs := append([]netip.Addr(nil), e.answers...)
			ttl := e.expires.Sub(now)
			r.mu.Unlock()
			r.m.lookups.WithLabelValues("hit").Inc()
			if len(addrs) == 0 {
				return nil, ttl, fmt.Errorf("%s: %w", name, ErrNotFound)
			}
			return addrs, ttl, nil
		}
	}
	r.mu.Unlock()
	r.m.lookups.WithLabelValues("miss").Inc()
	if err := r.refresh(ctx, name); err != nil {
		return nil, 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e = r.cache[name]
	if e == nil {
		return nil, 0, fmt.Errorf("resolve %s: evicted", name)
	}
	ttl := e.expires.Sub(now)
	if len(e.answers) == 0 {
		return nil, ttl, fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	return append([]netip.Addr(nil), e.answers...), ttl, nil
}

// Binding is the outcome of a binding check.
type Binding struct {
	// Match: the address is one the name has (current or retained).
	Match bool
	// Answers are the name's current and retained addresses; set only when
	// Match is false (for the record).
	Answers []netip.Addr
	// Resolved: this check had to query DNS (no fresh cache entry, or a
	// re-resolution after a miss).
	Resolved bool
	// Requeried: a cached answer missed and the name was resolved again.
	Requeried bool
}

// Bound checks that addr is an address of name: a cache hit when addr is
// among its current or retained addresses; else the name is resolved (if
// its cache entry is stale or older than RequeryInterval) and checked
// again. An IP-literal name matches only itself. The error is non-nil only
// when the name could not be resolved (and addr is not among its retained
// addresses): callers fail closed on it.
func (r *Resolver) Bound(ctx context.Context, name string, addr netip.Addr) (Binding, error) {
	addr = addr.Unmap()
	if lit, err := parseLiteral(name); err == nil {
		lit = lit.Unmap()
		if lit == addr {
			return Binding{Match: true}, nil
		}
		return Binding{Answers: []netip.Addr{lit}}, nil
	}
	now := r.now()
	r.mu.Lock()
	e := r.cache[name]
	if e != nil {
		e.lastUsed = now
		if e.has(addr, now) {
			r.mu.Unlock()
			r.m.boundHit.Inc()
			return Binding{Match: true}, nil
		}
		if now.Before(e.failEnd) {
			err := e.failed
			r.mu.Unlock()
			r.m.bound.WithLabelValues("failure_cached").Inc()
			return Binding{}, err
		}
		if now.Before(e.expires) && now.Sub(e.fetched) < r.cfg.RequeryInterval {
			b := Binding{Answers: e.snapshot(now)}
			r.mu.Unlock()
			r.m.bound.WithLabelValues("mismatch_cached").Inc()
			return b, nil
		}
	}
	r.mu.Unlock()
	b := Binding{Resolved: true, Requeried: e != nil}
	if err := r.refresh(ctx, name); err != nil {
		r.m.bound.WithLabelValues("failed").Inc()
		return b, err
	}
	now = r.now()
	r.mu.Lock()
	if e = r.cache[name]; e != nil && e.has(addr, now) {
		b.Match = true
	} else if e != nil {
		b.Answers = e.snapshot(now)
	}
	r.mu.Unlock()
	if b.Match {
		r.m.bound.WithLabelValues("resolved_match").Inc()
	} else {
		r.m.bound.WithLabelValues("mismatch").Inc()
	}
	return b, nil
}

// refresh looks name up (one lookup per name at a time) and stores the
// result. It returns when the lookup is done or ctx ends.
func (r *Resolver) refresh(ctx context.Context, name string) error {
	ch := r.sf.DoChan(name, func() (any, error) {
		select {
		case r.slots <- struct{}{}:
			defer func() { <-r.slots }()
		default:
			r.m.queries.WithLabelValues("overload").Inc()
			err := fmt.Errorf("resolve %s: %d lookups already in flight", name, cap(r.slots))
			// Not cached: the next connection may find a free slot.
			return nil, err
		}
		// Not the caller's context: other callers share this lookup.
		lctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
		defer cancel()
		res := r.lookup(lctx, name)
		r.store(name, res)
		return nil, res.err
	})
	select {
	case <-ctx.Done():
		return fmt.Errorf("resolve %s: %w", name, ctx.Err())
	case res := <-ch:
		return res.Err
	}
}

// result is one lookup's outcome.
type result struct {
	addrs []netip.Addr
	ttl   time.Duration // positive: clamped TTL; negative result: negative TTL
	err   error
}

func (r *Resolver) store(name string, res result) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.cache[name]
	if e == nil {
		r.evictLocked(now)
		e = &entry{seen: map[netip.Addr]time.Time{}, lastUsed: now}
		r.cache[name] = e
	}
	e.fetched = now
	if res.err != nil {
		e.failed, e.failEnd = res.err, now.Add(r.cfg.FailureTTL)
		return
	}
	e.failed, e.failEnd = nil, time.Time{}
	e.answers = res.addrs
	e.expires = now.Add(res.ttl)
	until := e.expires.Add(r.cfg.Retain)
	for a, u := range e.seen {
		if !now.Before(u) {
			delete(e.seen, a)
		}
	}
	for _, a := range res.addrs {
		e.seen[a] = until
	}
	for len(e.seen) > r.cfg.MaxAddrs {
		// Drop the retained address closest to its end (never a current
		// answer while another is left).
		var victim netip.Addr
		var vu time.Time
		for a, u := range e.seen {
			if contains(e.answers, a) && len(e.seen) > len(e.answers) {
				continue
			}
			if !victim.IsValid() || u.Before(vu) {
				victim, vu = a, u
			}
		}
		delete(e.seen, victim)
	}
	r.m.names.Set(float64(len(r.cache)))
}

// evictLocked makes room for one more name: it samples entries (map
// iteration order is random) and drops the least recently used.
func (r *Resolver) evictLocked(now time.Time) {
	for len(r.cache) >= r.cfg.MaxNames {
		var victim string
		var vt time.Time
		n := 0
		for k, e := range r.cache {
			if victim == "" || e.lastUsed.Before(vt) {
				victim, vt = k, e.lastUsed
			}
			if n++; n >= 16 {
				break
			}
		}
		delete(r.cache, victim)
		r.m.evicted.Inc()
	}
}

// lookup asks each server in turn (each with an equal share of the
// deadline) for A and AAAA in parallel, until one gives a usable answer.
func (r *Resolver) lookup(ctx context.Context, name string) result {
	if len(name) > 253 || !validName(name) {
		return result{err: fmt.Errorf("resolve %q: not a valid DNS name", name)}
	}
	servers, err := r.ServerList()
	if err != nil {
		return result{err: fmt.Errorf("resolve %s: %w", name, err)}
	}
	fqdn := dns.Fqdn(name)
	var last error
	for i, srv := range servers {
		dl, _ := ctx.Deadline()
		share := time.Until(dl) / time.Duration(len(servers)-i)
		sctx, cancel := context.WithTimeout(ctx, share)
		res := r.ask(sctx, srv, fqdn)
		cancel()
		if res.err == nil {
			return res
		}
		last = res.err
		if ctx.Err() != nil {
			break
		}
	}
	return result{err: fmt.Errorf("resolve %s: %w", name, last)}
}

// answer is one query's outcome.
type answer struct {
	addrs    []netip.Addr
	ttl      uint32 // smallest TTL along the chain
	negative bool   // NXDOMAIN or NODATA
	negTTL   uint32
	err      error
}

// ask queries one server for A and AAAA together.
func (r *Resolver) ask(ctx context.Context, srv, fqdn string) result {
	var a4, a6 answer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a6 = r.query(ctx, srv, fqdn, dns.TypeAAAA) }()
	a4 = r.query(ctx, srv, fqdn, dns.TypeA)
	wg.Wait()
	if a4.err != nil && a6.err != nil {
		return result{err: a4.err}
	}
	// One family failing while the other gave addresses: use them (a
	// resolver that SERVFAILs AAAA is common). Otherwise the failure
	// stands: the failed family may hold the destination.
	if a4.err != nil && len(a6.addrs) == 0 {
		return result{err: a4.err}
	}
	if a6.err != nil && len(a4.addrs) == 0 {
		return result{err: a6.err}
	}
	var addrs []netip.Addr
	ttl := uint32(1<<32 - 1)
	neg := uint32(1<<32 - 1)
	for _, x := range []answer{a4, a6} {
		if x.err != nil {
			continue
		}
		if x.negative {
			neg = min(neg, x.negTTL)
			continue
		}
		ttl = min(ttl, x.ttl)
		for _, a := range x.addrs {
			if len(addrs) < r.cfg.MaxAddrs && !contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	if len(addrs) == 0 {
		d := time.Duration(neg) * time.Second
		return result{ttl: min(max(d, r.cfg.MinTTL), r.cfg.NegativeTTL)}
	}
	d := time.Duration(ttl) * time.Second
	return result{addrs: addrs, ttl: min(max(d, r.cfg.MinTTL), r.cfg.MaxTTL)}
}

// query sends one question over UDP (TCP when the answer is truncated)
// and reads the answer: addresses reached from fqdn through at most
// maxChain CNAMEs of the answer section; records for other names are
// ignored (a resolver's answer can only vouch for the chain it followed).
func (r *Resolver) query(ctx context.Context, srv, fqdn string, qtype uint16) answer {
	m := new(dns.Msg)
	m.SetQuestion(fqdn, qtype)
	m.RecursionDesired = true
	m.SetEdns0(udpSize, false)
	start := time.Now()
	resp, _, err := r.udp.ExchangeContext(ctx, m, srv)
	if err == nil && resp.Truncated {
		r.m.truncated.Inc()
		resp, _, err = r.tcp.ExchangeContext(ctx, m, srv)
	}
	r.m.latency.Observe(time.Since(start).Seconds())
	qt := dns.TypeToString[qtype]
	if err != nil {
		if ctx.Err() != nil {
			r.m.queries.WithLabelValues("timeout").Inc()
			return answer{err: fmt.Errorf("%s %s from %s: timeout", qt, fqdn, srv)}
		}
		r.m.queries.WithLabelValues("error").Inc()
		return answer{err: fmt.Errorf("%s %s from %s: %w", qt, fqdn, srv, err)}
	}
	if len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, fqdn) || resp.Question[0].Qtype != qtype {
		r.m.queries.WithLabelValues("bad_question").Inc()
		return answer{err: fmt.Errorf("%s %s from %s: answer to another question", qt, fqdn, srv)}
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		r.m.queries.WithLabelValues("nxdomain").Inc()
		return answer{negative: true, negTTL: soaTTL(resp)}
	default:
		rc := strings.ToLower(dns.RcodeToString[resp.Rcode])
		if rc == "" {
			rc = fmt.Sprint(resp.Rcode)
		}
		r.m.queries.WithLabelValues("rcode_other").Inc()
		return answer{err: fmt.Errorf("%s %s from %s: %s", qt, fqdn, srv, rc)}
	}
	a := chase(resp, fqdn, qtype)
	if len(a.addrs) == 0 {
		r.m.queries.WithLabelValues("nodata").Inc()
		return answer{negative: true, negTTL: soaTTL(resp)}
	}
	r.m.queries.WithLabelValues("ok").Inc()
	return a
}

// maxChain bounds the CNAMEs followed in one answer.
const maxChain = 16

// chase collects qtype addresses of fqdn, following CNAMEs in the answer
// section.
func chase(resp *dns.Msg, fqdn string, qtype uint16) answer {
	target := fqdn
	ttl := uint32(1<<32 - 1)
	var addrs []netip.Addr
	for hop := 0; hop <= maxChain; hop++ {
		next := ""
		for _, rr := range resp.Answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !strings.EqualFold(h.Name, target) {
				continue
			}
			switch v := rr.(type) {
			case *dns.A:
				if qtype == dns.TypeA {
					if ip, ok := netip.AddrFromSlice(v.A.To4()); ok && v.A.To4() != nil {
						addrs = append(addrs, ip)
						ttl = min(ttl, h.Ttl)
					}
				}
			case *dns.AAAA:
				if qtype == dns.TypeAAAA {
					if ip, ok := netip.AddrFromSlice(v.AAAA.To16()); ok && v.AAAA.To16() != nil {
						addrs = append(addrs, ip.Unmap())
						ttl = min(ttl, h.Ttl)
					}
				}
			case *dns.CNAME:
				if next == "" {
					next = v.Target
					ttl = min(ttl, h.Ttl)
				}
			}
		}
		if len(addrs) > 0 || next == "" || strings.EqualFold(next, target) {
			break
		}
		target = next
	}
	return answer{addrs: addrs, ttl: ttl}
}

// soaTTL is the negative TTL of RFC 2308 §5: min(SOA TTL, SOA MINIMUM); 0
// without a SOA.
func soaTTL(resp *dns.Msg) uint32 {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl)
		}
	}
	return 0
}

// validName accepts LDH names (plus '_') with labels of 1..63 bytes.
func validName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if n == 0 {
				return false
			}
			n = 0
			continue
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		if n++; n > 63 {
			return false
		}
	}
	return n > 0
}

var errNotLiteral = errors.New("not an IP literal")

// parseLiteral parses an IP literal, without netip's error allocation for
// the common case of a host name that cannot be one (no ':' and not
// starting with a digit).
func parseLiteral(s string) (netip.Addr, error) {
	if s == "" || !(s[0] >= '0' && s[0] <= '9' || strings.IndexByte(s, ':') >= 0) {
		return netip.Addr{}, errNotLiteral
	}
	return netip.ParseAddr(s)
}
