package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/resolve"
)

// Destination binding: a decision taken on a name the client chose (SNI,
// Host, :authority) is only worth something if the connection goes where
// that name lives. Whenever a name is allowed or spliced, the original
// destination must be one of the addresses the name resolves to from the
// appliance (current answers, or seen within resolve's retain window);
// otherwise the request or connection is denied with rule
// "bind:dst-mismatch", and with "bind:resolve-failed" when the name cannot
// be resolved (fail closed). See ../shared notes destination-binding.

// Binding modes.
const (
	BindEnforce    = "enforce"
	BindReportOnly = "report_only"
	BindOff        = "off"
)

// Binding rule names in records and pages.
const (
	RuleBindMismatch      = "bind:dst-mismatch"
	RuleBindResolveFailed = "bind:resolve-failed"
)

// Record "bind" values.
const (
	bindMatch    = "match"
	bindMismatch = "mismatch"
	bindFailed   = "resolve-failed"
	bindOptOut   = "none" // the rule says bind: none
	bindOff      = "off"  // binding.mode off
)

// BindingConfig is proxy.binding: the mode and the resolver it asks.
type BindingConfig struct {
	// Mode is enforce (deny on mismatch or resolver failure), report_only
	// (record "would deny" and let it pass) or off.
	Mode string `yaml:"mode"`
	// The resolver's keys (servers, resolv_conf, timeout, TTL clamps,
	// retain window, cache bounds) sit directly under proxy.binding.
	Resolver resolve.Config `yaml:",inline"`
}

// DefaultBindingConfig is binding on, against /etc/resolv.conf.
func DefaultBindingConfig() BindingConfig {
	return BindingConfig{Mode: BindEnforce, Resolver: resolve.DefaultConfig()}
}

// Validate checks c; messages start with the yaml key.
func (c *BindingConfig) Validate() error {
	switch c.Mode {
	case BindEnforce, BindReportOnly, BindOff:
	default:
		return fmt.Errorf("mode: %q is not enforce, report_only or off", c.Mode)
	}
	return c.Resolver.Validate()
}

// Binder checks that addr is an address of name. *resolve.Resolver
// implements it; tests give their own. It must bound its own waiting
// (the proxy passes no deadline).
type Binder interface {
	Bound(ctx context.Context, name string, addr netip.Addr) (resolve.Binding, error)
}

// bindResult is a binding check's outcome for one name on one connection.
type bindResult struct {
	name    string
	status  string // record "bind" field
	answers string // record "bind_answers" (on mismatch)
	rule    string // binding's rule when it fails ("report_only:..." in report-only mode); "" = bound
	deny    bool   // enforce: deny with rule and detail
	detail  string // deny page text
	// ps and noBind are what the outcome was computed under: a reload
	// (or another rule's bind: none) makes the memo stale.
	ps     *policyState
	noBind bool
}

// checkBinding checks name (normalized) against st's destination for a
// decision d that is not a deny. The outcome is memoized on st: a
// connection's destination never changes, so later requests for the same
// name cost a string compare. Only the connection's serving goroutine
// calls it for HTTP/1; HTTP/2 streams may race to fill it, harmlessly).
func (p *Proxy) checkBinding(ps *policyState, st *connState, name string, d policy.Decision) *bindResult {
	if name == "" {
		return nil
	}
	if b := st.bind.Load(); b != nil && b.name == name && b.ps == ps && b.noBind == d.NoBind {
		return b
	}
	b := &bindResult{name: name, ps: ps, noBind: d.NoBind}
	switch {
	case d.NoBind:
		b.status = bindOptOut
	case ps.binder == nil:
		b.status = bindOff
	default:
		p.bindLookup(ps, st, b)
	}
	p.m.bindCount(b.status)
	if b.rule != "" {
		if ps.bindReportOnly {
			p.log.Info("proxy: binding would deny", "rule", b.rule, "name", name, "dst", st.dst.Addr().String(), "answers", b.answers)
			b.rule = "report_only:" + b.rule
		} else {
			b.deny = true
		}
	}
	st.bind.Store(b)
	return b
}

func (p *Proxy) bindLookup(ps *policyState, st *connState, b *bindResult) {
	// No deadline of our own (a timer per connection costs more than the
	// check): Binder bounds its lookups (resolve: Config.Timeout, for
	// every caller of a name together).
	dst := st.dst.Addr()
	res, err := ps.binder.Bound(p.ctx, b.name, dst)
	switch {
	case err != nil:
		b.status, b.rule = bindFailed, RuleBindResolveFailed
		b.detail = "The proxy could not resolve " + b.name + " to check that " + dst.String() + " is one of its addresses."
		p.log.Debug("proxy: binding: resolving failed", "name", b.name, "dst", dst.String(), "err", err)
	case res.Match:
		b.status = bindMatch
	default:
		b.status, b.rule = bindMismatch, RuleBindMismatch
		b.answers = joinAddrs(res.Answers)
		shown := b.answers
		if shown == "" {
			shown = "none"
		}
		b.detail = dst.String() + " is not an address of " + b.name + " (it resolves to " + shown + ")."
	}
}

// apply writes b into a record.
func (b *bindResult) apply(r *Record) {
	if b == nil {
		return
	}
	r.Bind, r.BindName, r.BindAnswers = b.status, b.name, b.answers
}

func joinAddrs(as []netip.Addr) string {
	var sb strings.Builder
	for i, a := range as {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(a.String())
	}
	return sb.String()
}

// setupBinding builds ns's binder from its configuration (unless Deps gave
// one, or reuse is the previous policy's resolver with the same settings)
// and warns about everything that weakens binding.
func (p *Proxy) setupBinding(ns *policyState, reuse Binder) error {
	bc := ns.cfg.Binding
	ns.bindReportOnly = bc.Mode == BindReportOnly || ns.cfg.Policy.ReportOnly
	for _, r := range ns.cfg.Policy.Rules {
		if r.Bind == policy.BindNone && r.Action != policy.Deny {
			p.log.Warn("proxy: destination binding off for rule: traffic naming its domains may go to any address", "rule", r.Name, "domains", r.Domains)
		}
	}
	switch bc.Mode {
	case BindOff:
		p.log.Warn("proxy: destination binding is off: a client may send an allowed Host or SNI to any address")
		return nil
	case BindReportOnly:
		p.log.Warn("proxy: destination binding is report_only: mismatches are recorded, not denied")
	}
	if p.deps.Binder != nil {
		ns.binder = p.deps.Binder
		return nil
	}
	if reuse != nil {
		ns.binder = reuse
		return nil
	}
	rc := bc.Resolver
	rc.Registerer = p.reg
	r, err := resolve.New(rc)
	if err != nil {
		return fmt.Errorf("binding.%w", err)
	}
	if servers, err := r.ServerList(); err != nil {
		p.log.Error("proxy: destination binding has no DNS server: every name-based allow and splice is denied (bind:resolve-failed) until this is fixed", "err", err)
	} else {
		p.log.Info("proxy: destination binding", "mode", bc.Mode, "servers", servers)
	}
	ns.binder = r
	return nil
}

// ExplainBinding describes, for `gwlbproxy check --explain`, what
// destination binding does under c: the mode, whom it asks, its cache
// rules, and the rules that opt out.
func (c *Config) ExplainBinding() string {
	bc := c.Binding
	rc := bc.Resolver
	var sb strings.Builder
	mode := bc.Mode
	if c.Policy.ReportOnly && mode == BindEnforce {
		mode = BindReportOnly + " (policy.report_only)"
	}
	fmt.Fprintf(&sb, "mode: %s\n", mode)
	switch bc.Mode {
	case BindOff:
		sb.WriteString("  no check: a client may send an allowed Host or SNI to any address\n")
		return sb.String()
	case BindReportOnly:
		sb.WriteString("  mismatches and resolver failures are recorded (rule report_only:bind:...) and pass\n")
	default:
		sb.WriteString("  allow/splice on a name whose addresses do not include the destination: deny, rule " + RuleBindMismatch + "\n")
		sb.WriteString("  name not resolvable (timeout, SERVFAIL): deny, rule " + RuleBindResolveFailed + "\n")
	}
	if len(rc.Servers) > 0 {
		fmt.Fprintf(&sb, "servers: %s\n", strings.Join(rc.Servers, ", "))
	} else if r, err := resolve.New(rc); err != nil {
		fmt.Fprintf(&sb, "servers: %v\n", err)
	} else if servers, err := r.ServerList(); err != nil {
		fmt.Fprintf(&sb, "servers: from %s, unusable here (every check would fail closed): %v\n", rc.ResolvConf, err)
	} else {
		fmt.Fprintf(&sb, "servers: %s (from %s, read again when it changes)\n", strings.Join(servers, ", "), rc.ResolvConf)
	}
	fmt.Fprintf(&sb, "lookup timeout %v; TTL clamped to %v..%v; negative answers up to %v; failures remembered %v\n",
		rc.Timeout, rc.MinTTL, rc.MaxTTL, rc.NegativeTTL, rc.FailureTTL)
	fmt.Fprintf(&sb, "addresses stay valid %v after their TTL; a miss re-resolves once (at most every %v per name)\n",
		rc.Retain, rc.RequeryInterval)
	fmt.Fprintf(&sb, "cache: %d names, %d addresses per name; at most %d lookups at once\n", rc.MaxNames, rc.MaxAddrs, rc.MaxInflight)
	n := 0
	for _, r := range c.Policy.Rules {
		if r.Bind == policy.BindNone && r.Action != policy.Deny {
			if n == 0 {
				sb.WriteString("rules without binding (bind: none):\n")
			}
			n++
			fmt.Fprintf(&sb, "  %s (%s %s)\n", r.Name, r.Action, strings.Join(r.Domains, ", "))
		}
	}
	if n == 0 {
		sb.WriteString("every allow and splice rule is bound\n")
	}
	return sb.String()
}
