package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv/imdsfake"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/cfnsignal/cfnfake"
)

// TestCFNSignal runs the subcommand as the user data does, against a fake
// IMDS (instance id, region) and a fake CloudFormation, with credentials
// from the environment standing in for the instance role's.
func TestCFNSignal(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	imds := httptest.NewServer(&imdsfake.Server{InstanceID: "i-0123456789abcdef0", Region: "eu-west-1"})
	defer imds.Close()
	fake := &cfnfake.CloudFormation{Waiting: map[string]bool{"egress/AutoScalingGroup": true}}
	cfn := httptest.NewServer(fake)
	defer cfn.Close()
	healthy := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer healthy.Close()
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(503) }))
	defer sick.Close()

	base := []string{"cfn-signal", "--stack", "egress", "--resource", "AutoScalingGroup",
		"--imds-endpoint", imds.URL, "--endpoint", cfn.URL, "--health-timeout", "300ms", "--config", filepath.Join(t.TempDir(), "none.yaml")}
	if code, out, errs := run(t, append(base, "--wait-healthy", healthy.URL+"/healthz")...); code != 0 || !strings.Contains(out, "signalled SUCCESS") {
		t.Fatalf("healthy: exit %d\n%s\n%s", code, out, errs)
	}
	if code, out, errs := run(t, append(base, "--wait-healthy", sick.URL+"/healthz")...); code != 1 || !strings.Contains(out, "signalled FAILURE") {
		t.Fatalf("unhealthy: exit %d, want 1 after signalling FAILURE\n%s\n%s", code, out, errs)
	}
	if code, out, errs := run(t, append(base, "--status", "failure")...); code != 0 || !strings.Contains(out, "signalled FAILURE") {
		t.Fatalf("--status failure: exit %d\n%s\n%s", code, out, errs)
	}
	got := fake.Signals()
	want := []string{"SUCCESS", "FAILURE", "FAILURE"}
	if len(got) != len(want) {
		t.Fatalf("signals %+v", got)
	}
	for i, s := range got {
		if s.Status != want[i] || s.UniqueID != "i-0123456789abcdef0" || s.StackName != "egress" {
			t.Errorf("signal %d = %+v, want %s from the IMDS instance id", i, s, want[i])
		}
	}

	for _, bad := range [][]string{
		{"cfn-signal", "--resource", "x"},
		{"cfn-signal", "--stack", "s", "--resource", "r", "--status", "maybe"},
	} {
		if code, _, errs := run(t, bad...); code != 1 || !strings.Contains(errs, "--") {
			t.Errorf("%v: exit %d %q", bad, code, errs)
		}
	}
}

// TestCFNSignalFromConfig (issue 17): without endpoint flags, cfn-signal
// takes the IMDS and CloudFormation endpoints and the region from the
// appliance config's aws: section; a config that does not load (the
// daemon failed on it) only warns, so the FAILURE still gets out.
func TestCFNSignalFromConfig(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_REGION", "")
	md := &imdsfake.Server{InstanceID: "i-0123456789abcdef0", Region: "eu-west-1"}
	imds := httptest.NewServer(md)
	defer imds.Close()
	fake := &cfnfake.CloudFormation{Waiting: map[string]bool{"egress/AutoScalingGroup": true}}
	cfn := httptest.NewServer(fake)
	defer cfn.Close()
	dir := t.TempDir()
	good := filepath.Join(dir, "gwlbproxy.yaml")
	os.WriteFile(good, []byte("aws:\n  region: ap-southeast-2\n  imds_endpoint: "+imds.URL+"\n  endpoints:\n    cloudformation: "+cfn.URL+"\n"), 0o600)
	code, out, errs := run(t, "cfn-signal", "--stack", "egress", "--resource", "AutoScalingGroup", "--config", good)
	if code != 0 || !strings.Contains(out, "signalled SUCCESS") {
		t.Fatalf("config's aws section: exit %d\n%s\n%s", code, out, errs)
	}
	if s := fake.Signals(); len(s) != 1 || s[0].UniqueID != "i-0123456789abcdef0" {
		t.Fatalf("signals %+v", s)
	}
	if md.Reads("meta-data/placement/region") != 0 {
		t.Error("IMDS asked for the region though aws.region names it")
	}
	broken := filepath.Join(dir, "broken.yaml")
	os.WriteFile(broken, []byte("tunnel:\n  mtu: 70000\n"), 0o600)
	code, out, errs = run(t, "cfn-signal", "--stack", "egress", "--resource", "AutoScalingGroup", "--status", "failure",
		"--config", broken, "--imds-endpoint", imds.URL, "--endpoint", cfn.URL)
	if code != 0 || !strings.Contains(out, "signalled FAILURE") || !strings.Contains(errs, "tunnel.mtu") {
		t.Fatalf("broken config: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs := run(t, "cfn-signal", "--stack", "s", "--resource", "r", "--config", broken, "--endpoint", "ftp://x"); code != 1 || !strings.Contains(errs, "aws.endpoints.cloudformation") {
		t.Fatalf("bad --endpoint: exit %d %q", code, errs)
	}
}
