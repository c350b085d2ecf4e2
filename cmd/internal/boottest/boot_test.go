package boottest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

const (
	unit      = "gwlbproxy.service"
	logGroup  = "/gwlbproxy/boottest"
	logStream = "boottest"
	// Test-only timing: the unit's WatchdogSec=30s would make the
	// watchdog step wait half a minute; a drop-in shortens it.
	watchdogSec = 6
)

// TestBootAppliance: see the package documentation.
func TestBootAppliance(t *testing.T) {
	requireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	tarPath := rootfsTar(ctx, t)
	deb := releaseDeb(ctx, t)
	work := t.TempDir()
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := run(ctx, "tar", "--numeric-owner", "-xpf", tarPath, "-C", root); err != nil {
		t.Fatal(err)
	}
	t.Logf("root file system unpacked in %s", time.Since(start).Round(time.Millisecond))

	// Provision with the script the Packer template runs, from the .deb.
	copyFile(t, deb, filepath.Join(root, "var", "tmp", "gwlbproxy.deb"), 0o644)
	copyFile(t, filepath.Join(repoRoot(t), "configs", "provision.sh"), filepath.Join(root, "var", "tmp", "provision.sh"), 0o755)
	out, err := run(ctx, "systemd-nspawn", "--register=no", "--keep-unit", "-q", "-P", "-D", root,
		"sh", "-c", "GWLBPROXY_NO_APT_UPDATE=1 sh /var/tmp/provision.sh /var/tmp/gwlbproxy.deb && "+
			"gwlbproxy ca init --owner gwlbproxy --dir /etc/gwlbproxy/ca --name 'gwlbproxy boot test CA' --validity 24h && "+
			"rm /var/tmp/gwlbproxy.deb /var/tmp/provision.sh")
	if err != nil {
		t.Fatalf("provisioning: %v", err)
	}
	t.Logf("provisioned:\n%s", tail(out, 8))
	for _, p := range []string{"usr/bin/gwlbproxy", "lib/systemd/system/gwlbproxy.service", "etc/gwlbproxy/gwlbproxy.yaml.example",
		"usr/lib/sysctl.d/90-gwlbproxy.conf", "usr/lib/modules-load.d/gwlbproxy.conf", "etc/systemd/system/multi-user.target.wants/gwlbproxy.service"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("after provisioning: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "etc/gwlbproxy/gwlbproxy.yaml")); err == nil {
		t.Error("provisioning wrote a live /etc/gwlbproxy/gwlbproxy.yaml")
	}
	gid := lookupID(t, filepath.Join(root, "etc/group"), "gwlbproxy")

	// The network: GWLB simulator, the appliance namespace the container
	// boots in, an internet with the test site.
	nw, err := demo.NewNetworkSim(ctx, steer.EgressNAT, "gb", gwlbsim.Config{}, 0)
	if err != nil {
		t.Fatalf("network: %v", err)
	}
	t.Cleanup(func() {
		if err := nw.Close(); err != nil {
			t.Errorf("network cleanup: %v", err)
		}
	})
	// The CloudWatch Logs fake runs in this process, outside the
	// container; the appliance reaches it on the namespace's loopback.
	fake := cwlfake.New(cwlfake.Options{})
	var ln net.Listener
	if err := nw.Topo.Appliance.Do(func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:0"); return }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fake, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	// Files the operator (cloud-init) writes: config, upstream CA bundle,
	// and a drop-in with the fake's static credentials and the test's
	// watchdog period.
	writeFile(t, filepath.Join(root, "etc/gwlbproxy/internet-ca.pem"), nw.Internet.CAPEM, 0o644, 0)
	cfg := applianceConfig("http://" + ln.Addr().String())
	good, err := cfg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.Parse(good); err != nil {
		t.Fatalf("generated config: %v", err)
	}
	writeFile(t, filepath.Join(root, "etc/systemd/system/gwlbproxy.service.d/boottest.conf"), []byte(fmt.Sprintf(`[Service]
Environment=AWS_ACCESS_KEY_ID=boottest AWS_SECRET_ACCESS_KEY=boottest AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
WatchdogSec=%ds
`, watchdogSec)), 0o644, 0)

	m := Boot(ctx, t, root, nw.Topo.Appliance.Name)
	t.Cleanup(func() {
		if t.Failed() {
			j, _ := m.Exec(context.Background(), "journalctl", "-u", unit, "--no-pager", "-n", "60", "-o", "cat")
			t.Logf("journal of %s:\n%s", unit, j)
		}
	})
	// No config yet: the enabled unit was skipped at boot.
	if st := m.Show(ctx, unit, "ActiveState", "ConditionResult"); st["ActiveState"] != "inactive" || st["ConditionResult"] != "no" {
		t.Errorf("without a config the unit should be skipped by its condition: %v", st)
	}
	// nspawn copies the host's /dev/net/tun; on a real host udev makes
	// it 0666 (50-udev-default.rules), so the service user with
	// CAP_NET_ADMIN can open it. Do what udev does.
	t.Logf("/dev/net/tun in the container: %s", strings.TrimSpace(m.MustExec(ctx, "stat", "-c", "%A %U:%G", "/dev/net/tun")))
	m.MustExec(ctx, "chmod", "0666", "/dev/net/tun")
	writeFile(t, filepath.Join(root, "etc/gwlbproxy/gwlbproxy.yaml"), good, 0o640, gid)

	// 1. start reaches READY (Type=notify: systemctl start returns then).
	start = time.Now()
	if _, err := m.Exec(ctx, "systemctl", "start", unit); err != nil {
		t.Fatalf("systemctl start: %v", err)
	}
	st := m.Show(ctx, unit, "ActiveState", "SubState", "MainPID", "User", "NRestarts")
	t.Logf("systemctl start returned after %s: %v", time.Since(start).Round(time.Millisecond), st)
	if st["ActiveState"] != "active" || st["SubState"] != "running" {
		t.Fatalf("unit not running after start: %v", st)
	}
	status := m.MustExec(ctx, "cat", "/proc/"+st["MainPID"]+"/status")
	for _, l := range strings.Split(status, "\n") {
		if strings.HasPrefix(l, "Uid:") || strings.HasPrefix(l, "CapEff:") {
			t.Logf("main process %s", l)
		}
	}

	j0 := m.MustExec(ctx, "journalctl", "-u", unit, "--no-pager", "-o", "cat")
	for _, l := range strings.Split(j0, "\n") {
		if strings.Contains(l, `"tunnel datapath"`) {
			t.Logf("journal: %s", l)
		}
	}

	// 2. health on :80 answers 200.
	hc := nw.Topo.Appliance.HTTPClient(10*time.Second, &net.Dialer{})
	code, body := get(t, hc, "http://"+netip.AddrPortFrom(gwlbsim.ApplianceAddr, 80).String()+"/")
	if code != http.StatusOK {
		t.Fatalf("health: %d %s", code, body)
	}

	code, body = get(t, hc, "http://"+config.Default().Metrics.Listen+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, "gwlbproxy_build_info{") {
		t.Errorf("metrics on the default %s: %d, build_info present %v", config.Default().Metrics.Listen, code, strings.Contains(body, "gwlbproxy_build_info{"))
	}
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "gwlbproxy_build_info{") {
			t.Logf("metrics: %s", l)
		}
	}

	// 3. traffic through GENEVE: a bumped HTTPS and a plain HTTP request.
	roots, err := demo.Roots(filepath.Join(root, "etc/gwlbproxy/ca/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots.AddCert(nw.Internet.CACert)
	client := &demo.Client{Name: "VPC A", NS: nw.Topo.Endpoints[0].Client, Roots: roots}
	var results []demo.Result
	for _, url := range []string{"https://" + demo.HostApp + "/", "http://" + demo.HostApp + "/"} {
		r := client.Get(ctx, url)
		if r.Err != nil || r.Status != 200 {
			t.Fatalf("%s through the appliance: %v %d", url, r.Err, r.Status)
		}
		results = append(results, r)
	}
	if r := results[0]; r.Issuer != "gwlbproxy boot test CA" {
		t.Errorf("HTTPS leaf issued by %q, want the appliance CA (bumped)", r.Issuer)
	}
	sim := nw.Sim.Stats()
	t.Logf("GWLB simulator: sent %d GENEVE packets, %d came back, delivered %d; option mismatches %d, wrong source %d",
		sim.Sent, sim.Returned, sim.Delivered, sim.OptionMismatch, sim.WrongSource)
	if sim.Returned == 0 || sim.OptionMismatch != 0 || sim.WrongSource != 0 || sim.BadGeneve != 0 {
		t.Errorf("GENEVE did not come back intact: %+v", sim)
	}
	waitRecords(ctx, t, fake, results)
	t.Log("records of both requests reached the CloudWatch Logs fake")

	// 3b. systemctl reload puts a changed policy in force in the same
	// process; an invalid one is refused and the old one stays.
	reloadPolicy(ctx, t, reloadEnv{m: m, root: root, gid: gid, cfg: cfg, good: good,
		hc: hc, client: client, fake: fake, allowed: results})

	// 4. stop drains within TimeoutStopSec, no record lost.
	batch := requests(ctx, t, client, 20)
	start = time.Now()
	m.MustExec(ctx, "systemctl", "stop", unit)
	stopTook := time.Since(start)
	st = m.Show(ctx, unit, "ActiveState", "Result", "ExecMainStatus", "TimeoutStopUSec")
	t.Logf("systemctl stop took %s: %v", stopTook.Round(time.Millisecond), st)
	if st["Result"] != "success" || st["ExecMainStatus"] != "0" {
		t.Errorf("stop: %v, want result success and exit status 0", st)
	}
	if stopTook > 90*time.Second {
		t.Errorf("stop took %s, longer than TimeoutStopSec", stopTook)
	}
	results = append(results, batch...)
	if got := recordsOf(t, fake, results); len(got) != len(results) {
		t.Fatalf("after stop %d of %d records are in CloudWatch Logs: lost on drain", len(got), len(results))
	}
	t.Logf("all %d records delivered by the drain", len(results))

	// 5. watchdog: a stopped process is killed and restarted by systemd;
	// nothing is lost and at most the batches in flight come again.
	m.MustExec(ctx, "systemctl", "start", unit)
	before := m.Show(ctx, unit, "MainPID", "NRestarts")
	shipped := requests(ctx, t, client, 10)
	waitRecords(ctx, t, fake, shipped)
	// The spool saves the acknowledged position group-committed after the
	// frames' fsync (logship.spool.fsync_interval, 200 ms): give it that.
	time.Sleep(time.Second)
	unsent := requests(ctx, t, client, 10)
	m.MustExec(ctx, "systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", unit)
	t.Logf("SIGSTOP to main pid %s; waiting for the watchdog (WatchdogSec=%ds)", before["MainPID"], watchdogSec)
	deadline := time.Now().Add(time.Duration(watchdogSec)*time.Second + 90*time.Second)
	for {
		st = m.Show(ctx, unit, "MainPID", "NRestarts", "ActiveState", "SubState")
		if st["NRestarts"] != before["NRestarts"] && st["ActiveState"] == "active" && st["SubState"] == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not restarted by the watchdog: %v (before %v)", st, before)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("restarted: %v (before %v)", st, before)
	j := m.MustExec(ctx, "journalctl", "-u", unit, "--no-pager", "-o", "cat")
	if !strings.Contains(j, "Watchdog timeout") {
		t.Errorf("journal does not show the watchdog timeout")
	}
	all := append(append(results, shipped...), unsent...)
	waitRecords(ctx, t, fake, all)
	// Records delivered (and acknowledged) before the SIGSTOP must not
	// come again; only those possibly in flight (the last requests) may.
	counts := make(map[string]int)
	for _, r := range records(t, fake) {
		counts[r.RecordID]++
	}
	delivered := recordsOf(t, fake, append(results, shipped...))
	againDelivered, againInFlight := 0, 0
	for _, r := range delivered {
		againDelivered += counts[r.RecordID] - 1
	}
	for _, r := range recordsOf(t, fake, unsent) {
		againInFlight += counts[r.RecordID] - 1
	}
	t.Logf("after the watchdog restart: all %d records delivered; sent again: %d of the %d acknowledged before the SIGSTOP, %d of the %d in flight",
		len(all), againDelivered, len(delivered), againInFlight, len(unsent))
	if againDelivered > 0 {
		t.Errorf("%d records acknowledged before the SIGSTOP were sent again after the restart", againDelivered)
	}

	// 6. a broken config fails the unit once, with the error in the
	// journal, and no restart loop.
	m.MustExec(ctx, "systemctl", "stop", unit)
	writeFile(t, filepath.Join(root, "etc/gwlbproxy/gwlbproxy.yaml"), append(good, []byte("\nhealht:\n  listen: \":81\"\n")...), 0o640, gid)
	if _, err := m.Exec(ctx, "systemctl", "start", unit); err == nil {
		t.Errorf("systemctl start succeeded with a broken config")
	}
	time.Sleep(3 * 2 * time.Second) // three RestartSec periods
	st = m.Show(ctx, unit, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
	t.Logf("with a broken config: %v", st)
	// An explicit start resets NRestarts; any automatic restart counts.
	if st["ActiveState"] != "failed" || st["ExecMainStatus"] != "78" || st["NRestarts"] != "0" {
		t.Errorf("broken config: %v, want failed with exit status 78 and no automatic restart", st)
	}
	j = m.MustExec(ctx, "journalctl", "-u", unit, "--no-pager", "-n", "20", "-o", "cat")
	if !strings.Contains(j, "healht") {
		t.Errorf("journal does not name the bad field:\n%s", j)
	}
	for _, l := range strings.Split(j, "\n") {
		if strings.Contains(l, "healht") {
			t.Logf("journal: %s", l)
		}
	}

	// 7. the file sink writes under LogsDirectory= (ProtectSystem=strict
	// leaves the rest of /var read-only), and the metrics endpoint on its
	// default port exports gwlbproxy_build_info.
	fileCfg := applianceConfig("http://" + ln.Addr().String())
	fileCfg.Logship.Sink = logship.SinkFile
	fb, err := fileCfg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "etc/gwlbproxy/gwlbproxy.yaml"), fb, 0o640, gid)
	m.MustExec(ctx, "systemctl", "reset-failed", unit)
	m.MustExec(ctx, "systemctl", "start", unit)
	fileReqs := requests(ctx, t, client, 2)
	m.MustExec(ctx, "systemctl", "stop", unit)
	recFile := filepath.Join(root, "var/log/gwlbproxy/records.jsonl")
	b, err := os.ReadFile(recFile)
	if err != nil {
		t.Fatalf("file sink: %v", err)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r demo.Record
		if json.Unmarshal([]byte(line), &r) == nil && (r.Of(fileReqs[0]) || r.Of(fileReqs[1])) {
			n++
		}
	}
	if n != len(fileReqs) {
		t.Errorf("file sink %s holds %d of the %d records", recFile, n, len(fileReqs))
	}
	if fi, err := os.Stat(filepath.Dir(recFile)); err == nil {
		t.Logf("file sink: %d records in /var/log/gwlbproxy/records.jsonl (directory mode %o, from LogsDirectory=)", n, fi.Mode().Perm())
	}

	// 8. the unit's exposure as systemd rates it.
	sec, _ := m.Exec(ctx, "systemd-analyze", "security", "--no-pager", unit)
	t.Logf("systemd-analyze security %s:\n%s", unit, sec)
}

// applianceConfig is the demo's appliance config (deny by default, the
// test site allowed and bumped) with the paths of the installed system,
// records to the CloudWatch fake at endpoint, health on :80 as GWLB probes.
func applianceConfig(endpoint string) config.Config {
	f := demo.Files{Dir: "/etc/gwlbproxy", ApplianceCA: "/etc/gwlbproxy/ca/ca.crt", InternetCA: "/etc/gwlbproxy/internet-ca.pem"}
	c := demo.ApplianceConfig(steer.EgressNAT, f)
	c.InstanceID = "boottest"
	c.Health.Listen = netip.AddrPortFrom(gwlbsim.ApplianceAddr, 80).String()
	c.Metrics = config.Default().Metrics
	c.Drain.Deadline = 5 * time.Second
	c.Logship.Spool.Dir = "/var/lib/gwlbproxy/spool"
	c.Logship.DeadLetterPath = "/var/lib/gwlbproxy/deadletter.jsonl"
	c.Logship.File.Path = "/var/log/gwlbproxy/records.jsonl"
	c.Logship.Sink = logship.SinkCloudWatch
	c.AWS.Endpoints.Logs = endpoint
	c.Logship.CloudWatch.Region = "us-east-1"
	c.Logship.CloudWatch.LogGroup = logGroup
	c.Logship.CloudWatch.LogStream = logStream
	c.Logship.CloudWatch.CreateGroup = true
	c.Logship.CloudWatch.PutTimeout = 5 * time.Second
	c.Logship.Retry.MinBackoff = 100 * time.Millisecond
	c.Logship.Retry.MaxBackoff = time.Second
	return c
}

func requests(ctx context.Context, t *testing.T, c *demo.Client, n int) []demo.Result {
	t.Helper()
	var rs []demo.Result
	for i := range n {
		url := "http://" + demo.HostApp + "/?n=" + strconv.Itoa(i)
		if i%2 == 0 {
			url = "https://" + demo.HostApp + "/?n=" + strconv.Itoa(i)
		}
		r := c.Get(ctx, url)
		if r.Err != nil || r.Status != 200 {
			t.Fatalf("%s: %v %d", url, r.Err, r.Status)
		}
		rs = append(rs, r)
	}
	return rs
}

// records parses every event the fake stored.
func records(t *testing.T, fake *cwlfake.Server) []demo.Record {
	t.Helper()
	var out []demo.Record
	for _, ev := range fake.Events(logGroup, logStream) {
		var r demo.Record
		if err := json.Unmarshal([]byte(ev.Message), &r); err != nil {
			t.Fatalf("record is not JSON: %v: %.200s", err, ev.Message)
		}
		out = append(out, r)
	}
	return out
}

// recordsOf returns the stored record of each result that has one.
func recordsOf(t *testing.T, fake *cwlfake.Server, rs []demo.Result) map[int]demo.Record {
	t.Helper()
	got := make(map[int]demo.Record)
	recs := records(t, fake)
	for i, res := range rs {
		for _, r := range recs {
			if r.Of(res) && r.Status == 200 {
				got[i] = r
				break
			}
		}
	}
	return got
}

func waitRecords(ctx context.Context, t *testing.T, fake *cwlfake.Server, rs []demo.Result) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := recordsOf(t, fake, rs)
		if len(got) == len(rs) {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("only %d of %d records reached the CloudWatch Logs fake", len(got), len(rs))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func get(t *testing.T, hc *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, b, mode, 0)
}

// writeFile writes b to path (owner root, group gid), creating parents.
func writeFile(t *testing.T, path string, b []byte, mode os.FileMode, gid int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// lookupID returns the numeric id of name in an /etc/passwd or /etc/group.
func lookupID(t *testing.T, file, name string) int {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) > 2 && fields[0] == name {
			id, err := strconv.Atoi(fields[2])
			if err != nil {
				t.Fatal(err)
			}
			return id
		}
	}
	t.Fatalf("%s: no entry %s (did the .deb create the user?)", file, name)
	return 0
}
