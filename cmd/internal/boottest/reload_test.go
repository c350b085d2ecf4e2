package boottest

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/health"
	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
)

// reloadRule is the rule the reload step adds: it denies the test site
// the running policy allows.
const reloadRule = "boottest-deny-app"

// reloadEnv is what the reload step needs from the booted system.
type reloadEnv struct {
	m       *Machine
	root    string
	gid     int
	cfg     config.Config // the running config
	good    []byte        // its file
	hc      *http.Client  // in the appliance's namespace (health, metrics)
	client  *demo.Client  // a VPC client behind the GWLB simulator
	fake    *cwlfake.Server
	allowed []demo.Result // requests made under the running policy
}

// reloadPolicy: the operator edits the live config and runs `systemctl
// reload gwlbproxy` (ExecReload sends SIGHUP). The same process (MainPID,
// no restart) puts the new policy in force: the next new connection
// through the tunnel gets the new decision and its record at the
// CloudWatch Logs fake carries the new policy_version. A reload with an
// invalid policy is refused: the old policy stays in force, the unit
// stays active, health stays 200 (its body's policy check says why), the
// journal names the field and the failure counter counts it. Finally
// the original file is reloaded, which brings back the original
// policy_version (it is a digest of the policy, not a counter), so the
// steps after this one run under the original policy.
//
// ExecReload=/bin/kill -HUP returns as soon as the signal is sent (the
// daemon does not send RELOADING=1/READY=1, and Debian 12's systemd 252
// has no Type=notify-reload), so `systemctl reload` does not wait for the
// reload to finish: the step waits for the health body's policy_version
// and says how long that took.
func reloadPolicy(ctx context.Context, t *testing.T, e reloadEnv) {
	stepStart := time.Now()
	m := e.m
	cfgPath := filepath.Join(e.root, "etc/gwlbproxy/gwlbproxy.yaml")

	st := m.Show(ctx, unit, "CanReload", "ExecReload")
	t.Logf("unit reload: CanReload=%s ExecReload=%s", st["CanReload"], st["ExecReload"])
	if st["CanReload"] != "yes" || !strings.Contains(st["ExecReload"], "-HUP") {
		t.Fatalf("the installed unit cannot be reloaded with SIGHUP (%v): is GWLBPROXY_DEB a current `make release`?", st)
	}

	_, ps := healthPolicy(t, e.hc)
	v1, _ := ps["policy_version"].(string)
	if v1 == "" {
		t.Fatalf("health body has no policy check with a policy_version: %v", ps)
	}
	for i, r := range recordsOf(t, e.fake, e.allowed) {
		if r.PolicyVersion != v1 {
			t.Errorf("record of request %d has policy_version %q, want %q (the one in force)", i, r.PolicyVersion, v1)
		}
	}
	before := m.Show(ctx, unit, "MainPID", "NRestarts")

	// The new policy: the test site, allowed so far, is denied by a
	// rule ahead of the one that allowed it. The operator also changed a
	// key a reload cannot apply: it is named, not applied.
	deny := e.cfg
	deny.Proxy.Policy.Rules = append([]policy.Rule{{Name: reloadRule, Action: policy.Deny, Domains: []string{demo.HostApp}}},
		e.cfg.Proxy.Policy.Rules...)
	deny.Drain.Deadline = e.cfg.Drain.Deadline + time.Second
	denyFile, err := deny.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.Parse(denyFile); err != nil {
		t.Fatalf("changed config: %v", err)
	}
	writeFile(t, cfgPath, denyFile, 0o640, e.gid)
	start := time.Now()
	m.MustExec(ctx, "systemctl", "reload", unit)
	returned := time.Since(start)
	v2 := waitPolicy(t, e.hc, "the new policy in force", func(ps map[string]any) bool {
		v, _ := ps["policy_version"].(string)
		return v != "" && v != v1
	})
	t.Logf("systemctl reload returned after %s; policy_version %s -> %s in force after %s",
		returned.Round(time.Millisecond), v1, v2, time.Since(start).Round(time.Millisecond))
	sameProcess(ctx, t, m, before, "after the reload")
	if _, ps := healthPolicy(t, e.hc); !strings.Contains(strings.Join(anyStrings(ps["restart_needed"]), ","), "drain.deadline") {
		t.Errorf("health body's restart_needed %v does not name drain.deadline (changed, needs a restart)", ps["restart_needed"])
	}

	var denied []demo.Result
	for _, url := range []string{"https://" + demo.HostApp + "/?reload=1", "http://" + demo.HostApp + "/?reload=1"} {
		r := e.client.Get(ctx, url)
		if r.Err != nil || r.Status != http.StatusForbidden || !strings.Contains(r.Body, reloadRule) {
			t.Fatalf("%s after the reload: %v %d %.200q, want a 403 page naming rule %s", url, r.Err, r.Status, r.Body, reloadRule)
		}
		denied = append(denied, r)
	}
	for _, rec := range waitRecordsWhere(ctx, t, e.fake, denied, func(r *demo.Record) bool {
		return r.Status == http.StatusForbidden && r.Rule == reloadRule
	}) {
		if rec.PolicyVersion != v2 {
			t.Errorf("deny record %s has policy_version %q, want the reloaded %q", rec.RecordID, rec.PolicyVersion, v2)
		}
	}
	t.Logf("after the reload: new connections denied by %s (403), their records carry policy_version %s", reloadRule, v2)
	j := m.MustExec(ctx, "journalctl", "-u", unit, "--no-pager", "-o", "cat")
	if !strings.Contains(j, "reload: new policy in force") || !strings.Contains(j, v2) {
		t.Errorf("journal has no line for the reload to %s", v2)
	}
	for _, l := range strings.Split(j, "\n") {
		if strings.Contains(l, "next restart") {
			t.Logf("journal: %s", l)
		}
	}
	// systemd ran the reload job (ExecReload), not something else.
	if !strings.Contains(j, "Reloading gwlbproxy") || !strings.Contains(j, "Reloaded gwlbproxy") {
		t.Errorf("the journal shows no systemd Reloading/Reloaded lines for %s", unit)
	}

	// An invalid policy: refused, the one in force stays.
	bad := deny
	bad.Proxy.Policy.DefaultAction = "maybe"
	badFile, err := bad.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, cfgPath, badFile, 0o640, e.gid)
	m.MustExec(ctx, "systemctl", "reload", unit)
	var lastErr string
	waitPolicy(t, e.hc, "the refused reload in the health body", func(ps map[string]any) bool {
		lastErr, _ = ps["last_error"].(string)
		return strings.Contains(lastErr, "proxy.policy.default_action")
	})
	code, ps := healthPolicy(t, e.hc)
	if code != http.StatusOK {
		t.Errorf("health after a refused reload: %d, want 200 (the previous policy is still enforced)", code)
	}
	if v := ps["policy_version"]; v != v2 {
		t.Errorf("policy_version after a refused reload: %v, want %s still in force", v, v2)
	}
	if f, _ := ps["reload_failures"].(float64); f != 1 {
		t.Errorf("health body's reload_failures: %v, want 1", ps["reload_failures"])
	}
	t.Logf("refused reload: health %d, policy_version %v, last_error %q", code, ps["policy_version"], lastErr)
	sameProcess(ctx, t, m, before, "after the refused reload")
	j = m.MustExec(ctx, "journalctl", "-u", unit, "--no-pager", "-o", "cat")
	found := false
	for _, l := range strings.Split(j, "\n") {
		if strings.Contains(l, "reload refused") && strings.Contains(l, "proxy.policy.default_action") {
			t.Logf("journal: %s", l)
			found = true
		}
	}
	if !found {
		t.Errorf("journal has no error line naming proxy.policy.default_action:\n%s", tail(j, 10))
	}
	if got := metricValue(t, e.hc, "gwlbproxy_policy_reload_failures_total"); got != 1 {
		t.Errorf("gwlbproxy_policy_reload_failures_total = %v, want 1", got)
	}
	r := e.client.Get(ctx, "https://"+demo.HostApp+"/?refused=1")
	if r.Err != nil || r.Status != http.StatusForbidden {
		t.Fatalf("after a refused reload: %v %d, want the policy in force's 403", r.Err, r.Status)
	}
	for _, rec := range waitRecordsWhere(ctx, t, e.fake, []demo.Result{r}, func(r *demo.Record) bool { return r.Status == http.StatusForbidden }) {
		if rec.PolicyVersion != v2 || rec.Rule != reloadRule {
			t.Errorf("record after a refused reload: policy_version %q rule %q, want %q %q", rec.PolicyVersion, rec.Rule, v2, reloadRule)
		}
	}

	// Back to the original file: the original policy and its version.
	writeFile(t, cfgPath, e.good, 0o640, e.gid)
	m.MustExec(ctx, "systemctl", "reload", unit)
	waitPolicy(t, e.hc, "the original policy back in force", func(ps map[string]any) bool {
		le, _ := ps["last_error"].(string)
		return ps["policy_version"] == v1 && le == "" && len(anyStrings(ps["restart_needed"])) == 0
	})
	sameProcess(ctx, t, m, before, "after reloading the original config")
	r = e.client.Get(ctx, "https://"+demo.HostApp+"/?restored=1")
	if r.Err != nil || r.Status != http.StatusOK {
		t.Fatalf("after reloading the original config: %v %d, want 200", r.Err, r.Status)
	}
	if got := metricValue(t, e.hc, "gwlbproxy_policy_reloads_total"); got != 2 {
		t.Errorf("gwlbproxy_policy_reloads_total = %v, want 2 (deny, then back)", got)
	}
	t.Logf("original config reloaded: policy_version %s again, the site answers 200; main pid %s throughout; reload steps took %s",
		v1, before["MainPID"], time.Since(stepStart).Round(time.Millisecond))
}

// anyStrings is a JSON array of strings decoded into any.
func anyStrings(v any) []string {
	a, _ := v.([]any)
	var out []string
	for _, x := range a {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// sameProcess fails the test unless the unit is active and running in
// the process it had before (no restart).
func sameProcess(ctx context.Context, t *testing.T, m *Machine, before map[string]string, when string) {
	t.Helper()
	st := m.Show(ctx, unit, "ActiveState", "SubState", "MainPID", "NRestarts")
	if st["ActiveState"] != "active" || st["SubState"] != "running" || st["MainPID"] != before["MainPID"] || st["NRestarts"] != before["NRestarts"] {
		t.Fatalf("%s: %v, want active/running in the same main pid %s with no restart (before: %v)", when, st, before["MainPID"], before)
	}
}

// healthPolicy asks the health check (as GWLB does) and returns its
// status and the body's "policy" check stats.
func healthPolicy(t *testing.T, hc *http.Client) (int, map[string]any) {
	t.Helper()
	code, body := get(t, hc, "http://"+netip.AddrPortFrom(gwlbsim.ApplianceAddr, 80).String()+"/")
	var rep health.Report
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		t.Fatalf("health body (%d): %v: %.200s", code, err, body)
	}
	b, _ := json.Marshal(rep.Checks["policy"].Stats)
	var ps map[string]any
	_ = json.Unmarshal(b, &ps)
	return code, ps
}

// waitPolicy polls the health body's policy check until ok holds (30 s at
// most) and returns the policy_version then in force.
func waitPolicy(t *testing.T, hc *http.Client, what string, ok func(map[string]any) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, ps := healthPolicy(t, hc)
		if ok(ps) {
			v, _ := ps["policy_version"].(string)
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: health body's policy check is %v", what, ps)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitRecordsWhere waits until every result has a record at the fake
// matching keep, and returns them.
func waitRecordsWhere(ctx context.Context, t *testing.T, fake *cwlfake.Server, rs []demo.Result, keep func(*demo.Record) bool) []demo.Record {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var got []demo.Record
		recs := records(t, fake)
		for _, res := range rs {
			for i := range recs {
				if recs[i].Of(res) && keep(&recs[i]) {
					got = append(got, recs[i])
					break
				}
			}
		}
		if len(got) == len(rs) {
			return got
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("only %d of %d records reached the CloudWatch Logs fake", len(got), len(rs))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// metricValue scrapes one unlabelled metric from the default metrics
// endpoint (-1 when absent).
func metricValue(t *testing.T, hc *http.Client, name string) float64 {
	t.Helper()
	code, body := get(t, hc, "http://"+config.Default().Metrics.Listen+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("metrics: %d", code)
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", l, err)
			}
			return f
		}
	}
	return -1
}
