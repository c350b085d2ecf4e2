// Package policy decides what the proxy does with a connection or request:
// an ordered list of rules, first match wins, else a default action.
//
// The same Policy is consulted with the TLS SNI before decryption and with
// the Host of every request inside a bumped (or plain HTTP) connection, so a
// client cannot get an allowed SNI and then talk to another name.
package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Action is what to do with matching traffic.
type Action string

const (
	// Allow bumps TLS (decrypts and inspects) and forwards requests.
	Allow Action = "allow"
	// Splice passes TLS through undecrypted. For plain HTTP and for requests
	// already inside a bumped connection it behaves like Allow.
	Splice Action = "splice"
	// Deny refuses: a 403 page where a page can be shown, else a close.
	Deny Action = "deny"
)

// Valid reports whether a is one of the known actions.
func (a Action) Valid() bool { return a == Allow || a == Splice || a == Deny }

// PortRange is an inclusive destination port range. In YAML it is written as
// a number (443) or a string ("8000-8100").
type PortRange struct{ Lo, Hi uint16 }

// ParsePortRange parses "443" or "8000-8100".
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		hi = lo
	}
	l, err := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	if err != nil || l == 0 {
		return PortRange{}, fmt.Errorf("port range %q: bad low port", s)
	}
	h, err := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err != nil || h < l {
		return PortRange{}, fmt.Errorf("port range %q: bad high port", s)
	}
	return PortRange{uint16(l), uint16(h)}, nil
}

// UnmarshalYAML accepts a scalar port or range.
func (p *PortRange) UnmarshalYAML(n *yaml.Node) error {
	r, err := ParsePortRange(n.Value)
	if err != nil {
		return err
	}
	*p = r
	return nil
}

// UnmarshalText accepts a port or range too: the config loader's strict
// decoder reads scalars through encoding.TextUnmarshaler only, so without
// it no "ports:" list could be written in a config file.
func (p *PortRange) UnmarshalText(b []byte) error {
	r, err := ParsePortRange(string(b))
	if err != nil {
		return err
	}
	*p = r
	return nil
}

// MarshalText writes the range in its text form.
func (p PortRange) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// MarshalYAML writes the range back in its text form.
func (p PortRange) MarshalYAML() (any, error) { return p.String(), nil }

func (p PortRange) String() string {
	if p.Lo == p.Hi {
		return strconv.Itoa(int(p.Lo))
	}
	return fmt.Sprintf("%d-%d", p.Lo, p.Hi)
}

// Rule matches when every non-empty criterion matches (AND); within one
// criterion any entry may match (OR). A rule with no criteria matches all.
type Rule struct {
	// Name appears in records and deny pages. Required, unique.
	Name   string `yaml:"name"`
	Action Action `yaml:"action"`
	// Endpoints are GWLB endpoint ids, "vpce-0123456789abcdef0" or bare hex.
	Endpoints []string `yaml:"endpoints,omitempty"`
	// Clients and Destinations are CIDRs of the client and of the original
	// destination address.
	Clients      []netip.Prefix `yaml:"clients,omitempty"`
	Destinations []netip.Prefix `yaml:"destinations,omitempty"`
	Ports        []PortRange    `yaml:"ports,omitempty"`
	// Domains are exact names or "*.suffix" (matches names strictly below
	// suffix, not suffix itself). Case-insensitive, trailing dot ignored,
	// IDNs compared as punycode. A rule with Domains never matches traffic
	// without a name (no SNI).
	Domains []string `yaml:"domains,omitempty"`
	// Bind is the destination binding of an allow or splice by this rule:
	// "" or "dns" (the default) requires the destination to be an address
	// the name resolves to; "none" skips the check, for names that
	// legitimately live where public DNS does not say (the proxy warns at
	// start).
	Bind string `yaml:"bind,omitempty"`

	endpoints []uint64
	exact     map[string]struct{}
	suffixes  []string // ".example.com"
}

// Config is the policy section of the proxy configuration.
type Config struct {
	Rules         []Rule `yaml:"rules"`
	DefaultAction Action `yaml:"default_action"`
	// NoSNIAction applies to TLS ClientHellos without a server name (before
	// the rules, which cannot match a name that is absent). "policy" means
	// evaluate the rules with an empty name (only rules without domains can
	// match). Default deny: fail closed.
	NoSNIAction string `yaml:"no_sni_action"`
	// ECHAction applies to ClientHellos carrying encrypted_client_hello
	// (0xfe0d). Default "ignore" (alias "policy"): decide on the outer SNI
	// with the rules, like any hello, and bump as a TLS server without ECH
	// keys (ECH specification, section 6.1.6): a GREASE-ECH client, which
	// every Chromium and Firefox is, just proceeds; a real-ECH client sees
	// a valid certificate for the public name, treats ECH as rejected and
	// retries without it, with the real SNI, which the rules then judge.
	// GREASE ECH cannot be told from real ECH on the wire, so "deny" denies
	// every connection of Chromium, Edge and Firefox; "splice" passes them
	// all through uninspected, whatever the rules say.
	ECHAction string `yaml:"ech_action"`
	// ReportOnly logs what would be denied and lets it pass (action "allow"
	// with rule "report_only:<rule>" in records). SSRF denials are never
	// report-only.
	ReportOnly bool `yaml:"report_only"`
	// Where the policy comes from (source.go).
	Source SourceConfig `yaml:",inline"`
}

// DefaultConfig denies everything: an appliance with no rules fails closed.
func DefaultConfig() Config {
	return Config{DefaultAction: Deny, NoSNIAction: "deny", ECHAction: ECHIgnore, Source: DefaultSourceConfig()}
}

// ECHIgnore is the default ech_action: the encrypted_client_hello
// extension is ignored and the hello is decided on its outer SNI.
const ECHIgnore = "ignore"

func validSpecial(s string) bool {
	switch s {
	case "deny", "splice", "allow", "policy":
		return true
	}
	return false
}

// Validate checks the config; messages start with the yaml key.
func (c *Config) Validate() error {
	if !c.DefaultAction.Valid() {
		return fmt.Errorf("default_action: %q is not allow, splice or deny", c.DefaultAction)
	}
	if !validSpecial(c.NoSNIAction) {
		return fmt.Errorf("no_sni_action: %q is not allow, splice, deny or policy", c.NoSNIAction)
	}
	if !validSpecial(c.ECHAction) && c.ECHAction != ECHIgnore {
		return fmt.Errorf("ech_action: %q is not ignore, deny, splice, allow or policy", c.ECHAction)
	}
	if err := c.Source.Validate(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for i := range c.Rules {
		r := &c.Rules[i]
		if r.Name == "" {
			return fmt.Errorf("rules[%d].name: empty", i)
		}
		if seen[r.Name] {
			return fmt.Errorf("rules[%d].name: duplicate %q", i, r.Name)
		}
		seen[r.Name] = true
		if !r.Action.Valid() {
			return fmt.Errorf("rules[%d].action: %q is not allow, splice or deny", i, r.Action)
		}
		if r.Bind != "" && r.Bind != BindDNS && r.Bind != BindNone {
			return fmt.Errorf("rules[%d].bind: %q is not dns or none", i, r.Bind)
		}
		if err := r.compile(); err != nil {
			return fmt.Errorf("rules[%d].%w", i, err)
		}
	}
	return nil
}

// ParseEndpointID accepts "vpce-<hex>" or bare hex.
func ParseEndpointID(s string) (uint64, error) {
	h := strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "vpce-")
	v, err := strconv.ParseUint(h, 16, 64)
	if err != nil || h == "" {
		return 0, fmt.Errorf("endpoint id %q: want vpce-<hex>", s)
	}
	return v, nil
}

// FormatEndpointID is the record form: "vpce-" and 17 lower-case hex digits,
// the way AWS names gateway load balancer endpoints.
func FormatEndpointID(id uint64) string { return fmt.Sprintf("vpce-%017x", id) }

func (r *Rule) compile() error {
	r.endpoints = r.endpoints[:0]
	for j, e := range r.Endpoints {
		v, err := ParseEndpointID(e)
		if err != nil {
			return fmt.Errorf("endpoints[%d]: %w", j, err)
		}
		r.endpoints = append(r.endpoints, v)
	}
	for j, p := range r.Clients {
		if !p.IsValid() {
			return fmt.Errorf("clients[%d]: invalid prefix", j)
		}
	}
	for j, p := range r.Destinations {
		if !p.IsValid() {
			return fmt.Errorf("destinations[%d]: invalid prefix", j)
		}
	}
	r.exact = map[string]struct{}{}
	r.suffixes = nil
	for j, d := range r.Domains {
		wild := strings.HasPrefix(d, "*.")
		n, err := NormalizeName(strings.TrimPrefix(d, "*."))
		if err != nil || n == "" {
			return fmt.Errorf("domains[%d]: %q: %v", j, d, err)
		}
		if wild {
			r.suffixes = append(r.suffixes, "."+n)
		} else {
			r.exact[n] = struct{}{}
		}
	}
	return nil
}

// Input is what a decision is made on. Name must already be normalized
// (NormalizeName); empty means "no name".
type Input struct {
	Endpoint    uint64
	HasEndpoint bool
	Client      netip.Addr
	Dst         netip.AddrPort
	Name        string
}

// Rule.Bind values.
const (
	BindDNS  = "dns"
	BindNone = "none"
)

// Decision is the outcome: the action and the rule that produced it
// ("default" when no rule matched).
type Decision struct {
	Action Action
	Rule   string
	// WouldDeny is set in report-only mode when Action was turned from Deny
	// into Allow.
	WouldDeny bool
	// NoBind: the matching rule opted out of destination binding
	// (bind: none).
	NoBind bool
}

// Policy is a compiled, immutable Config, safe for concurrent use.
type Policy struct{ cfg Config }

// New validates and compiles cfg. cfg's rules are copied.
func New(cfg Config) (*Policy, error) {
	c := cfg
	c.Rules = append([]Rule(nil), cfg.Rules...)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Policy{cfg: c}, nil
}

// Config returns the compiled configuration.
func (p *Policy) Config() Config { return p.cfg }

// Decide evaluates the rules in order.
func (p *Policy) Decide(in Input) Decision {
	d := Decision{Action: p.cfg.DefaultAction, Rule: "default"}
	for i := range p.cfg.Rules {
		r := &p.cfg.Rules[i]
		if r.match(&in) {
			d = Decision{Action: r.Action, Rule: r.Name, NoBind: r.Bind == BindNone}
			break
		}
	}
	return p.reportOnly(d)
}

// Special returns the decision for a no-SNI or ECH ClientHello given the
// configured special action; ok is false for "policy" and "ignore" (use
// Decide).
func (p *Policy) Special(kind string) (Decision, bool) {
	var a string
	switch kind {
	case "no_sni":
		a = p.cfg.NoSNIAction
	case "ech":
		a = p.cfg.ECHAction
	}
	if a == "policy" || a == ECHIgnore || a == "" {
		return Decision{}, false
	}
	return p.reportOnly(Decision{Action: Action(a), Rule: kind}), true
}

func (p *Policy) reportOnly(d Decision) Decision {
	if p.cfg.ReportOnly && d.Action == Deny {
		return Decision{Action: Allow, Rule: "report_only:" + d.Rule, WouldDeny: true}
	}
	return d
}

func (r *Rule) match(in *Input) bool {
	if len(r.endpoints) > 0 {
		if !in.HasEndpoint {
			return false
		}
		ok := false
		for _, e := range r.endpoints {
			if e == in.Endpoint {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.Clients) > 0 && !anyContains(r.Clients, in.Client) {
		return false
	}
	if len(r.Destinations) > 0 && !anyContains(r.Destinations, in.Dst.Addr()) {
		return false
	}
	if len(r.Ports) > 0 {
		ok := false
		port := in.Dst.Port()
		for _, pr := range r.Ports {
			if port >= pr.Lo && port <= pr.Hi {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.Domains) > 0 {
		if in.Name == "" {
			return false
		}
		if _, ok := r.exact[in.Name]; ok {
			return true
		}
		for _, s := range r.suffixes {
			if strings.HasSuffix(in.Name, s) {
				return true
			}
		}
		return false
	}
	return true
}

func anyContains(ps []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
