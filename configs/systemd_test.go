package configs

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const unitPath = "gwlbproxy.service"

// unit is a parsed systemd unit: section -> key -> values in file order
// (keys such as SystemCallFilter= may repeat).
type unit map[string]map[string][]string

func parseUnit(path string) (unit, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	u := unit{}
	var sec string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			sec = line[1 : len(line)-1]
			if u[sec] == nil {
				u[sec] = map[string][]string{}
			}
		case strings.HasSuffix(line, `\`):
			return nil, fmt.Errorf("%s:%d: continuation lines are not used here", path, n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || sec == "" {
				return nil, fmt.Errorf("%s:%d: not key=value in a section: %q", path, n, line)
			}
			k = strings.TrimSpace(k)
			u[sec][k] = append(u[sec][k], strings.TrimSpace(v))
		}
	}
	return u, sc.Err()
}

func (u unit) get(sec, key string) string {
	v := u[sec][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func mustUnit(t *testing.T) unit {
	t.Helper()
	u, err := parseUnit(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// unitSeconds parses a systemd time span such as "90s", "1min 30s", "90".
func unitSeconds(t *testing.T, u unit, sec, key string) int {
	t.Helper()
	v := u.get(sec, key)
	if v == "" {
		t.Fatalf("[%s] %s= not set", sec, key)
	}
	if n, err := strconv.Atoi(v); err == nil {
		return n
	}
	s := strings.NewReplacer("min", "m", " ", "").Replace(v)
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("[%s] %s=%s: %v", sec, key, v, err)
	}
	return int(d / time.Second)
}

// TestUnit checks the service's supervision, privileges and hardening.
// `systemd-analyze verify` (run by .ci/validate-configs.sh) checks the
// syntax; this checks the intent.
func TestUnit(t *testing.T) {
	u := mustUnit(t)
	want := map[string]string{
		"Type":             "notify",
		"NotifyAccess":     "main",
		"Restart":          "always",
		"ExecStart":        "/usr/bin/gwlbproxy run --config " + configPath,
		"ExecReload":       "/bin/kill -HUP $MAINPID", // issue 18: systemctl reload
		"StateDirectory":   "gwlbproxy",
		"NoNewPrivileges":  "yes",
		"ProtectSystem":    "strict",
		"PrivateTmp":       "yes",
		"ProtectHome":      "yes",
		"DevicePolicy":     "closed",
		"DeviceAllow":      "/dev/net/tun rw",
		"User":             "gwlbproxy",
		"KillSignal":       "SIGTERM",
		"RuntimeDirectory": "gwlbproxy",
		// File sink under ProtectSystem=strict.
		"LogsDirectory": "gwlbproxy",
		// Config error (78) and missing capability (77) must not loop.
		"RestartPreventExitStatus": "77 78",
	}
	for _, k := range sortedKeys(want) {
		if got := u.get("Service", k); got != want[k] {
			t.Errorf("[Service] %s=%q, want %q", k, got, want[k])
		}
	}
	if wd := unitSeconds(t, u, "Service", "WatchdogSec"); wd < 10 {
		t.Errorf("WatchdogSec=%ds is too tight for a loaded box", wd)
	}
	// The appliance writes /proc/sys/net and opens /dev/net/tun.
	for _, k := range []string{"ProtectKernelTunables", "PrivateDevices", "PrivateNetwork", "ProcSubset"} {
		if v := u.get("Service", k); v != "" && v != "no" && v != "all" {
			t.Errorf("[Service] %s=%s would break tunnels or net sysctls", k, v)
		}
	}
	caps := []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_PERFMON"}
	for _, k := range []string{"CapabilityBoundingSet", "AmbientCapabilities"} {
		got := strings.Fields(u.get("Service", k))
		slices.Sort(got)
		if !slices.Equal(got, caps) {
			t.Errorf("[Service] %s=%v, want exactly %v", k, got, caps)
		}
	}
	fams := strings.Fields(u.get("Service", "RestrictAddressFamilies"))
	for _, f := range []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} {
		if !slices.Contains(fams, f) {
			t.Errorf("RestrictAddressFamilies lacks %s", f)
		}
	}
	if u.get("Unit", "ConditionPathExists") != configPath {
		t.Errorf("[Unit] ConditionPathExists=%q, want %s (never run on defaults)", u.get("Unit", "ConditionPathExists"), configPath)
	}
	if u.get("Install", "WantedBy") != "multi-user.target" {
		t.Errorf("[Install] WantedBy=%q", u.get("Install", "WantedBy"))
	}
	// The health check's port is privileged: CAP_NET_BIND_SERVICE is
	// needed exactly while the template's default port is below 1024.
	if _, port := refParam(t, mustTemplate(t), map[string]any{"Ref": "HealthCheckPort"}, "HealthCheckPort"); port >= 1024 {
		t.Errorf("health port %d needs no CAP_NET_BIND_SERVICE; drop it", port)
	}
}

// TestUnitParserRejects keeps the parser honest.
func TestUnitParserRejects(t *testing.T) {
	for _, src := range []string{"Type=notify\n", "[Service]\nnot a pair\n", "[Service]\nExecStart=/a \\\n  b\n"} {
		if _, err := parseUnit(writeTemp(t, src)); err == nil {
			t.Errorf("accepted %q", src)
		}
	}
	u, err := parseUnit(writeTemp(t, "[Service]\nSystemCallFilter=@a\nSystemCallFilter=~@b\nTimeoutStopSec=1min 30s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := u["Service"]["SystemCallFilter"]; len(got) != 2 {
		t.Errorf("repeated key: %v", got)
	}
	if s := unitSeconds(t, u, "Service", "TimeoutStopSec"); s != 90 {
		t.Errorf("1min 30s = %ds", s)
	}
}
