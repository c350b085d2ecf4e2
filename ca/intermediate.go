package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Intermediate defaults.
const (
	DefaultIntermediateValidity = 7 * 24 * time.Hour
	DefaultRenewRetry           = time.Minute
)

// IntermediateOptions describes the per-instance intermediate CA.
type IntermediateOptions struct {
	// CommonName of the intermediate; default
	// "gwlbproxy intermediate <hostname>".
	CommonName string
	// Validity of each intermediate; default 7 days. It is renewed when a
	// third of it is left and never outlives the root.
	Validity time.Duration
	// Name constraints written into the intermediate (critical extension).
	//
	// Limits: constraints only bind names of the types listed. With
	// PermittedDNSDomains alone, leaves for IP addresses (clients without
	// SNI) stay unconstrained per RFC 5280; add PermittedIPRanges, or
	// ExcludedIPRanges 0.0.0.0/0 and ::/0 to forbid IP leaves entirely.
	// Clients that ignore name constraints (some old TLS stacks) accept
	// any name the intermediate signs, so the minter also refuses names
	// outside the constraints (ErrNotPermitted).
	PermittedDNSDomains []string
	ExcludedDNSDomains  []string
	PermittedIPRanges   []netip.Prefix
	ExcludedIPRanges    []netip.Prefix
	// RetryInterval between failed renewals; default 1 minute.
	RetryInterval time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; default discards.
	Logger *slog.Logger
}

func (o IntermediateOptions) withDefaults() IntermediateOptions {
	if o.CommonName == "" {
		h, _ := os.Hostname()
		o.CommonName = "gwlbproxy intermediate " + h
		if len(o.CommonName) > 64 {
			o.CommonName = o.CommonName[:64]
		}
	}
	if o.Validity <= 0 {
		o.Validity = DefaultIntermediateValidity
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = DefaultRenewRetry
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Intermediate is an Authority backed by a short-lived intermediate CA whose
// key exists only in this process's memory, signed by a root whose key is
// elsewhere (a KMSSigner). It implements Snapshotter: a renewal swaps the
// whole certificate/chain/key set atomically.
type Intermediate struct {
	root       *x509.Certificate
	rootSigner crypto.Signer
	opts       IntermediateOptions

	cur     atomic.Pointer[issued]
	renewMu sync.Mutex // one renewal at a time

	mu        sync.Mutex
	lastErr   error
	renewals  uint64
	failures  uint64
	lastRenew time.Time
}

// issued is one intermediate generation.
type issued struct {
	static
	renewAt time.Time
}

// NewIntermediate checks root against rootSigner and mints the first
// intermediate. Call Run to keep it renewed.
func NewIntermediate(ctx context.Context, root *x509.Certificate, rootSigner crypto.Signer, opts IntermediateOptions) (*Intermediate, error) {
	opts = opts.withDefaults()
	if rootSigner == nil {
		return nil, errNoSigner
	}
	if err := checkIssuer(root, opts.Now()); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	if err := checkKeyMatch(root, rootSigner); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	if root.MaxPathLenZero {
		return nil, fmt.Errorf("root %q has path length 0 and cannot sign an intermediate", root.Subject)
	}
	im := &Intermediate{root: root, rootSigner: rootSigner, opts: opts}
	if err := im.Renew(ctx); err != nil {
		return nil, err
	}
	return im, nil
}

// Certificate returns the current intermediate certificate.
func (im *Intermediate) Certificate() *x509.Certificate { return im.cur.Load().cert }

// Chain returns the current intermediate (DER), sent after each leaf.
func (im *Intermediate) Chain() [][]byte { return im.cur.Load().chain }

// Signer returns the current intermediate's in-memory key.
func (im *Intermediate) Signer() crypto.Signer { return im.cur.Load().signer }

// Current returns the current generation as one consistent Authority.
func (im *Intermediate) Current() Authority { return &im.cur.Load().static }

// Root is the root certificate the intermediates chain to.
func (im *Intermediate) Root() *x509.Certificate { return im.root }

// RenewAt is when the current intermediate is due for replacement.
func (im *Intermediate) RenewAt() time.Time { return im.cur.Load().renewAt }

// Renew mints a new intermediate now and makes it current.
func (im *Intermediate) Renew(ctx context.Context) error {
	im.renewMu.Lock()
	defer im.renewMu.Unlock()
	iss, err := im.mint(ctx)
	im.mu.Lock()
	defer im.mu.Unlock()
	if err != nil {
		im.lastErr = err
		im.failures++
		return err
	}
	im.cur.Store(iss)
	im.lastErr = nil
	im.renewals++
	im.lastRenew = im.opts.Now()
	return nil
}

// Run renews the intermediate when a third of its validity is left,
// retrying failures every RetryInterval, until ctx is done.
func (im *Intermediate) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	failed := false
	for {
		wait := im.RenewAt().Sub(im.opts.Now())
		if failed {
			// Past due and failing: retry at a fixed pace, never spin.
			wait = im.opts.RetryInterval
		}
		t.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if im.opts.Now().Before(im.RenewAt()) {
			continue
		}
		err := im.Renew(ctx)
		failed = err != nil
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			im.opts.Logger.Error("ca: intermediate renewal failed", "err", err,
				"expires", im.Certificate().NotAfter, "retry_in", im.opts.RetryInterval)
			continue
		}
		c := im.Certificate()
		im.opts.Logger.Info("ca: intermediate renewed", "subject", c.Subject.String(),
			"serial", c.SerialNumber.Text(16), "not_after", c.NotAfter)
	}
}

// Health is nil while the intermediate is valid and either renewed on
// schedule or with at least a sixth of its validity left.
func (im *Intermediate) Health() error {
	iss := im.cur.Load()
	now := im.opts.Now()
	if err := checkIssuer(iss.cert, now); err != nil {
		return fmt.Errorf("ca intermediate: %w", err)
	}
	im.mu.Lock()
	lastErr := im.lastErr
	im.mu.Unlock()
	left := iss.cert.NotAfter.Sub(now)
	if lastErr != nil && left < im.opts.Validity/6 {
		return fmt.Errorf("ca intermediate: expires in %s and renewal fails: %w", left.Round(time.Second), lastErr)
	}
	return nil
}

// IntermediateStats describes the current intermediate and renewals.
type IntermediateStats struct {
	Subject   string    `json:"subject"`
	Serial    string    `json:"serial"`
	NotAfter  time.Time `json:"not_after"`
	RenewAt   time.Time `json:"renew_at"`
	Renewals  uint64    `json:"renewals"`
	Failures  uint64    `json:"failures"`
	LastError string    `json:"last_error,omitempty"`
}

// Stats returns the intermediate's state.
func (im *Intermediate) Stats() IntermediateStats {
	iss := im.cur.Load()
	im.mu.Lock()
	defer im.mu.Unlock()
	s := IntermediateStats{
		Subject:  iss.cert.Subject.String(),
		Serial:   iss.cert.SerialNumber.Text(16),
		NotAfter: iss.cert.NotAfter,
		RenewAt:  iss.renewAt,
		Renewals: im.renewals,
		Failures: im.failures,
	}
	if im.lastErr != nil {
		s.LastError = im.lastErr.Error()
	}
	return s
}

func (im *Intermediate) mint(ctx context.Context) (*issued, error) {
	now := im.opts.Now()
	if err := checkIssuer(im.root, now); err != nil {
		return nil, fmt.Errorf("intermediate: root: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("intermediate: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	notBefore := now.Add(-time.Hour)
	if notBefore.Before(im.root.NotBefore) {
		notBefore = im.root.NotBefore
	}
	notAfter := now.Add(im.opts.Validity)
	if notAfter.After(im.root.NotAfter) {
		notAfter = im.root.NotAfter
	}
	subj := pkix.Name{CommonName: im.opts.CommonName, Organization: im.root.Subject.Organization}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subj,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		PermittedDNSDomains:   im.opts.PermittedDNSDomains,
		ExcludedDNSDomains:    im.opts.ExcludedDNSDomains,
		PermittedIPRanges:     ipNets(im.opts.PermittedIPRanges),
		ExcludedIPRanges:      ipNets(im.opts.ExcludedIPRanges),
	}
	tmpl.PermittedDNSDomainsCritical = len(tmpl.PermittedDNSDomains)+len(tmpl.ExcludedDNSDomains)+
		len(tmpl.PermittedIPRanges)+len(tmpl.ExcludedIPRanges) > 0
	der, err := x509.CreateCertificate(rand.Reader, tmpl, im.root, &key.PublicKey, signerWithContext(ctx, im.rootSigner))
	if err != nil {
		return nil, fmt.Errorf("intermediate: sign with root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	if err := cert.CheckSignatureFrom(im.root); err != nil {
		return nil, fmt.Errorf("intermediate: does not verify against root: %w", err)
	}
	life := notAfter.Sub(now)
	if life <= 0 {
		return nil, errors.New("intermediate: root expired")
	}
	return &issued{
		static:  static{cert: cert, chain: [][]byte{der}, signer: key},
		renewAt: now.Add(life * 2 / 3),
	}, nil
}

func ipNets(ps []netip.Prefix) []*net.IPNet {
	var out []*net.IPNet
	for _, p := range ps {
		p = p.Masked()
		bits := 32
		if p.Addr().Is6() {
			bits = 128
		}
		out = append(out, &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)})
	}
	return out
}
