package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
	"github.com/gwlbproxy/gwlbproxy/logship/evetail"
	"github.com/gwlbproxy/gwlbproxy/proxy/mirror"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
)

// suricataConfig is a minimal Suricata 7 configuration: af-packet capture
// of the mirror device with checksum checks on (the mirror's checksums must
// be right), HTTP parsing, alerts to eve.json.
const suricataConfig = `%%YAML 1.1
---
vars:
  address-groups:
    HOME_NET: "any"
    EXTERNAL_NET: "any"
  port-groups:
    HTTP_PORTS: "80"
default-log-dir: %[1]s
logging:
  default-log-level: info
  outputs:
    - file:
        enabled: yes
        filename: %[1]s/suricata.log
outputs:
  - eve-log:
      enabled: yes
      filetype: regular
      filename: eve.json
      types:
        - alert
        - http
af-packet:
  - interface: %[2]s
    cluster-id: 91
    cluster-type: cluster_flow
    checksum-checks: yes
app-layer:
  protocols:
    http:
      enabled: yes
stream:
  checksum-validation: yes
`

// suricataRule alerts on the upstream's marker in a decrypted response body.
const suricataRule = `alert http any any -> any any (msg:"gwlbproxy test: marker in response body"; flow:established,to_client; http.response_body; content:"` + upstreamMarker + `"; sid:1900001; rev:1;)
`

// TestSuricataSeesBumpedTraffic: real Suricata 7 captures the decryption
// mirror. A rule on the response body of a bumped HTTPS request fires, with
// the real client's address and port and the original destination; a
// spliced connection with the same body raises nothing (never decrypted);
// an IPv6 conversation through the same mirror fires too. logship's tailer
// then ships both alerts to the CloudWatch Logs fake as ids_alert records,
// the IPv4 one on exactly the bumped request record's 5-tuple.
func TestSuricataSeesBumpedTraffic(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespace, tap device, packet capture")
	}
	bin, err := exec.LookPath("suricata")
	if err != nil {
		t.Skip("suricata not installed (.ci/run installs it from bookworm-backports)")
	}
	const dev = "idssuri0"
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "suricata.yaml"), []byte(fmt.Sprintf(suricataConfig, dir, dev)), 0o644)
	os.WriteFile(filepath.Join(dir, "local.rules"), []byte(suricataRule), 0o644)

	ns, err := inns.New("suri-" + inns.RandSuffix())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()

	var m *mirror.Mirror
	var cmd *exec.Cmd
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The device and Suricata live in the test's namespace: a process
	// forked from a thread inside it starts there.
	if err := ns.Do(func() error {
		cfg := mirror.DefaultConfig()
		cfg.Enabled, cfg.Interface = true, dev
		var err error
		if m, err = mirror.Open(cfg); err != nil {
			return err
		}
		cmd = exec.CommandContext(ctx, bin, "-c", filepath.Join(dir, "suricata.yaml"), "--af-packet="+dev,
			"-l", dir, "-S", filepath.Join(dir, "local.rules"), "--runmode", "workers")
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 10 * time.Second
		return cmd.Start()
	}); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	defer func() { cancel(); cmd.Wait() }()
	waitUntil(t, "Suricata to start capturing", 60*time.Second, func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "suricata.log"))
		return strings.Contains(string(b), "Engine started")
	})

	h := newHarnessOpts(t, harnessOpts{deps: func(_ *harness, d *Deps) { d.Mirror = m }})
	// Bumped HTTPS (HTTP/1.1).
	bump, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "good.test", RootCAs: h.clientCA, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	bumpPort := bump.LocalAddr().(*net.TCPAddr).Port
	fmt.Fprintf(bump, "GET /ids-bump HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n")
	if b, _ := io.ReadAll(bump); !strings.Contains(string(b), upstreamMarker) {
		t.Fatalf("bump response %q", b)
	}
	bump.Close()
	// Spliced, same body.
	sp, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "splice.test", RootCAs: h.upCA.pool()})
	if err != nil {
		t.Fatal(err)
	}
	splicePort := sp.LocalAddr().(*net.TCPAddr).Port
	fmt.Fprintf(sp, "GET /ids-splice HTTP/1.1\r\nHost: splice.test\r\nConnection: close\r\n\r\n")
	if b, _ := io.ReadAll(sp); !strings.Contains(string(b), upstreamMarker) {
		t.Fatalf("splice response %q", b)
	}
	sp.Close()
	h.rec.wait(t, "splice record", field("action", "splice"))

	// IPv6: the mirror's own conversation (the harness's clients are
	// IPv4), same marker in the response body.
	c6, s6 := netip.MustParseAddrPort("[2001:db8::10]:40600"), netip.MustParseAddrPort("[2001:db8:1::5]:443")
	ms := m.Start(c6, s6)
	ms.Client([]byte("GET /ids-v6 HTTP/1.1\r\nHost: good.test\r\n\r\n"))
	body6 := upstreamMarker + " over IPv6"
	ms.Server([]byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(body6), body6)))
	ms.Close()

	var alert map[string]any
	waitUntil(t, "the alert in eve.json", 30*time.Second, func() bool {
		for _, ev := range readEve(t, filepath.Join(dir, "eve.json")) {
			if ev["event_type"] == "alert" && ev["dest_ip"] == "127.0.0.1" {
				alert = ev
				return true
			}
		}
		return false
	})
	var alert6 map[string]any
	waitUntil(t, "the IPv6 alert in eve.json", 30*time.Second, func() bool {
		for _, ev := range readEve(t, filepath.Join(dir, "eve.json")) {
			// Suricata writes IPv6 addresses fully expanded.
			if ev["event_type"] == "alert" && sameIP(ev["dest_ip"], "2001:db8::10") {
				alert6 = ev
				return true
			}
		}
		return false
	})
	if !sameIP(alert6["src_ip"], "2001:db8:1::5") || alert6["src_port"] != float64(443) || alert6["dest_port"] != float64(40600) {
		t.Errorf("IPv6 alert %v", alert6)
	}
	// Give Suricata time to see everything else, then stop it (flushes).
	time.Sleep(2 * time.Second)
	cancel()
	cmd.Wait()
	t.Logf("eve alert: %v", alert)
	a, _ := alert["alert"].(map[string]any)
	if alert["src_ip"] != "203.0.113.10" || alert["src_port"] != float64(443) || alert["dest_ip"] != "127.0.0.1" || alert["dest_port"] != float64(bumpPort) ||
		a["signature_id"] != float64(1900001) {
		t.Errorf("alert %v: want 203.0.113.10:443 -> 127.0.0.1:%d (to_client), sid 1900001", alert, bumpPort)
	}
	alerts := 0
	for _, ev := range readEve(t, filepath.Join(dir, "eve.json")) {
		if ev["event_type"] != "alert" {
			continue
		}
		alerts++
		if ev["dest_port"] == float64(splicePort) || ev["src_port"] == float64(splicePort) {
			t.Errorf("alert on the spliced connection: %v", ev)
		}
	}
	if alerts != 2 {
		t.Errorf("%d alerts, want 2 (bumped IPv4, IPv6)", alerts)
	}
	// The alerts go through logship (tailer, spool, real AWS SDK) to the
	// CloudWatch Logs fake, and join the bumped request's record on the
	// 5-tuple.
	req := h.rec.wait(t, "bump record", field("path", "/ids-bump"))
	shipped := shipAlerts(t, filepath.Join(dir, "eve.json"), 2)
	var joined, v6 bool
	for _, r := range shipped {
		if r["record_type"] != "ids_alert" || r["signature_id"] != float64(1900001) {
			t.Errorf("shipped %v", r)
		}
		if r["client_ip"] == req["client_ip"] && r["client_port"] == req["client_port"] && r["dst_ip"] == req["dst_ip"] && r["dst_port"] == req["dst_port"] {
			joined = true
		}
		if r["client_ip"] == "2001:db8::10" && r["client_port"] == float64(40600) && r["dst_ip"] == "2001:db8:1::5" {
			v6 = true
		}
	}
	if !joined || !v6 {
		t.Errorf("ids_alert records %v: want one on the request's 5-tuple %v:%v -> %v:%v and one IPv6", shipped, req["client_ip"], req["client_port"], req["dst_ip"], req["dst_port"])
	}
	if st := m.Stats(); st.Streams != 2 || st.Dropped != 0 || st.WriteErrors != 0 {
		t.Errorf("mirror stats %+v", st)
	}
}

// shipAlerts runs logship's eve.json tailer with a real shipper pointed at
// the CloudWatch Logs fake and returns the records that arrived.
func shipAlerts(t *testing.T, eve string, want int) []map[string]any {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDSURICATATEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "suricata-test-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	fake := cwlfake.New(cwlfake.Options{})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	dir := t.TempDir()
	lc := logship.DefaultConfig()
	lc.Sink = logship.SinkCloudWatch
	lc.CloudWatch.LogGroup, lc.CloudWatch.LogStream = "/gwlbproxy/records", "i-test"
	lc.CloudWatch.AWS, lc.CloudWatch.CreateGroup = cwlfake.AWSConfig(srv.URL, "eu-west-1"), true
	lc.Spool.Dir = filepath.Join(dir, "spool")
	lc.DeadLetterPath = filepath.Join(dir, "dead.jsonl")
	lc.FlushInterval = 20 * time.Millisecond
	sh, err := logship.New(context.Background(), lc, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close(context.Background())
	tl, err := evetail.New(evetail.Config{Path: eve, StateFile: filepath.Join(dir, "eve.pos"), Poll: 10 * time.Millisecond, InstanceID: "i-test"}, sh, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tl.Run(ctx)
	var out []map[string]any
	waitUntil(t, "ids_alert records at the CloudWatch Logs fake", 30*time.Second, func() bool {
		out = out[:0]
		for _, ev := range fake.Events("/gwlbproxy/records", "i-test") {
			var r map[string]any
			if json.Unmarshal([]byte(ev.Message), &r) == nil {
				out = append(out, r)
			}
		}
		return len(out) >= want
	})
	return out
}

func sameIP(v any, want string) bool {
	s, _ := v.(string)
	a, err := netip.ParseAddr(s)
	return err == nil && a == netip.MustParseAddr(want)
}

func readEve(t *testing.T, path string) []map[string]any {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var evs []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev map[string]any
		if json.Unmarshal(sc.Bytes(), &ev) == nil {
			evs = append(evs, ev)
		}
	}
	return evs
}

func waitUntil(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
