package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// issue 15: check --explain prints the network policy; with the default
// (deny-by-default) proxy policy it ends in a logged drop, with an
// allowing proxy policy everything is forwarded as before; a bad rule is
// one error naming the field.
func TestExplainNetworkPolicy(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "np.yaml")
	os.WriteFile(cfg, []byte(`steer:
  network_policy:
    rules:
      - name: ssh
        action: allow
        protocol: tcp
        ports: ["22"]
        destinations: [203.0.113.0/24]
      - name: smtp
        action: reject
        protocol: tcp
        ports: ["25", "465-587"]
`), 0o644)
	code, out, errs := run(t, "check", "--config", cfg, "--explain")
	if code != 0 {
		t.Fatalf("explain: %d %q", code, errs)
	}
	for _, want := range []string{
		"ct state established,related counter name forwarded accept",
		// an allow records its rule id in the ct mark (ruleid.go); a
		// denial's NFLOG prefix names the policy version.
		"ip daddr { 203.0.113.0/24 } meta l4proto tcp th dport { 22 } ct mark set ct mark & ",
		"counter name np_ssh counter name forwarded accept",
		"th dport { 25, 465-587 } counter name np_smtp log group 4757 prefix \"np:smtp@np-",
		"\" reject with tcp reset",
		"counter name np_default log group 4757 prefix \"np:default@np-",
		"default_action deny",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explain lacks %q:\n%s", want, out)
		}
	}
	allow := filepath.Join(dir, "allow.yaml")
	os.WriteFile(allow, []byte("proxy:\n  policy:\n    default_action: allow\n"), 0o644)
	code, out, _ = run(t, "check", "--config", allow, "--explain")
	if code != 0 || !strings.Contains(out, "counter name forwarded accept") || strings.Contains(out, "np_default") {
		t.Fatalf("allowing proxy policy: %d\n%s", code, out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("steer:\n  network_policy:\n    rules:\n      - name: x\n        action: permit\n"), 0o644)
	code, _, errs = run(t, "check", "--config", bad)
	if code != 1 || !strings.Contains(errs, "steer.network_policy.rules[0].action") {
		t.Fatalf("bad: %d %q", code, errs)
	}
}
