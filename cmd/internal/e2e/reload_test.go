package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// rewriteConfig loads the appliance's config file, lets mod change it and
// writes it back, as an operator editing the file would.
func rewriteConfig(t *testing.T, path string, mod func(*config.Config)) {
	t.Helper()
	c, err := config.Load(path, false)
	if err != nil {
		t.Fatal(err)
	}
	mod(&c)
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".new", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// policyStats is the health body's "policy" check.
func policyStats(t *testing.T, ctx context.Context, e *demo.Env) (int, map[string]any) {
	t.Helper()
	code, rep, err := e.Health(ctx)
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	b, _ := json.Marshal(rep.Checks["policy"].Stats)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return code, m
}

// TestReloadUnderTraffic: SIGHUP re-reads the policy while a download
// streams. The download survives, the next new connection sees the new
// rule, the pid is unchanged, records carry the new policy_version; stray
// SIGUSR1/SIGUSR2/SIGPIPE do nothing; an invalid policy on the next reload
// keeps the one in force (health still 200, the body says why).
func TestReloadUnderTraffic(t *testing.T) {
	e := newEnv(t, steer.EgressNAT, nil, false)
	ctx := testCtx(t, 3*time.Minute)

	r := e.Clients[0].Get(ctx, "https://"+demo.HostApp+"/")
	if r.Err != nil || r.Status != 200 {
		t.Fatalf("before reload: %v %d", r.Err, r.Status)
	}
	_, st := policyStats(t, ctx, e)
	v1, _ := st["policy_version"].(string)
	if v1 == "" {
		t.Fatalf("health body has no policy_version: %v", st)
	}
	if _, err := e.Records.Wait(ctx, 1, func(rec *demo.Record) bool { return rec.Of(r) && rec.PolicyVersion == v1 }); err != nil {
		t.Fatalf("record with policy_version %s: %v", v1, err)
	}

	// A long download in progress.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+demo.HostApp+"/slow?s=60", nil)
	resp, err := e.Clients[1].HTTPClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sr := bufio.NewReader(resp.Body)
	if _, err := sr.ReadString('\n'); err != nil {
		t.Fatalf("slow download: %v", err)
	}

	pid := e.App.PID()
	rewriteConfig(t, e.Files.Config, func(c *config.Config) {
		c.Proxy.Policy.Rules = append([]policy.Rule{{Name: "e2e-deny-app", Action: policy.Deny, Domains: []string{demo.HostApp}}}, c.Proxy.Policy.Rules...)
	})
	for _, s := range []syscall.Signal{syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE, syscall.SIGHUP} {
		if err := e.App.Cmd.Process.Signal(s); err != nil {
			t.Fatalf("signal %v: %v", s, err)
		}
	}
	var v2 string
	waitFor(t, 20*time.Second, "the new policy in force", func() (bool, string) {
		_, st := policyStats(t, ctx, e)
		v2, _ = st["policy_version"].(string)
		return v2 != v1 && v2 != "", v2
	})
	r = e.Clients[0].Get(ctx, "https://"+demo.HostApp+"/")
	if r.Err != nil || r.Status != 403 || !strings.Contains(r.Body, "e2e-deny-app") {
		t.Fatalf("new connection after reload: %v %d %q", r.Err, r.Status, r.Body)
	}
	if _, err := e.Records.Wait(ctx, 1, func(rec *demo.Record) bool {
		return rec.Of(r) && rec.Rule == "e2e-deny-app" && rec.PolicyVersion == v2
	}); err != nil {
		t.Fatalf("deny record with policy_version %s: %v", v2, err)
	}
	// The download started before the reload still streams.
	for i := 0; i < 5; i++ {
		if _, err := sr.ReadString('\n'); err != nil {
			t.Fatalf("download after reload: %v", err)
		}
	}
	if e.App.PID() != pid {
		t.Fatalf("pid changed %d -> %d", pid, e.App.PID())
	}
	select {
	case <-e.App.Done():
		t.Fatalf("appliance exited after signals:\n%s", e.App.LogTail(20))
	default:
	}

	// Invalid policy: refused, the previous one stays in force.
	rewriteConfig(t, e.Files.Config, func(c *config.Config) {})
	b, _ := os.ReadFile(e.Files.Config)
	bad := strings.Replace(string(b), "default_action: deny", "default_action: maybe", 1)
	if bad == string(b) {
		t.Fatal("could not break the config")
	}
	if err := os.WriteFile(e.Files.Config, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.App.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the reload failure in the health body", func() (bool, string) {
		code, st := policyStats(t, ctx, e)
		f, _ := st["reload_failures"].(float64)
		le, _ := st["last_error"].(string)
		return code == 200 && f == 1 && strings.Contains(le, "proxy.policy.default_action"), le
	})
	if !e.App.LogContains("proxy.policy.default_action") {
		t.Fatalf("no log line naming the field:\n%s", e.App.LogTail(10))
	}
	if _, st := policyStats(t, ctx, e); st["policy_version"] != v2 {
		t.Fatalf("policy_version after a refused reload: %v, want %s", st["policy_version"], v2)
	}
	r = e.Clients[1].Get(ctx, "https://"+demo.HostApp+"/")
	if r.Err != nil || r.Status != 403 {
		t.Fatalf("after a refused reload: %v %d (want the previous policy's 403)", r.Err, r.Status)
	}
	m, err := e.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m["gwlbproxy_policy_reload_failures_total"] != 1 || m["gwlbproxy_policy_reloads_total"] != 1 {
		t.Fatalf("reload metrics: failures %v reloads %v", m["gwlbproxy_policy_reload_failures_total"], m["gwlbproxy_policy_reloads_total"])
	}
}
