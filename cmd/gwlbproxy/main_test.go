package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runMain(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageAndHelp(t *testing.T) {
	if code, out, _ := run(t); code != 2 || !strings.Contains(out, "run ") || !strings.Contains(out, "check ") {
		t.Fatalf("no args: %d %q", code, out)
	}
	for _, c := range []string{"run", "check", "version", "ca"} {
		if code, _, errs := run(t, c, "--help"); code != 0 || !strings.Contains(errs, "usage: gwlbproxy "+c) {
			t.Errorf("%s --help: %d %q", c, code, errs)
		}
	}
	if code, _, errs := run(t, "nope"); code != 2 || !strings.Contains(errs, `unknown command "nope"`) {
		t.Fatalf("unknown: %d %q", code, errs)
	}
	if code, out, _ := run(t, "version"); code != 0 || !strings.HasPrefix(out, "gwlbproxy ") {
		t.Fatalf("version: %d %q", code, out)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("tunnel:\n  mtu: 9001\n  allowed_sources: [198.18.0.0/24]\n"), 0o644)
	code, out, errs := run(t, "check", "--config", good)
	if code != 0 || !strings.Contains(out, "mtu: 9001") || !strings.Contains(out, "198.18.0.0/24") {
		t.Fatalf("good: %d %q %q", code, out, errs)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("tunnel:\n  mtu: 70000\n"), 0o644)
	code, _, errs = run(t, "check", "--config", bad)
	if code != 1 || strings.Count(strings.TrimSpace(errs), "\n") != 0 || !strings.Contains(errs, "tunnel.mtu") {
		t.Fatalf("bad: want one line naming tunnel.mtu, got %d %q", code, errs)
	}
	code, _, errs = run(t, "check", "--config", filepath.Join(dir, "missing.yaml"))
	if code != 1 || !strings.Contains(errs, "missing.yaml") {
		t.Fatalf("missing: %d %q", code, errs)
	}
	code, out, _ = run(t, "check", "--config", good, "--explain")
	if code != 0 || !strings.Contains(out, "table inet") || !strings.Contains(out, "tproxy") || !strings.Contains(out, "# Destination binding") || !strings.Contains(out, "bind:dst-mismatch") {
		t.Fatalf("explain: %d %q", code, out)
	}
}

// The example config documents every key: it must parse, and it must
// spell out every key the effective config has.
func TestExampleConfigComplete(t *testing.T) {
	code, out, errs := run(t, "check", "--config", "../../configs/gwlbproxy.yaml")
	if code != 0 {
		t.Fatalf("configs/gwlbproxy.yaml: %s", errs)
	}
	example, _ := os.ReadFile("../../configs/gwlbproxy.yaml")
	for _, line := range strings.Split(out, "\n") {
		key, _, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || strings.HasPrefix(key, "-") {
			continue
		}
		if !bytes.Contains(example, []byte(key+":")) {
			t.Errorf("configs/gwlbproxy.yaml does not document key %q", key)
		}
	}
}

func TestCAInitExport(t *testing.T) {
	dir := t.TempDir()
	if code, out, errs := run(t, "ca", "init", "--dir", dir, "--name", "Test CA"); code != 0 || !strings.Contains(out, "ca.crt") {
		t.Fatalf("init: %d %q %q", code, out, errs)
	}
	if code, _, errs := run(t, "ca", "init", "--dir", dir); code != 1 || !strings.Contains(errs, "refusing to overwrite") {
		t.Fatalf("second init: %d %q", code, errs)
	}
	code, out, errs := run(t, "ca", "export", "--cert", filepath.Join(dir, "ca.crt"))
	if code != 0 {
		t.Fatalf("export: %q", errs)
	}
	blk, _ := pem.Decode([]byte(out))
	if blk == nil {
		t.Fatalf("export is not PEM: %q", out)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || !cert.IsCA || cert.Subject.CommonName != "Test CA" {
		t.Fatalf("exported cert: %v %+v", err, cert)
	}
	code, out, _ = run(t, "ca", "export", "--cert", filepath.Join(dir, "ca.crt"), "--der")
	if _, err := x509.ParseCertificate([]byte(out)); code != 0 || err != nil {
		t.Fatalf("der export: %d %v", code, err)
	}
}

// run's capability needs follow the config: CAP_NET_BIND_SERVICE only for
// a listener below the unprivileged port start.
func TestNeededCaps(t *testing.T) {
	c := config.Default()
	names := func(start int) string {
		var s []string
		for _, n := range neededCaps(&c, start) {
			s = append(s, n.Cap.String())
		}
		return strings.Join(s, " ")
	}
	c.Health.Listen = ":80"
	if got := names(1024); got != "CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE" {
		t.Errorf("health :80: %s", got)
	}
	if got := names(80); got != "CAP_NET_ADMIN CAP_NET_RAW" {
		t.Errorf("health :80, unprivileged start 80: %s", got)
	}
	c.Health.Listen = "198.18.0.2:8080"
	if got := names(1024); got != "CAP_NET_ADMIN CAP_NET_RAW" {
		t.Errorf("health :8080: %s", got)
	}
}

// A broken config ends `run` with EX_CONFIG (78), which the unit's
// RestartPreventExitStatus= names, before any capability check.
func TestRunConfigErrorExitCode(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("health:\n  listne: \":80\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs := run(t, "run", "--config", bad)
	if code != exitConfig || !strings.Contains(errs, "listne") {
		t.Fatalf("exit %d, stderr %q; want %d naming the field", code, errs, exitConfig)
	}
}

// issue 17: check validates the aws: section (one line naming the key),
// warns about the deprecated per-component keys it still accepts, and
// --explain says where each AWS consumer's calls go.
func TestCheckAWS(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "old.yaml")
	os.WriteFile(old, []byte("logship:\n  sink: cloudwatch\n  cloudwatch:\n    endpoint: http://198.18.0.1:4566\nsteer:\n  imds_endpoint: http://198.18.0.9\n"), 0o644)
	code, out, errs := run(t, "check", "--config", old, "--explain")
	if code != 0 || strings.Count(strings.TrimSpace(errs), "\n") != 0 ||
		!strings.Contains(errs, "logship.cloudwatch.endpoint -> aws.endpoints.logs") || !strings.Contains(errs, "steer.imds_endpoint -> aws.imds_endpoint") {
		t.Fatalf("deprecated keys: exit %d, want one warning line naming both\nstderr: %s", code, errs)
	}
	if !strings.Contains(out, "# AWS environment (aws)") || !strings.Contains(out, "logs (logship.sink cloudwatch): http://198.18.0.1:4566") ||
		!strings.Contains(out, "at http://198.18.0.9") || !strings.Contains(out, "logs: http://198.18.0.1:4566") {
		t.Fatalf("explain:\n%s", out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("aws:\n  endpoints:\n    ec2: ftp://198.18.0.2\n"), 0o644)
	if code, _, errs := run(t, "check", "--config", bad); code != 1 || strings.Count(strings.TrimSpace(errs), "\n") != 0 || !strings.Contains(errs, "aws.endpoints.ec2") {
		t.Fatalf("bad: want one line naming aws.endpoints.ec2, got %d %q", code, errs)
	}
}

// TestCAInitKMSUsesAWSSection (issue 17): `ca init --kms` builds its KMS
// client from the config's aws: section: the request reaches
// aws.endpoints.kms, signed for aws.region.
func TestCAInitKMSUsesAWSSection(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDCAINIT")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	var mu sync.Mutex
	var seen []string
	kms := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("X-Amz-Target")+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(400)
		io.WriteString(w, `{"__type":"NotFoundException","message":"no such key (fake)"}`)
	}))
	defer kms.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gwlbproxy.yaml")
	os.WriteFile(cfg, []byte("aws:\n  region: eu-north-1\n  imds: disabled\n  endpoints:\n    kms: "+kms.URL+"\n"), 0o600)
	code, _, errs := run(t, "ca", "init", "--kms", "alias/gwlbproxy-ca", "--out", filepath.Join(dir, "root.crt"), "--config", cfg)
	if code != 1 || !strings.Contains(errs, "no such key (fake)") {
		t.Fatalf("exit %d, want the fake's refusal\n%s", code, errs)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 || !strings.HasPrefix(seen[0], "TrentService.GetPublicKey ") || !strings.Contains(seen[0], "AKIDCAINIT/") || !strings.Contains(seen[0], "/eu-north-1/kms/aws4_request") {
		t.Fatalf("requests at aws.endpoints.kms: %q", seen)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("aws:\n  endpoints:\n    kms: kms.internal\n"), 0o600)
	if code, _, errs := run(t, "ca", "init", "--kms", "k", "--out", filepath.Join(dir, "x.crt"), "--config", bad); code != 1 || !strings.Contains(errs, "aws.endpoints.kms") {
		t.Fatalf("bad endpoint: exit %d %q", code, errs)
	}
}
