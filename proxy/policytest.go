package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/ssrf"
)

// TestInput is a hypothetical connection for `gwlbproxy policy test`:
// what the proxy would see of it.
type TestInput struct {
	// SNI is the TLS server name ("" with TLS: no SNI). Host is the HTTP
	// Host of a request ("" : no request is looked at).
	SNI, Host string
	// TLS: the connection starts with a ClientHello (port 443 style).
	TLS bool
	// Dst is the original destination. Zero: the first address the name
	// resolves to.
	Dst         netip.AddrPort
	Client      netip.Addr
	Endpoint    uint64
	HasEndpoint bool
}

// TestResolver is what policy test asks about names: resolve.Resolver.
type TestResolver interface {
	LookupNetIP(ctx context.Context, name string) ([]netip.Addr, time.Duration, error)
	Binder
}

// TestStep is one step of a decision, as printed.
type TestStep struct {
	Step    string `json:"step"`
	Outcome string `json:"outcome"`
}

// TestResult is the decision with its steps.
type TestResult struct {
	Action        policy.Action `json:"action"`
	Rule          string        `json:"rule"`
	WouldDeny     bool          `json:"would_deny,omitempty"`
	Dst           string        `json:"dst"`
	PolicyVersion string        `json:"policy_version"`
	Steps         []TestStep    `json:"steps"`
}

// Allowed reports whether traffic passes (allow or splice, including
// report-only passes).
func (r *TestResult) Allowed() bool { return r.Action != policy.Deny }

func (r *TestResult) step(name, format string, args ...any) {
	r.Steps = append(r.Steps, TestStep{name, fmt.Sprintf(format, args...)})
}

// TestPolicy runs in through the same steps, in the same order and with
// the same components (policy, ssrf guard, binding resolver) as a live
// connection: SSRF guard, then for TLS the ECH/no-SNI settings and the
// rules on the SNI plus destination binding, then for a request the
// SNI/Host check, the rules on the Host and its binding. res may be nil
// when binding is off and in.Dst is set. self lists the appliance's own
// addresses for the SSRF guard (nil: this machine's).
func TestPolicy(ctx context.Context, cfg Config, in TestInput, res TestResolver, self func() ([]netip.Addr, error)) (TestResult, error) {
	var out TestResult
	if err := cfg.Validate(); err != nil {
		return out, err
	}
	pol, err := policy.New(cfg.Policy)
	if err != nil {
		return out, fmt.Errorf("policy.%w", err)
	}
	guard, err := ssrf.New(cfg.SSRF, self)
	if err != nil {
		return out, fmt.Errorf("ssrf: %w", err)
	}
	var bundle []byte
	if cfg.UpstreamCABundle != "" {
		if bundle, err = os.ReadFile(cfg.UpstreamCABundle); err != nil {
			return out, fmt.Errorf("upstream_ca_bundle: %w", err)
		}
	}
	out.PolicyVersion = PolicyVersion(cfg, bundle, "")
	bindOn := cfg.Binding.Mode != BindOff
	bindReportOnly := cfg.Binding.Mode == BindReportOnly || cfg.Policy.ReportOnly

	dst := in.Dst
	if !dst.IsValid() {
		name := in.SNI
		if name == "" {
			name = policy.HostOnly(in.Host)
		}
		if name == "" || res == nil {
			return out, fmt.Errorf("no destination: give --dst, or a name to resolve")
		}
		addrs, _, err := res.LookupNetIP(ctx, name)
		if err != nil || len(addrs) == 0 {
			return out, fmt.Errorf("no destination: --dst not given and %s does not resolve: %v", name, err)
		}
		port := uint16(80)
		if in.TLS {
			port = 443
		}
		dst = netip.AddrPortFrom(addrs[0], port)
		out.step("destination", "--dst not given: %s resolves to %s; using %s", name, joinAddrs(addrs), dst)
	}
	out.Dst = dst.String()
	pin := policy.Input{Endpoint: in.Endpoint, HasEndpoint: in.HasEndpoint, Client: in.Client, Dst: dst}
	decide := func(d policy.Decision) {
		out.Action, out.Rule, out.WouldDeny = d.Action, d.Rule, d.WouldDeny
	}
	// binding checks name against dst for an allow or splice; false: denied.
	binding := func(name string, d policy.Decision) bool {
		switch {
		case name == "":
			return true
		case !bindOn:
			out.step("binding", "off (proxy.binding.mode): not checked")
			return true
		case d.NoBind:
			out.step("binding", "rule %s says bind: none: not checked", d.Rule)
			return true
		}
		if res == nil {
			return true
		}
		addrs, ttl, lerr := res.LookupNetIP(ctx, name)
		b, err := res.Bound(ctx, name, dst.Addr())
		rule := ""
		switch {
		case err != nil:
			out.step("binding", "%s does not resolve: %v", name, err)
			rule = RuleBindResolveFailed
		case b.Match:
			out.step("binding", "%s resolves to %s (ttl %v): %s is one of them: match", name, joinAddrs(addrs), ttl.Round(time.Second), dst.Addr())
			return true
		default:
			shown := joinAddrs(b.Answers)
			if shown == "" && lerr == nil {
				shown = joinAddrs(addrs)
			}
			if shown == "" {
				shown = "none"
			}
			out.step("binding", "%s resolves to %s: %s is not one of them: mismatch", name, shown, dst.Addr())
			rule = RuleBindMismatch
		}
		if bindReportOnly {
			out.step("binding", "report-only: would deny (rule %s), passes", rule)
			out.Rule, out.WouldDeny = "report_only:"+rule, true
			return true
		}
		decide(policy.Decision{Action: policy.Deny, Rule: rule})
		return false
	}

	if why := guard.Check(dst.Addr()); why != "" {
		out.step("ssrf", "%s is denied (%s); never report-only", dst.Addr(), why)
		decide(policy.Decision{Action: policy.Deny, Rule: "ssrf:" + why})
		return out, nil
	}
	out.step("ssrf", "%s passes the SSRF guard", dst.Addr())

	sni := ""
	if in.TLS {
		name, nameErr := policy.NormalizeName(in.SNI)
		var d policy.Decision
		special := false
		switch {
		case in.SNI == "":
			if sd, ok := pol.Special("no_sni"); ok {
				d, special = sd, true
				out.step("tls", "no SNI: no_sni_action %s", cfg.Policy.NoSNIAction)
			} else {
				d = pol.Decide(pin)
			}
		case nameErr != nil:
			d, special = policy.Decision{Action: policy.Deny, Rule: "invalid-sni"}, true
			out.step("tls", "SNI %q is not a valid name: %v", in.SNI, nameErr)
		default:
			sni = name
			pin.Name = name
			d = pol.Decide(pin)
		}
		if !special {
			out.step("rules", "tls %s: %s", describeName("SNI", sni), describeDecision(d))
		}
		decide(d)
		if d.Action == policy.Deny || !binding(sni, d) {
			return out, nil
		}
		if d.Action == policy.Splice {
			out.step("tls", "spliced: passed through undecrypted, requests are not seen")
			return out, nil
		}
	}
	if in.Host == "" {
		return out, nil
	}
	name, err := policy.NormalizeName(policy.HostOnly(in.Host))
	if err != nil || name == "" {
		out.step("http", "Host %q is missing or invalid", in.Host)
		decide(policy.Decision{Action: policy.Deny, Rule: "invalid-host"})
		return out, nil
	}
	if in.TLS && sni != "" && name != sni {
		out.step("http", "Host %s differs from the SNI %s (domain fronting): 421", name, sni)
		decide(policy.Decision{Action: policy.Deny, Rule: "sni-host-mismatch"})
		return out, nil
	}
	pin.Name = name
	d := pol.Decide(pin)
	out.step("rules", "request %s: %s", describeName("Host", name), describeDecision(d))
	decide(d)
	if d.Action != policy.Deny {
		binding(name, d)
	}
	return out, nil
}

func describeName(kind, name string) string {
	if name == "" {
		return "without a name"
	}
	return kind + " " + name
}

func describeDecision(d policy.Decision) string {
	var sb strings.Builder
	if d.Rule == "default" {
		sb.WriteString("no rule matches: default_action " + string(d.Action))
	} else {
		sb.WriteString("rule " + d.Rule + ": " + string(d.Action))
	}
	if d.WouldDeny {
		sb.WriteString(" (report_only: would deny)")
	}
	return sb.String()
}
