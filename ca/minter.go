package ca

import (
	"container/list"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// Minter defaults.
const (
	DefaultLeafValidity = 48 * time.Hour
	DefaultLeafBackdate = time.Hour
	DefaultCacheSize    = 10000
)

// renewRemaining is the fraction of a leaf's lifetime that, once all that is
// left, makes the next lookup mint a replacement. Clients that check expiry
// against a skewed clock then still see a comfortably valid leaf.
const renewRemaining = 0.25

// ErrNotPermitted is wrapped when the issuing certificate's name
// constraints exclude the requested name or address: a leaf would not
// verify, so none is minted.
var ErrNotPermitted = errors.New("name not permitted by the CA's name constraints")

// MinterOptions tunes a Minter. Zero fields take the defaults.
type MinterOptions struct {
	// Validity of each leaf; default 48h. A leaf never outlives its issuer.
	Validity time.Duration
	// Backdate moves NotBefore into the past to tolerate client clock
	// skew; default 1h.
	Backdate time.Duration
	// CacheSize bounds the number of cached leaves; default 10000.
	CacheSize int
	// PerLeafKeys gives every leaf its own fresh key instead of the
	// minter's shared leaf key.
	//
	// The default (false) reuses one P-256 key for all leaves and replaces
	// it once per Validity. A leaf key lives in the same process memory as
	// the issuing key, so per-leaf keys buy no isolation against an attacker
	// who can read that memory, while they cost one key generation per
	// mint. With the default an exposed leaf key impersonates every cached
	// name until rotation; that risk is bounded by Validity and is
	// dominated by the issuing key anyway.
	PerLeafKeys bool
	// Now is the clock; default time.Now. Tests inject one.
	Now func() time.Time
	// Logger receives mint failures; default discards.
	Logger *slog.Logger
}

func (o MinterOptions) withDefaults() MinterOptions {
	if o.Validity <= 0 {
		o.Validity = DefaultLeafValidity
	}
	if o.Backdate <= 0 {
		o.Backdate = DefaultLeafBackdate
	}
	if o.CacheSize <= 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Minter mints and caches leaf certificates signed by an Authority.
// It is safe for concurrent use; its Certificate method is meant to sit
// behind tls.Config.GetCertificate.
type Minter struct {
	auth  Authority
	opts  MinterOptions
	group singleflight.Group

	mu    sync.Mutex
	lru   list.List // of *entry, most recently used first
	items map[cacheKey]*list.Element

	keyMu   sync.Mutex
	key     *ecdsa.PrivateKey
	keyBorn time.Time

	mints, hits, misses, renewals, evictions atomic.Uint64
	invalidNames, notPermitted, mintErrors   atomic.Uint64
}

// cacheKey identifies a leaf: a normalized DNS name, or an IP when the
// client sent no SNI. Comparable without allocation.
type cacheKey struct {
	name string
	ip   netip.Addr
}

func (k cacheKey) String() string {
	if k.name != "" {
		return k.name
	}
	return k.ip.String()
}

type entry struct {
	key     cacheKey
	cert    *tls.Certificate
	renewAt time.Time
}

// NewMinter returns a Minter for a. reg may be nil; otherwise the minter's
// gwlbproxy_ca_* collectors are registered on it.
func NewMinter(a Authority, opts MinterOptions, reg prometheus.Registerer) *Minter {
	m := &Minter{
		auth:  a,
		opts:  opts.withDefaults(),
		items: make(map[cacheKey]*list.Element),
	}
	if reg != nil {
		for _, c := range m.collectors() {
			if err := reg.Register(c); err != nil {
				m.opts.Logger.Warn("ca: metrics not registered", "err", err)
			}
		}
	}
	return m
}

// GetCertificate adapts Certificate to tls.Config.GetCertificate. Without
// SNI the leaf names the connection's local address, which under TPROXY is
// the client's original destination.
func (m *Minter) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	var ip netip.Addr
	if hello.Conn != nil {
		if ta, ok := hello.Conn.LocalAddr().(*net.TCPAddr); ok {
			ip = ta.AddrPort().Addr()
		}
	}
	return m.Certificate(hello.Context(), hello.ServerName, ip)
}

// Certificate returns a leaf for serverName (the SNI), or for ip when
// serverName is empty. The name is normalized (see NormalizeName) and
// invalid names are rejected with an error wrapping ErrInvalidName. Cached
// leaves are returned until less than a quarter of their validity remains;
// concurrent misses for one name share a single mint. ctx bounds only the
// caller's wait: an abandoned mint still completes and fills the cache.
//
// The returned certificate is shared; callers must not modify it.
func (m *Minter) Certificate(ctx context.Context, serverName string, ip netip.Addr) (*tls.Certificate, error) {
	k, err := m.keyFor(serverName, ip)
	if err != nil {
		m.invalidNames.Add(1)
		return nil, err
	}
	now := m.opts.Now()
	if c := m.lookup(k, now); c != nil {
		m.hits.Add(1)
		return c, nil
	}
	m.misses.Add(1)
	ch := m.group.DoChan(k.String(), func() (any, error) { return m.mintAndStore(k) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*tls.Certificate), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("ca: leaf for %s: %w", k, context.Cause(ctx))
	}
}

func (m *Minter) keyFor(serverName string, ip netip.Addr) (cacheKey, error) {
	if serverName == "" {
		if !ip.IsValid() {
			return cacheKey{}, fmt.Errorf("%w: no server name and no destination address", ErrInvalidName)
		}
		return cacheKey{ip: ip.Unmap().WithZone("")}, nil
	}
	if a, ok := nameAsIP(serverName); ok {
		return cacheKey{ip: a}, nil
	}
	n, err := NormalizeName(serverName)
	if err != nil {
		return cacheKey{}, err
	}
	return cacheKey{name: n}, nil
}

// lookup returns a fresh cached leaf and marks it recently used.
func (m *Minter) lookup(k cacheKey, now time.Time) *tls.Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.items[k]
	if !ok {
		return nil
	}
	e := el.Value.(*entry)
	if !now.Before(e.renewAt) {
		return nil
	}
	m.lru.MoveToFront(el)
	return e.cert
}

// mintAndStore runs inside the singleflight: it re-checks the cache (a
// previous flight for k may have finished between our miss and this call),
// mints, and stores.
func (m *Minter) mintAndStore(k cacheKey) (*tls.Certificate, error) {
	now := m.opts.Now()
	if c := m.lookup(k, now); c != nil {
		return c, nil
	}
	c, renewAt, err := m.mint(k, now)
	if err != nil {
		if errors.Is(err, ErrNotPermitted) {
			m.notPermitted.Add(1)
		} else {
			m.mintErrors.Add(1)
			m.opts.Logger.Error("ca: mint failed", "name", k.String(), "err", err)
		}
		return nil, err
	}
	m.mints.Add(1)
	m.store(k, c, renewAt)
	return c, nil
}

func (m *Minter) store(k cacheKey, c *tls.Certificate, renewAt time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.items[k]; ok {
		e := el.Value.(*entry)
		e.cert, e.renewAt = c, renewAt
		m.lru.MoveToFront(el)
		m.renewals.Add(1)
		return
	}
	m.items[k] = m.lru.PushFront(&entry{key: k, cert: c, renewAt: renewAt})
	for m.lru.Len() > m.opts.CacheSize {
		el := m.lru.Back()
		m.lru.Remove(el)
		delete(m.items, el.Value.(*entry).key)
		m.evictions.Add(1)
	}
}

// mint signs a new leaf for k and returns it with the time after which it
// should be replaced.
func (m *Minter) mint(k cacheKey, now time.Time) (*tls.Certificate, time.Time, error) {
	a := current(m.auth)
	issuer := a.Certificate()
	if err := permitted(issuer, k); err != nil {
		return nil, time.Time{}, err
	}
	notBefore := now.Add(-m.opts.Backdate)
	if notBefore.Before(issuer.NotBefore) {
		notBefore = issuer.NotBefore
	}
	notAfter := now.Add(m.opts.Validity)
	if notAfter.After(issuer.NotAfter) {
		notAfter = issuer.NotAfter
	}
	if !notAfter.After(now) {
		return nil, time.Time{}, fmt.Errorf("ca: leaf for %s: issuer %q expired at %s", k, issuer.Subject, issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := m.leafKey(now)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("ca: leaf for %s: %w", k, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("ca: leaf for %s: %w", k, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	cn := k.String()
	if k.name != "" {
		tmpl.DNSNames = []string{k.name}
	} else {
		tmpl.IPAddresses = []net.IP{net.IP(k.ip.AsSlice())}
	}
	if len(cn) <= 64 { // ub-common-name; clients use the SAN anyway
		tmpl.Subject = pkix.Name{CommonName: cn}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, a.Signer())
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("ca: leaf for %s: %w", k, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("ca: leaf for %s: %w", k, err)
	}
	chain := a.Chain()
	certs := make([][]byte, 0, 1+len(chain))
	certs = append(certs, der)
	certs = append(certs, chain...)
	life := notAfter.Sub(now)
	renewAt := notAfter.Add(-time.Duration(float64(notAfter.Sub(notBefore)) * renewRemaining))
	if !renewAt.After(now) { // clamped by a nearly expired issuer
		renewAt = now.Add(life / 2)
	}
	return &tls.Certificate{Certificate: certs, PrivateKey: key, Leaf: leaf}, renewAt, nil
}

// leafKey returns the key for a new leaf: a fresh one with PerLeafKeys,
// otherwise the shared key, replaced once it is older than Validity.
func (m *Minter) leafKey(now time.Time) (*ecdsa.PrivateKey, error) {
	if m.opts.PerLeafKeys {
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	if m.key == nil || now.Sub(m.keyBorn) >= m.opts.Validity || now.Before(m.keyBorn) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		m.key, m.keyBorn = k, now
	}
	return m.key, nil
}

// Health reports an issuing certificate that is expired or not yet valid,
// and the authority's own health when it has one (KMS renewal).
func (m *Minter) Health() error {
	a := current(m.auth)
	if err := checkIssuer(a.Certificate(), m.opts.Now()); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	if h, ok := m.auth.(interface{ Health() error }); ok {
		return h.Health()
	}
	return nil
}

// Stats is a point-in-time view of a Minter's counters.
type Stats struct {
	CacheEntries   int       `json:"cache_entries"`
	CacheSize      int       `json:"cache_size"`
	Mints          uint64    `json:"mints"`
	Hits           uint64    `json:"hits"`
	Misses         uint64    `json:"misses"`
	Renewals       uint64    `json:"renewals"`
	Evictions      uint64    `json:"evictions"`
	InvalidNames   uint64    `json:"invalid_names"`
	NotPermitted   uint64    `json:"not_permitted"`
	MintErrors     uint64    `json:"mint_errors"`
	Issuer         string    `json:"issuer"`
	IssuerNotAfter time.Time `json:"issuer_not_after"`
}

// Stats returns the minter's counters.
func (m *Minter) Stats() Stats {
	m.mu.Lock()
	n := m.lru.Len()
	m.mu.Unlock()
	issuer := current(m.auth).Certificate()
	return Stats{
		CacheEntries:   n,
		CacheSize:      m.opts.CacheSize,
		Mints:          m.mints.Load(),
		Hits:           m.hits.Load(),
		Misses:         m.misses.Load(),
		Renewals:       m.renewals.Load(),
		Evictions:      m.evictions.Load(),
		InvalidNames:   m.invalidNames.Load(),
		NotPermitted:   m.notPermitted.Load(),
		MintErrors:     m.mintErrors.Load(),
		Issuer:         issuer.Subject.String(),
		IssuerNotAfter: issuer.NotAfter,
	}
}

func (m *Minter) collectors() []prometheus.Collector {
	counter := func(name, help string, v *atomic.Uint64, labels prometheus.Labels) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gwlbproxy_ca_" + name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(v.Load()) })
	}
	return []prometheus.Collector{
		counter("leaf_mints_total", "Leaf certificates minted.", &m.mints, nil),
		counter("leaf_cache_hits_total", "Leaf lookups served from the cache.", &m.hits, nil),
		counter("leaf_cache_misses_total", "Leaf lookups that needed a mint (or waited for one).", &m.misses, nil),
		counter("leaf_renewals_total", "Cached leaves replaced before expiry.", &m.renewals, nil),
		counter("leaf_cache_evictions_total", "Leaves evicted from the bounded cache.", &m.evictions, nil),
		counter("leaf_errors_total", "Leaf requests that failed.", &m.invalidNames, prometheus.Labels{"reason": "invalid_name"}),
		counter("leaf_errors_total", "Leaf requests that failed.", &m.notPermitted, prometheus.Labels{"reason": "not_permitted"}),
		counter("leaf_errors_total", "Leaf requests that failed.", &m.mintErrors, prometheus.Labels{"reason": "mint"}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gwlbproxy_ca_leaf_cache_entries", Help: "Leaves in the cache.",
		}, func() float64 {
			m.mu.Lock()
			defer m.mu.Unlock()
			return float64(m.lru.Len())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gwlbproxy_ca_issuer_not_after_seconds", Help: "Expiry of the issuing certificate, Unix seconds.",
		}, func() float64 { return float64(current(m.auth).Certificate().NotAfter.Unix()) }),
	}
}

// permitted applies the issuer's name constraints to k the way an RFC 5280
// verifier would, so the minter refuses names whose leaf could never verify.
// Only the issuing certificate's constraints are checked.
func permitted(issuer *x509.Certificate, k cacheKey) error {
	if k.name != "" {
		for _, d := range issuer.ExcludedDNSDomains {
			if domainMatch(k.name, d) {
				return fmt.Errorf("ca: leaf for %s: %w (excluded %q)", k, ErrNotPermitted, d)
			}
		}
		if len(issuer.PermittedDNSDomains) == 0 {
			return nil
		}
		for _, d := range issuer.PermittedDNSDomains {
			if domainMatch(k.name, d) {
				return nil
			}
		}
		return fmt.Errorf("ca: leaf for %s: %w", k, ErrNotPermitted)
	}
	ip := net.IP(k.ip.AsSlice())
	for _, n := range issuer.ExcludedIPRanges {
		if len(n.IP) == len(ip) && n.Contains(ip) {
			return fmt.Errorf("ca: leaf for %s: %w (excluded %s)", k, ErrNotPermitted, n)
		}
	}
	if len(issuer.PermittedIPRanges) == 0 {
		return nil
	}
	for _, n := range issuer.PermittedIPRanges {
		if len(n.IP) == len(ip) && n.Contains(ip) {
			return nil
		}
	}
	return fmt.Errorf("ca: leaf for %s: %w", k, ErrNotPermitted)
}

// domainMatch is RFC 5280 dNSName constraint matching on normalized names:
// "example.com" matches itself and its subdomains, ".example.com" only
// subdomains.
func domainMatch(name, constraint string) bool {
	c := constraint
	if c == "" {
		return true
	}
	if c[0] == '.' {
		return len(name) > len(c) && hasSuffixFold(name, c)
	}
	if len(name) == len(c) {
		return hasSuffixFold(name, c)
	}
	return len(name) > len(c) && name[len(name)-len(c)-1] == '.' && hasSuffixFold(name, c)
}

func hasSuffixFold(s, suffix string) bool {
	if len(s) < len(suffix) {
		return false
	}
	s = s[len(s)-len(suffix):]
	for i := 0; i < len(s); i++ {
		a, b := s[i], suffix[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}
