package policy

import (
	"net/netip"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestNormalizeName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Example.COM.", "example.com"},
		{"example.com", "example.com"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"BÜCHER.example.", "xn--bcher-kva.example"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"},
		{"[2001:db8::1]", "2001:db8::1"},
		{"::ffff:1.2.3.4", "1.2.3.4"},
		{"10.0.0.1", "10.0.0.1"},
		{"_dmarc.example.com", "_dmarc.example.com"},
		{"", ""},
	} {
		got, err := NormalizeName(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"a\x00b.com", "exa mple.com", "a..b", ".", "evil.com\r\nX: y", strings.Repeat("a", 64) + ".com",
		strings.Repeat("abcdefghi.", 30) + "com", "xn--zz--.example", "a/b.com", "\x1b[31m.com"} {
		if got, err := NormalizeName(bad); err == nil {
			t.Errorf("NormalizeName(%q) = %q, want error", bad, got)
		}
	}
}

func TestHostOnly(t *testing.T) {
	for in, want := range map[string]string{
		"example.com:8080": "example.com", "example.com": "example.com", "[::1]:443": "[::1]", "[::1]": "[::1]", "::1": "::1", "": "",
	} {
		if got := HostOnly(in); got != want {
			t.Errorf("HostOnly(%q) = %q want %q", in, got, want)
		}
	}
}

const testYAML = `
default_action: deny
no_sni_action: deny
ech_action: splice
rules:
  - name: ep-block
    action: deny
    endpoints: [vpce-0000000000000000a]
  - name: internal-splice
    action: splice
    clients: [10.1.0.0/16]
    domains: ["*.bank.example"]
  - name: api
    action: allow
    destinations: [198.18.0.0/15]
    ports: [443, "8000-8100"]
    domains: ["API.Example.com.", "bücher.example"]
  - name: any-example
    action: allow
    domains: ["*.example.com"]
`

func mustPolicy(t *testing.T, y string) *Policy {
	t.Helper()
	var c Config
	if err := yaml.Unmarshal([]byte(y), &c); err != nil {
		t.Fatal(err)
	}
	p, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func in(ep uint64, client, dst, name string) Input {
	n, _ := NormalizeName(name)
	return Input{Endpoint: ep, HasEndpoint: ep != 0, Client: netip.MustParseAddr(client), Dst: netip.MustParseAddrPort(dst), Name: n}
}

func TestDecide(t *testing.T) {
	p := mustPolicy(t, testYAML)
	for _, tc := range []struct {
		in   Input
		act  Action
		rule string
	}{
		{in(0xa, "10.0.0.1", "198.18.0.1:443", "api.example.com"), Deny, "ep-block"},
		{in(0xb, "10.0.0.1", "198.18.0.1:443", "api.example.com"), Allow, "api"},
		{in(0, "10.0.0.1", "198.18.0.1:8050", "API.EXAMPLE.COM."), Allow, "api"},
		{in(0, "10.0.0.1", "198.18.0.1:8101", "api.example.com"), Allow, "any-example"},
		{in(0, "10.0.0.1", "203.0.113.1:443", "BÜCHER.example"), Deny, "default"},
		{in(0, "10.0.0.1", "198.18.0.1:443", "xn--bcher-kva.example"), Allow, "api"},
		{in(0, "10.1.2.3", "203.0.113.1:443", "www.bank.example"), Splice, "internal-splice"},
		{in(0, "10.2.2.3", "203.0.113.1:443", "www.bank.example"), Deny, "default"},
		{in(0, "10.1.2.3", "203.0.113.1:443", "bank.example"), Deny, "default"}, // *.x excludes x
		{in(0, "10.0.0.1", "203.0.113.1:443", "example.com"), Deny, "default"},
		{in(0, "10.0.0.1", "203.0.113.1:443", "a.b.example.com"), Allow, "any-example"},
		{in(0, "10.0.0.1", "203.0.113.1:443", "notexample.com"), Deny, "default"},
		{in(0, "10.0.0.1", "203.0.113.1:443", ""), Deny, "default"},
		{in(0, "::ffff:10.1.0.9", "203.0.113.1:443", "x.bank.example"), Splice, "internal-splice"},
	} {
		d := p.Decide(tc.in)
		if d.Action != tc.act || d.Rule != tc.rule {
			t.Errorf("%+v: got %v/%s want %v/%s", tc.in, d.Action, d.Rule, tc.act, tc.rule)
		}
	}
	if d, ok := p.Special("ech"); !ok || d.Action != Splice {
		t.Errorf("ech: %v %v", d, ok)
	}
	if d, ok := p.Special("no_sni"); !ok || d.Action != Deny || d.Rule != "no_sni" {
		t.Errorf("no_sni: %v %v", d, ok)
	}
}

func TestReportOnly(t *testing.T) {
	p := mustPolicy(t, testYAML+"report_only: true\n")
	d := p.Decide(in(0xa, "10.0.0.1", "198.18.0.1:443", "x"))
	if d.Action != Allow || !d.WouldDeny || d.Rule != "report_only:ep-block" {
		t.Fatalf("%+v", d)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct{ y, want string }{
		{"default_action: maybe\nno_sni_action: deny\nech_action: deny", "default_action:"},
		{"default_action: deny\nno_sni_action: x\nech_action: deny", "no_sni_action:"},
		{"default_action: deny\nno_sni_action: deny\nech_action: deny\nrules: [{name: a, action: allow, domains: ['a b']}]", "rules[0].domains[0]"},
		{"default_action: deny\nno_sni_action: deny\nech_action: deny\nrules: [{name: a, action: allow}, {name: a, action: deny}]", "rules[1].name: duplicate"},
		{"default_action: deny\nno_sni_action: deny\nech_action: deny\nrules: [{name: a, action: allow, endpoints: [vpce-zz]}]", "rules[0].endpoints[0]"},
		{"default_action: deny\nno_sni_action: deny\nech_action: block", "ech_action:"},
		{"default_action: deny\nno_sni_action: ignore\nech_action: deny", "no_sni_action:"},
	} {
		var c Config
		if err := yaml.Unmarshal([]byte(tc.y), &c); err != nil {
			t.Fatal(err)
		}
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: got %v want prefix %q", tc.y, err, tc.want)
		}
	}
	if _, err := ParsePortRange("9-3"); err == nil {
		t.Error("reversed range accepted")
	}
	if FormatEndpointID(0x0123456789abcdef) != "vpce-00123456789abcdef" {
		t.Error(FormatEndpointID(0x0123456789abcdef))
	}
}

func TestRuleBind(t *testing.T) {
	c := DefaultConfig()
	c.Rules = []Rule{
		{Name: "internal", Action: Allow, Domains: []string{"svc.internal"}, Bind: BindNone},
		{Name: "public", Action: Allow, Domains: []string{"example.com"}, Bind: BindDNS},
	}
	p, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Decide(Input{Name: "svc.internal"}); d.Action != Allow || !d.NoBind {
		t.Fatalf("bind none: %+v", d)
	}
	if d := p.Decide(Input{Name: "example.com"}); d.NoBind {
		t.Fatalf("bind dns: %+v", d)
	}
	if d := p.Decide(Input{Name: "other.com"}); d.NoBind {
		t.Fatalf("default: %+v", d)
	}
	c.Rules[0].Bind = "off"
	if _, err := New(c); err == nil || !strings.HasPrefix(err.Error(), "rules[0].bind") {
		t.Fatalf("bad bind: %v", err)
	}
}

// TestECHIgnoredByDefault: browsers send GREASE ECH on every connection, so
// by default the extension must not decide anything (the rules judge the
// outer SNI); deny and policy remain available.
func TestECHIgnoredByDefault(t *testing.T) {
	c := DefaultConfig()
	if c.ECHAction != ECHIgnore {
		t.Fatalf("default ech_action %q, want %q", c.ECHAction, ECHIgnore)
	}
	for _, a := range []string{ECHIgnore, "policy"} {
		c.ECHAction = a
		p, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := p.Special("ech"); ok {
			t.Errorf("ech_action %s: special decision %+v, want the rules", a, d)
		}
	}
	c.ECHAction = "deny"
	p, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := p.Special("ech"); !ok || d.Action != Deny || d.Rule != "ech" {
		t.Errorf("ech_action deny: %+v %v", d, ok)
	}
}
