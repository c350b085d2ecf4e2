package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// Unprivileged ids the appliance runs as in these tests (the unit's
// gwlbproxy user is a system user without a login; any uid without
// capabilities of its own proves the same).
const (
	nonRootUID = 65534
	nonRootGID = 65534
)

// unitCaps reads AmbientCapabilities= of the shipped unit, so the test
// grants exactly what systemd grants.
func unitCaps(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("../../../configs/gwlbproxy.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var capsList []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "AmbientCapabilities="); ok {
			capsList = append(capsList, strings.Fields(v)...)
		}
	}
	if len(capsList) == 0 {
		t.Fatal("configs/gwlbproxy.service sets no AmbientCapabilities=")
	}
	return capsList
}

// nonRootWrapper writes a script that starts the appliance the way
// systemd's User= plus AmbientCapabilities= does: it joins the namespace
// while still root (setns needs CAP_SYS_ADMIN), then setpriv switches to
// an unprivileged uid whose inheritable, ambient and bounding sets hold
// exactly capsList, with no_new_privs, and execs gwlbproxy. The files of
// dir are handed to that uid first, as systemd's StateDirectory= and the
// operator's install would.
func nonRootWrapper(t *testing.T, dir string, capsList []string) string {
	t.Helper()
	for _, tool := range []string{"setpriv", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("non-root e2e: %s (util-linux) not found", tool)
		}
	}
	var set []string
	for _, c := range capsList {
		set = append(set, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	capArg := "-all"
	if len(set) > 0 {
		capArg += "," + strings.Join(set, ",")
	}
	script := fmt.Sprintf(`#!/bin/sh
set -e
ns="$%s"
unset %s
case "$ns" in /*) ;; *) ns="/run/netns/$ns" ;; esac
chown -R %d:%d %q
exec nsenter --net="$ns" setpriv --reuid=%d --regid=%d --clear-groups --no-new-privs \
  --inh-caps=%s --ambient-caps=%s --bounding-set=%s -- %q "$@"
`, "GWLBPROXY_NETNS", "GWLBPROXY_NETNS", nonRootUID, nonRootGID, dir,
		nonRootUID, nonRootGID, capArg, capArg, capArg, binary)
	p := filepath.Join(filepath.Dir(binary), fmt.Sprintf("run-as-%d-%d.sh", nonRootUID, time.Now().UnixNano()))
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(p) })
	// The unprivileged user must reach the files: open up the path to dir
	// for traversal only.
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err == nil && st.Mode().Perm()&0o001 == 0 {
			os.Chmod(d, st.Mode().Perm()|0o011)
		}
		if d == os.TempDir() {
			break
		}
	}
	// The binary itself lives under a 0700 temporary directory.
	if st, err := os.Stat(filepath.Dir(binary)); err == nil {
		os.Chmod(filepath.Dir(binary), st.Mode().Perm()|0o011)
	}
	return p
}

// tunWorldRW makes /dev/net/tun mode 0666 for the test if it is not: that
// is the mode systemd's udev rules (50-udev-default.rules) give it on every
// distribution, so an unprivileged user with CAP_NET_ADMIN can create tun
// devices; some CI containers have it 0600. The mode is restored after.
func tunWorldRW(t *testing.T) {
	st, err := os.Stat("/dev/net/tun")
	if err != nil {
		t.Skipf("non-root e2e: %v", err)
	}
	if mode := st.Mode().Perm(); mode&0o006 != 0o006 {
		t.Logf("/dev/net/tun has mode %o here; setting 0666 as udev does on a real host", mode)
		if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod("/dev/net/tun", mode) })
	}
}

// startNonRoot builds the demo deployment with the appliance run as an
// unprivileged user holding only capsList.
func startNonRoot(ctx context.Context, t *testing.T, capsList []string, modify func(*config.Config)) (*demo.Env, error) {
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root to build namespaces and switch to the unprivileged user")
	}
	tunWorldRW(t)
	dir := t.TempDir()
	wrapper := nonRootWrapper(t, dir, capsList)
	e, err := demo.Start(ctx, demo.Options{
		Mode: steer.EgressNAT, Binary: wrapper, Dir: dir, Prefix: "gu", CloudWatchFake: true, Modify: withDatapath(t, modify),
		Progress: func(s string) { t.Log(s) },
	})
	if e != nil {
		names := e.Net.Namespaces()
		t.Cleanup(func() {
			if t.Failed() && e.App != nil {
				t.Logf("appliance log tail:\n%s", e.App.LogTail(40))
			}
			if err := e.Close(); err != nil {
				t.Errorf("cleanup: %v", err)
			}
			for _, ns := range names {
				if _, err := os.Stat("/run/netns/" + ns); err == nil {
					t.Errorf("namespace %s left behind", ns)
				}
			}
		})
	}
	return e, err
}

// TestNonRootUnitCapabilities runs `gwlbproxy run` as an unprivileged uid
// with exactly the capabilities the systemd unit grants (and the health
// check on port 80, as GWLB probes it): it becomes ready and healthy, and
// a bumped HTTPS and a plain HTTP request pass with their records shipped.
func TestNonRootUnitCapabilities(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	capsList := unitCaps(t)
	if v := os.Getenv("GWLBPROXY_TEST_CAPS"); v != "" { // to measure what is needed
		capsList = strings.Fields(v)
	}
	t.Logf("unit capabilities: %v", capsList)
	e, err := startNonRoot(ctx, t, capsList, func(c *config.Config) {
		c.Health.Listen = netip.AddrPortFrom(gwlbsim.ApplianceAddr, 80).String()
	})
	if err != nil {
		t.Fatalf("demo environment: %v", err)
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.App.PID()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(line, "Uid:") || strings.HasPrefix(line, "CapEff:") || strings.HasPrefix(line, "CapBnd:") {
			t.Log(line)
		}
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" && f[2] != fmt.Sprint(nonRootUID) {
			t.Fatalf("appliance runs as euid %s, want %d", f[2], nonRootUID)
		}
	}
	for _, l := range strings.Split(e.App.LogTail(200), "\n") {
		if strings.Contains(l, `"tunnel datapath"`) {
			t.Logf("appliance: %s", l) // which datapath these capabilities allow
		}
	}
	code, _, err := healthAt(ctx, e, 80)
	if err != nil || code != http.StatusOK {
		t.Fatalf("health on :80: %d %v", code, err)
	}
	m, err := e.Metrics(ctx)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	found := false
	for k, v := range m {
		if strings.HasPrefix(k, "gwlbproxy_build_info{") && v == 1 {
			t.Logf("metrics on %s: %s", demo.MetricsAddr, k)
			found = true
		}
	}
	if !found {
		t.Error("no gwlbproxy_build_info metric")
	}
	for _, url := range []string{"https://" + demo.HostApp + "/", "http://" + demo.HostApp + "/"} {
		r := e.Clients[0].Get(ctx, url)
		if r.Err != nil || r.Status != 200 {
			t.Fatalf("%s: %v %d", url, r.Err, r.Status)
		}
		if _, err := e.Records.Wait(ctx, 1, func(rec *demo.Record) bool { return rec.Of(r) && rec.Status == 200 }); err != nil {
			t.Fatalf("%s: record not shipped to the CloudWatch fake: %v", url, err)
		}
	}
}

// TestNonRootMissingCapability: without a capability it needs, `run`
// refuses to start, names the capability, and exits with EX_NOPERM (77),
// which the unit lists in RestartPreventExitStatus=.
func TestNonRootMissingCapability(t *testing.T) {
	health80 := func(c *config.Config) {
		c.Health.Listen = netip.AddrPortFrom(gwlbsim.ApplianceAddr, 80).String()
	}
	for _, tc := range []struct {
		name    string
		caps    []string
		modify  func(*config.Config)
		missing string
	}{
		{"no-net-admin", []string{"CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}, nil, "CAP_NET_ADMIN"},
		{"no-net-raw", []string{"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}, nil, "CAP_NET_RAW"},
		{"no-bind-service-health-80", []string{"CAP_NET_ADMIN", "CAP_NET_RAW"}, health80, "CAP_NET_BIND_SERVICE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t, 2*time.Minute)
			_, err := startNonRoot(ctx, t, tc.caps, tc.modify)
			if err == nil {
				t.Fatalf("appliance became ready without %s", tc.missing)
			}
			if !strings.Contains(err.Error(), "missing capabilities in the effective set: "+tc.missing) || !strings.Contains(err.Error(), "exit status 77") {
				t.Fatalf("error does not name %s with exit status 77: %v", tc.missing, err)
			}
			t.Logf("refused as expected: %v", err)
		})
	}
}

// healthAt asks the health check on port, from the appliance namespace.
func healthAt(ctx context.Context, e *demo.Env, port int) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/", netip.AddrPortFrom(gwlbsim.ApplianceAddr, uint16(port))), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := e.Net.Topo.Appliance.HTTPClient(20*time.Second, &net.Dialer{}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
