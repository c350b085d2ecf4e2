package proxy

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"

	"go.yaml.in/yaml/v3"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/ssrf"
)

// policyState is the reloadable part of the proxy: everything that decides
// what traffic may do (rules and defaults, SSRF extras, destination
// binding, upstream roots, report-only). It is immutable once built and
// swapped whole (Proxy.Reload), so a decision never sees half of an old
// policy and half of a new one. A TLS connection keeps the state it was
// decided under for its connection-level record; every request (including
// the next one on a keep-alive connection) loads the current state.
type policyState struct {
	cfg            Config // the configuration it was built from
	pol            *policy.Policy
	guard          *ssrf.Guard
	roots          *x509.CertPool
	binder         Binder // nil: binding off
	bindReportOnly bool
	version        string   // record policy_version
	rootsSum       [32]byte // SHA-256 of the upstream CA bundle's bytes
}

// ps returns the policy in force.
func (p *Proxy) ps() *policyState { return p.cur.Load() }

// PolicyVersion is the policy_version of the policy in force.
func (p *Proxy) PolicyVersion() string { return p.ps().version }

// Reload validates cfg's policy part (policy, ssrf, binding,
// upstream_ca_bundle) and, when valid, swaps it in atomically: connections
// already decided keep their decision, every new connection and the next
// request on every keep-alive connection use the new policy. The other keys
// of cfg are ignored (they need a restart: see RestartKeys). On error the
// policy in force is unchanged; the error names the field.
// sourceVersion is the policy source's own version (S3 version id or ETag,
// SSM parameter version), folded into policy_version.
func (p *Proxy) Reload(cfg Config, sourceVersion string) (string, error) {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	old := p.ps()
	// Keys that need a restart keep their running values; only the
	// policy part is validated against the rest of the running config.
	next := old.cfg
	next.Policy, next.SSRF, next.Binding, next.UpstreamCABundle = cfg.Policy, cfg.SSRF, cfg.Binding, cfg.UpstreamCABundle
	next.SSRF.SelfRefresh = old.cfg.SSRF.SelfRefresh
	if err := next.Validate(); err != nil {
		return "", err
	}
	ns, err := p.buildPolicy(next, sourceVersion, old)
	if err != nil {
		return "", err
	}
	if ns.version == old.version {
		return ns.version, nil
	}
	p.cur.Store(ns)
	if ns.rootsSum != old.rootsSum {
		// Pooled upstream connections were verified against the old
		// roots: close the idle ones and forget past verifications.
		p.up.forgetVerified()
	}
	p.log.Info("proxy: policy reloaded", "policy_version", ns.version, "previous", old.version, "rules", len(next.Policy.Rules))
	return ns.version, nil
}

// buildPolicy compiles the reloadable part of cfg. old (nil at start) lends
// its resolver when the resolver's settings did not change, so a reload
// keeps the binding cache warm.
func (p *Proxy) buildPolicy(cfg Config, sourceVersion string, old *policyState) (*policyState, error) {
	pol, err := policy.New(cfg.Policy)
	if err != nil {
		return nil, fmt.Errorf("policy.%w", err)
	}
	warnECH(p.log, cfg.Policy.ECHAction)
	guard, err := ssrf.New(cfg.SSRF, p.deps.SelfAddrs)
	if err != nil {
		return nil, fmt.Errorf("ssrf: %w", err)
	}
	var bundle []byte
	if cfg.UpstreamCABundle != "" {
		if bundle, err = os.ReadFile(cfg.UpstreamCABundle); err != nil {
			return nil, fmt.Errorf("upstream_ca_bundle: %w", err)
		}
	}
	roots, err := loadRoots(cfg.UpstreamCABundle)
	if err != nil {
		return nil, err
	}
	ns := &policyState{cfg: cfg, pol: pol, guard: guard, roots: roots, rootsSum: sha256.Sum256(bundle)}
	var reuse Binder
	if old != nil && reflect.DeepEqual(old.cfg.Binding.Resolver, cfg.Binding.Resolver) && old.binder != nil {
		reuse = old.binder
	}
	if err := p.setupBinding(ns, reuse); err != nil {
		return nil, err
	}
	ns.version = PolicyVersion(cfg, bundle, sourceVersion)
	return ns, nil
}

// PolicyVersion is the record's policy_version for cfg: the first 12 hex
// digits of a SHA-256 over the effective policy (rules and defaults, SSRF
// extras, binding settings, the upstream CA bundle's bytes), then
// "@" and the source's version when there is one. Equal policies from
// different files give equal versions; any change that can alter a
// decision changes it.
func PolicyVersion(cfg Config, caBundle []byte, sourceVersion string) string {
	doc := struct {
		Policy   policy.Config `yaml:"policy"`
		SSRF     ssrf.Config   `yaml:"ssrf"`
		Binding  BindingConfig `yaml:"binding"`
		CABundle []byte        `yaml:"ca_bundle"`
	}{cfg.Policy, cfg.SSRF, cfg.Binding, caBundle}
	doc.Policy.Source = policy.SourceConfig{}
	doc.SSRF.SelfRefresh = 0
	b, err := yaml.Marshal(doc)
	if err != nil { // not reachable for these types; never hash nothing
		b = []byte(err.Error())
	}
	sum := sha256.Sum256(b)
	v := hex.EncodeToString(sum[:6])
	if sourceVersion != "" {
		if len(sourceVersion) > 40 {
			sourceVersion = sourceVersion[:40]
		}
		v += "@" + sourceVersion
	}
	return v
}

// RestartKeys lists the keys under proxy that differ between a and b and
// that Reload does not apply (they take effect at the next start).
func RestartKeys(a, b Config) []string {
	strip := func(c Config) Config {
		c.Policy, c.Binding, c.UpstreamCABundle = policy.Config{}, BindingConfig{}, ""
		c.SSRF = ssrf.Config{SelfRefresh: c.SSRF.SelfRefresh}
		return c
	}
	return DiffKeys(strip(a), strip(b))
}

// DiffKeys lists the YAML key paths whose values differ between a and b
// (leaves, or the deepest key present on one side only), for logging what
// a reload could not apply.
func DiffKeys(a, b any) []string {
	var na, nb any
	ya, errA := yaml.Marshal(a)
	yb, errB := yaml.Marshal(b)
	if err := errors.Join(errA, errB); err != nil {
		return []string{"(unmarshalable: " + err.Error() + ")"}
	}
	_ = yaml.Unmarshal(ya, &na)
	_ = yaml.Unmarshal(yb, &nb)
	var out []string
	diffAny("", na, nb, &out)
	return out
}

func diffAny(path string, a, b any, out *[]string) {
	ma, okA := a.(map[string]any)
	mb, okB := b.(map[string]any)
	if okA && okB {
		keys := map[string]bool{}
		for k := range ma {
			keys[k] = true
		}
		for k := range mb {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		slices.Sort(sorted)
		for _, k := range sorted {
			sub := k
			if path != "" {
				sub = path + "." + k
			}
			diffAny(sub, ma[k], mb[k], out)
		}
		return
	}
	if !reflect.DeepEqual(a, b) {
		*out = append(*out, path)
	}
}
