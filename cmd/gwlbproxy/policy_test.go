package main

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/resolve/dnstest"
)

// policyTestConfig writes a config whose binding asks a local DNS server
// that knows www.example.com (203.0.113.5) and cdn.example.com
// (203.0.113.7, 203.0.113.8).
func policyTestConfig(t *testing.T, extra string) string {
	t.Helper()
	srv, err := dnstest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	srv.Set("www.example.com", 60, netip.MustParseAddr("203.0.113.5"))
	srv.Set("cdn.example.com", 300, netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("203.0.113.8"))
	srv.Set("bank.example.org", 60, netip.MustParseAddr("203.0.113.9"))
	path := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
	cfg := `proxy:
  binding:
    servers: ["` + srv.Addr + `"]
    timeout: 2s
  ssrf:
    deny_cidrs: [203.0.113.66/32]
  policy:
    default_action: deny
    rules:
      - {name: deny-admin, action: deny, domains: [admin.example.com]}
      - {name: vpc-a-only, action: allow, domains: [cdn.example.com], endpoints: [vpce-0a], clients: [10.1.0.0/16]}
      - {name: allow-ex, action: allow, domains: ["*.example.com"]}
      - {name: splice-bank, action: splice, domains: [bank.example.org]}
      - {name: internal, action: allow, domains: [intra.example.net], bind: none}
` + extra
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPolicyTestCommand(t *testing.T) {
	cfg := policyTestConfig(t, "")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string // in stdout (or stderr for usage errors)
	}{
		{"bumped and bound", []string{"--sni", "www.example.com", "--dst", "203.0.113.5:443"}, 0,
			[]string{"ssrf        203.0.113.5 passes", "rule allow-ex: allow", "www.example.com resolves to 203.0.113.5 (ttl 1m0s)", "match", "decision: ALLOW rule=allow-ex"}},
		{"request inside", []string{"--sni", "www.example.com", "--host", "www.example.com", "--dst", "203.0.113.5:443"}, 0,
			[]string{"request Host www.example.com: rule allow-ex"}},
		{"fronting", []string{"--sni", "www.example.com", "--host", "admin.example.com", "--dst", "203.0.113.5:443"}, 1,
			[]string{"differs from the SNI", "decision: DENY rule=sni-host-mismatch"}},
		{"rule deny", []string{"--host", "admin.example.com", "--dst", "203.0.113.5:80"}, 1,
			[]string{"rule deny-admin: deny", "decision: DENY rule=deny-admin"}},
		{"default deny", []string{"--sni", "evil.test", "--dst", "203.0.113.5:443"}, 1,
			[]string{"no rule matches: default_action deny", "decision: DENY rule=default"}},
		{"binding mismatch", []string{"--sni", "www.example.com", "--dst", "203.0.113.50:443"}, 1,
			[]string{"www.example.com resolves to 203.0.113.5: 203.0.113.50 is not one of them: mismatch", "rule=bind:dst-mismatch"}},
		{"binding resolve failed", []string{"--sni", "nx.example.com", "--dst", "203.0.113.5:443"}, 1,
			[]string{"nx.example.com resolves to none", "rule=bind:dst-mismatch"}},
		{"opt out", []string{"--sni", "intra.example.net", "--dst", "203.0.113.99:443"}, 0,
			[]string{"says bind: none", "decision: ALLOW rule=internal"}},
		{"splice", []string{"--sni", "bank.example.org", "--dst", "203.0.113.9:443", "--host", "bank.example.org"}, 0,
			[]string{"decision: SPLICE rule=splice-bank", "requests are not seen"}},
		{"ssrf extra", []string{"--sni", "www.example.com", "--dst", "203.0.113.66:443"}, 1,
			[]string{"203.0.113.66 is denied (configured-deny)", "ssrf:configured-deny"}},
		{"ssrf metadata", []string{"--host", "www.example.com", "--dst", "169.254.169.254:80"}, 1,
			[]string{"rule=ssrf:link-local"}},
		{"endpoint and client match", []string{"--sni", "cdn.example.com", "--dst", "203.0.113.8:443", "--endpoint", "vpce-0a", "--client", "10.1.2.3"}, 0,
			[]string{"rule vpc-a-only: allow", "203.0.113.7,203.0.113.8 (ttl 5m0s)", "decision: ALLOW rule=vpc-a-only"}},
		{"other endpoint falls through", []string{"--sni", "cdn.example.com", "--dst", "203.0.113.8:443", "--endpoint", "vpce-0b", "--client", "10.1.2.3"}, 0,
			[]string{"decision: ALLOW rule=allow-ex"}},
		{"no sni", []string{"--dst", "203.0.113.5:443"}, 1,
			[]string{"no SNI: no_sni_action deny", "decision: DENY rule=no_sni"}},
		{"dst resolved", []string{"--sni", "www.example.com"}, 0,
			[]string{"--dst not given: www.example.com resolves to 203.0.113.5; using 203.0.113.5:443", "decision: ALLOW"}},
		{"usage: nothing", nil, 2, []string{"give at least one of"}},
		{"usage: bad dst", []string{"--dst", "nope"}, 2, []string{`--dst "nope"`}},
		{"usage: bad endpoint", []string{"--sni", "a.example.com", "--endpoint", "vpce-zz"}, 2, []string{"--endpoint"}},
		{"usage: bad client", []string{"--sni", "a.example.com", "--client", "x"}, 2, []string{"--client"}},
		{"usage: stray arg", []string{"--sni", "a.example.com", "extra"}, 2, []string{"unexpected argument"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := run(t, append([]string{"policy", "test", "--config", cfg}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(out+errs, w) {
					t.Errorf("missing %q in\n%s%s", w, out, errs)
				}
			}
		})
	}
}

func TestPolicyTestReportOnlyAndJSON(t *testing.T) {
	cfg := policyTestConfig(t, "    report_only: true\n")
	code, out, errs := run(t, "policy", "test", "--config", cfg, "--sni", "evil.test", "--dst", "203.0.113.5:443", "--json")
	if code != 0 {
		t.Fatalf("report-only deny: exit %d %s %s", code, out, errs)
	}
	var res struct {
		Action, Rule  string
		WouldDeny     bool   `json:"would_deny"`
		PolicyVersion string `json:"policy_version"`
		Steps         []struct{ Step, Outcome string }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.Action != "allow" || !strings.HasPrefix(res.Rule, "report_only:") || !res.WouldDeny || len(res.PolicyVersion) != 12 || len(res.Steps) < 2 {
		t.Fatalf("%+v", res)
	}
	// SSRF is never report-only.
	if code, out, _ := run(t, "policy", "test", "--config", cfg, "--sni", "www.example.com", "--dst", "127.0.0.1:443"); code != 1 || !strings.Contains(out, "ssrf:loopback") {
		t.Fatalf("ssrf under report_only: %d %s", code, out)
	}
	// An invalid config is a usage error naming the field.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("proxy:\n  policy:\n    default_action: maybe\n"), 0o600)
	if code, _, errs := run(t, "policy", "test", "--config", bad, "--sni", "a.example.com"); code != 2 || !strings.Contains(errs, "proxy.policy.default_action") {
		t.Fatalf("bad config: %d %s", code, errs)
	}
}

// TestPolicyTestDocument: --document tests a fleet document (what an S3
// object or SSM parameter holds) under the config's other settings, so a
// pipeline can gate the document before publishing it.
func TestPolicyTestDocument(t *testing.T) {
	cfg := policyTestConfig(t, "    source: s3\n    s3: {bucket: b, key: k}\n")
	doc := filepath.Join(t.TempDir(), "fleet.yaml")
	os.WriteFile(doc, []byte("rules:\n  - {name: fleet-allow, action: allow, domains: [www.example.com]}\n"), 0o600)
	code, out, errs := run(t, "policy", "test", "--config", cfg, "--document", doc, "--sni", "www.example.com", "--dst", "203.0.113.5:443")
	if code != 0 || !strings.Contains(out, "decision: ALLOW rule=fleet-allow") {
		t.Fatalf("document: %d\n%s%s", code, out, errs)
	}
	// Without it, the file's rules are tested and the note says so.
	code, _, errs = run(t, "policy", "test", "--config", cfg, "--sni", "www.example.com", "--dst", "203.0.113.5:443")
	if code != 0 || !strings.Contains(errs, "takes its rules from proxy.policy.source s3") {
		t.Fatalf("no document: %d %s", code, errs)
	}
	// A document with keys other than the policy's is refused.
	os.WriteFile(doc, []byte("rules: []\nssrf: {allow_cgnat: true}\n"), 0o600)
	if code, _, errs := run(t, "policy", "test", "--config", cfg, "--document", doc, "--sni", "a.example.com"); code != 2 || !strings.Contains(errs, "ssrf") {
		t.Fatalf("bad document: %d %s", code, errs)
	}
}
