package main

import (
	"net/http"
	"net/http/httptest"
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
