package proxy

import (
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// getReused GETs url and says whether the client reused a kept-alive
// connection for it.
func getReused(t *testing.T, c *http.Client, url string) (int, string, bool) {
	t.Helper()
	reused := false
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	}))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, readAll(t, resp), reused
}

func TestReloadSwapsPolicy(t *testing.T) {
	h := newHarness(t, nil)
	v1 := h.p.PolicyVersion()
	if len(v1) != 12 {
		t.Fatalf("policy_version %q: want 12 hex digits", v1)
	}
	c := h.httpsClient(true)
	if st, body, _ := getReused(t, c, "https://a.test/"); st != 200 || !strings.Contains(body, upstreamMarker) {
		t.Fatalf("before reload: %d %q", st, body)
	}
	h.rec.wait(t, "allowed under v1", and(field("host", "a.test"), field("action", "allow"), field("policy_version", v1)))

	// A slow request in flight when the policy changes keeps its decision.
	slow := make(chan int, 1)
	go func() {
		resp, err := h.httpsClient(false).Get("https://a.test/slow")
		if err != nil {
			slow <- 0
			return
		}
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	time.Sleep(150 * time.Millisecond)

	cfg := DefaultConfig()
	cfg.Policy = testPolicy()
	cfg.Policy.Rules = append([]policy.Rule{{Name: "deny-a", Action: policy.Deny, Domains: []string{"a.test"}}}, cfg.Policy.Rules...)
	v2, err := h.p.Reload(cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	if v2 == v1 || h.p.PolicyVersion() != v2 {
		t.Fatalf("version after reload %q (was %q, now %q)", v2, v1, h.p.PolicyVersion())
	}
	if st := <-slow; st != 200 {
		t.Fatalf("request in flight during reload: status %d, want 200", st)
	}
	// The next request on the kept-alive connection sees the new rule.
	st, body, reused := getReused(t, c, "https://a.test/")
	if !reused {
		t.Fatalf("second request did not reuse the connection")
	}
	if st != 403 || !strings.Contains(body, "deny-a") {
		t.Fatalf("keep-alive request after reload: %d %q", st, body)
	}
	h.rec.wait(t, "denied under v2", and(field("host", "a.test"), field("rule", "deny-a"), field("policy_version", v2)))
	// So does a new connection (decided on its SNI).
	if st, _, _ := getReused(t, h.httpsClient(false), "https://a.test/"); st != 403 {
		t.Fatalf("new connection after reload: %d", st)
	}
	// Reloading the same policy is a no-op with the same version.
	if v, err := h.p.Reload(cfg, ""); err != nil || v != v2 {
		t.Fatalf("same policy again: %q %v", v, err)
	}
	// The source's version is part of policy_version.
	if v, err := h.p.Reload(cfg, "7"); err != nil || v != v2+"@7" {
		t.Fatalf("with source version: %q %v", v, err)
	}
}

func TestReloadInvalidKeepsOld(t *testing.T) {
	h := newHarness(t, nil)
	v1 := h.p.PolicyVersion()
	for name, tc := range map[string]struct {
		mod  func(*Config)
		want string
	}{
		"duplicate rule": {func(c *Config) {
			c.Policy.Rules = append(c.Policy.Rules, policy.Rule{Name: "allow-test", Action: policy.Allow})
		}, "policy.rules[3].name"},
		"bad action":     {func(c *Config) { c.Policy.DefaultAction = "maybe" }, "policy.default_action"},
		"bad binding":    {func(c *Config) { c.Binding.Mode = "sometimes" }, "binding.mode"},
		"bad ssrf":       {func(c *Config) { c.SSRF.DenyCIDRs = append(c.SSRF.DenyCIDRs, badPrefix()) }, "ssrf.deny_cidrs[0]"},
		"missing bundle": {func(c *Config) { c.UpstreamCABundle = "/nonexistent/ca.pem" }, "upstream_ca_bundle"},
	} {
		cfg := DefaultConfig()
		cfg.Policy = testPolicy()
		tc.mod(&cfg)
		_, err := h.p.Reload(cfg, "")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one naming %s", name, err, tc.want)
		}
		if h.p.PolicyVersion() != v1 {
			t.Fatalf("%s: policy changed to %q after a failed reload", name, h.p.PolicyVersion())
		}
	}
	if st, _, _ := getReused(t, h.httpsClient(false), "https://a.test/"); st != 200 {
		t.Fatalf("old policy no longer in force: %d", st)
	}
}

func TestRestartKeys(t *testing.T) {
	a := DefaultConfig()
	b := a
	b.Policy.DefaultAction = policy.Allow
	b.Binding.Mode = BindOff
	b.MaxConns = 7
	b.SSRF.SelfRefresh = time.Minute
	got := RestartKeys(a, b)
	if strings.Join(got, ",") != "max_conns,ssrf.self_refresh" {
		t.Fatalf("restart keys %v", got)
	}
}

func TestPolicyVersionStable(t *testing.T) {
	a := DefaultConfig()
	b := DefaultConfig()
	b.SSRF.SelfRefresh = time.Hour // not policy
	b.MaxConns = 1
	if PolicyVersion(a, nil, "") != PolicyVersion(b, nil, "") {
		t.Fatal("non-policy keys change policy_version")
	}
	b.Policy.ReportOnly = true
	if PolicyVersion(a, nil, "") == PolicyVersion(b, nil, "") {
		t.Fatal("report_only does not change policy_version")
	}
	if PolicyVersion(a, nil, "") == PolicyVersion(a, []byte("x"), "") {
		t.Fatal("CA bundle does not change policy_version")
	}
}

func badPrefix() netip.Prefix { return netip.Prefix{} }
