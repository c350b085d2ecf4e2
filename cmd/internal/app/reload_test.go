package app

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
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

// fakeNet records what the reloader asks of steering's network policy.
type fakeNet struct {
	np    steer.NetworkPolicy
	fail  error
	calls []steer.NetworkPolicy
}

func (f *fakeNet) NetworkPolicy() steer.NetworkPolicy { return f.np }
func (f *fakeNet) PolicyVersion() string              { return f.np.Version() }
func (f *fakeNet) SetNetworkPolicy(_ context.Context, np steer.NetworkPolicy) (steer.NetReload, error) {
	f.calls = append(f.calls, np)
	if f.fail != nil {
		return steer.NetReload{}, f.fail
	}
	res := steer.NetReload{Version: np.Version(), Changed: np.Version() != f.np.Version()}
	f.np = np
	return res, nil
}

// TestReloadNetworkPolicy: a reload puts steer.network_policy in force
// (its empty default following the proxy's), first; a network policy
// steering refuses fails the reload naming steer.network_policy and leaves
// the proxy policy alone; when the proxy part fails after the network
// policy was swapped, the previous network policy is put back; a changed
// log_group is a restart key, the rules are not.
func TestReloadNetworkPolicy(t *testing.T) {
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
	fn := &fakeNet{np: c.SteerConfig().NetworkPolicy}
	r := newPolicyReloader(path, c, px, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	r.net = fn
	if fn.np.DefaultAction != steer.NetDeny {
		t.Fatalf("start: network default %q, want deny (following the proxy)", fn.np.DefaultAction)
	}
	nv1 := r.Status().NetworkVersion
	v1 := px.PolicyVersion()

	withSSH := reloadBase + `steer:
  network_policy:
    rules:
      - {name: ssh, action: allow, protocol: tcp, ports: ["22"]}
`
	write(withSSH)
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	s := r.Status()
	if len(fn.np.Rules) != 1 || fn.np.Rules[0].Name != "ssh" || fn.np.DefaultAction != steer.NetDeny || s.NetworkVersion == nv1 || s.Reloads != 1 {
		t.Fatalf("after reload: network %+v status %+v", fn.np, s)
	}
	if len(s.RestartNeeded) != 0 {
		t.Fatalf("network rules named as restart keys: %v", s.RestartNeeded)
	}
	if px.PolicyVersion() != v1 {
		t.Fatal("proxy policy changed although only the network policy did")
	}
	nv2 := s.NetworkVersion

	// Steering refuses: the reload fails naming the section; the proxy
	// policy is not touched.
	fn.fail = errors.New("network_policy: nftables refused the new rules (the previous ones stay in force): EINVAL")
	write(strings.Replace(withSSH, "- {name: allow-a, action: allow, domains: [a.test]}", "- {name: allow-a2, action: allow, domains: [a.test]}", 1) +
		"      - {name: dns, action: allow, protocol: udp, ports: [\"53\"]}\n")
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "steer.network_policy") {
		t.Fatalf("refused network policy: %v", err)
	}
	if px.PolicyVersion() != v1 || r.Status().NetworkVersion != nv2 || !strings.Contains(r.Status().LastError, "steer.network_policy") {
		t.Fatalf("after a refused network policy: proxy %s (want %s), status %+v", px.PolicyVersion(), v1, r.Status())
	}
	fn.fail = nil

	// The proxy part fails after the network policy was swapped: put back.
	write(strings.Replace(withSSH, "max_conns: 100", "max_conns: 100\n  upstream_ca_bundle: /nonexistent/bundle.pem", 1) +
		"      - {name: dns, action: allow, protocol: udp, ports: [\"53\"]}\n")
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "proxy.upstream_ca_bundle") {
		t.Fatalf("proxy failure: %v", err)
	}
	if r.Status().NetworkVersion != nv2 || len(fn.np.Rules) != 1 {
		t.Fatalf("network policy not rolled back: %+v", fn.np)
	}

	// log_group needs a restart.
	write(withSSH + "    log_group: 99\n")
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Status().RestartNeeded, ","); got != "steer.network_policy.log_group" {
		t.Fatalf("restart keys %q", got)
	}
}

// TestApplySourceNetworkDefault: a fleet policy (s3/ssm) whose default
// allows makes an unset network_policy.default_action allow too, and back
// to deny with the next document; an explicit one in the file stays.
func TestApplySourceNetworkDefault(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
	if err := os.WriteFile(path, []byte(reloadBase), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path, false)
	if err != nil {
		t.Fatal(err)
	}
	px, err := proxy.New(c.Proxy, proxy.Deps{Recorder: proxy.NewJSONLines(io.Discard)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fn := &fakeNet{np: c.SteerConfig().NetworkPolicy}
	r := newPolicyReloader(path, c, px, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	r.net = fn
	allow := c.Proxy.Policy
	allow.DefaultAction = policy.Allow
	if err := r.applySource(allow, "v2"); err != nil {
		t.Fatal(err)
	}
	if fn.np.DefaultAction != steer.NetAllow {
		t.Fatalf("fleet default allow: network default %q", fn.np.DefaultAction)
	}
	if err := r.applySource(c.Proxy.Policy, "v3"); err != nil {
		t.Fatal(err)
	}
	if fn.np.DefaultAction != steer.NetDeny {
		t.Fatalf("fleet default deny: network default %q", fn.np.DefaultAction)
	}
	r.fileFull.Steer.NetworkPolicy.DefaultAction = steer.NetReject
	if err := r.applySource(allow, "v4"); err != nil {
		t.Fatal(err)
	}
	if fn.np.DefaultAction != steer.NetReject {
		t.Fatalf("explicit network default: %q", fn.np.DefaultAction)
	}
}
