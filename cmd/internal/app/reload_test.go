package app

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/proxy"
)

const reloadBase = `
instance_id: test
proxy:
  max_conns: 100
  binding:
    mode: off
  policy:
    default_action: deny
    rules:
      - {name: allow-a, action: allow, domains: [a.test]}
`

func TestPolicyReloader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(reloadBase)
	c, err := config.Load(path, false)
	if err != nil {
		t.Fatal(err)
	}
	px, err := proxy.New(c.Proxy, proxy.Deps{Recorder: proxy.NewJSONLines(io.Discard)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	r := newPolicyReloader(path, c, px, slog.New(slog.NewTextHandler(&logs, nil)), reg)
	v1 := r.Status().Version
	if v1 != px.PolicyVersion() || v1 == "" {
		t.Fatalf("status version %q, proxy %q", v1, px.PolicyVersion())
	}

	// A new rule and a restart-only key.
	write(strings.Replace(reloadBase, "max_conns: 100", "max_conns: 200", 1) +
		"      - {name: allow-b, action: allow, domains: [b.test]}\n")
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	s := r.Status()
	if s.Version == v1 || s.Version != px.PolicyVersion() || s.Reloads != 1 {
		t.Fatalf("after reload: %+v (proxy %q)", s, px.PolicyVersion())
	}
	if strings.Join(s.RestartNeeded, ",") != "proxy.max_conns" || !strings.Contains(logs.String(), "proxy.max_conns") {
		t.Fatalf("restart keys %v; log %s", s.RestartNeeded, logs.String())
	}
	v2 := s.Version

	// Invalid: the old policy stays, one line names the field.
	write(reloadBase + "      - {name: allow-a, action: allow, domains: [c.test]}\n")
	logs.Reset()
	err = r.Reload()
	if err == nil || !strings.Contains(err.Error(), "proxy.policy.rules[1].name") {
		t.Fatalf("invalid reload: %v", err)
	}
	s = r.Status()
	if px.PolicyVersion() != v2 || s.Version != v2 || s.Failures != 1 || !strings.Contains(s.LastError, "rules[1].name") {
		t.Fatalf("after invalid reload: %+v (proxy %q)", s, px.PolicyVersion())
	}
	if n := strings.Count(strings.TrimSpace(logs.String()), "\n") + 1; n != 1 || !strings.Contains(logs.String(), "previous policy still in force") {
		t.Fatalf("want one log line, got %d: %s", n, logs.String())
	}
	if got := counterValue(t, reg, "gwlbproxy_policy_reload_failures_total"); got != 1 {
		t.Fatalf("failure metric %v", got)
	}
	// A bundle that cannot be read is refused too (only Reload sees it).
	write(reloadBase + "  upstream_ca_bundle: /nonexistent/bundle.pem\n")
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "proxy.upstream_ca_bundle") {
		t.Fatalf("missing bundle: %v", err)
	}
	// Fixed again: the error clears.
	write(reloadBase)
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if s := r.Status(); s.LastError != "" || s.Version != v1 || s.Failures != 2 {
		t.Fatalf("after fix: %+v", s)
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
