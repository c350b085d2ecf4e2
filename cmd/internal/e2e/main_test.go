// Package e2e runs the real gwlbproxy binary behind the GWLB simulator in
// network namespaces (cmd/internal/demo builds them) and checks what the
// demo shows plus load, memory, restart and health behaviour. It needs
// root; every test builds and removes its own namespaces.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
)

// binary is the gwlbproxy built once for the run by TestMain.
var binary string

// datapathEnv names the environment variable that runs the whole suite
// on one tunnel datapath (tunnel.datapath: auto, ebpf or userspace); unset,
// the appliance's default (auto) is used. make test runs the suite twice,
// once as deployed (auto: eBPF where the kernel allows) and once with
// userspace, so every end-to-end test covers both datapaths. A test that
// sets tunnel.datapath itself keeps its choice.
const datapathEnv = "GWLBPROXY_TEST_DATAPATH"

// withDatapath applies datapathEnv before the test's own modify.
func withDatapath(t *testing.T, modify func(*config.Config)) func(*config.Config) {
	dp := os.Getenv(datapathEnv)
	if dp == "" {
		return modify
	}
	t.Logf("tunnel.datapath: %s (%s)", dp, datapathEnv)
	return func(c *config.Config) {
		c.Tunnel.Datapath = dp
		if modify != nil {
			modify(c)
		}
	}
}

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "gwlbproxy-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		binary = filepath.Join(dir, "gwlbproxy")
		cmd := exec.Command("go", "build", "-o", binary, "github.com/gwlbproxy/gwlbproxy/cmd/gwlbproxy")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building gwlbproxy: %v\n", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// newEnv starts a demo deployment for the test and removes it at cleanup.
func newEnv(t *testing.T, mode string, modify func(*config.Config), cloudwatch bool) *demo.Env {
	t.Helper()
	return newEnvOpts(t, demo.Options{Mode: mode, Modify: modify, CloudWatchFake: cloudwatch})
}

// newEnvOpts is newEnv with every demo option (Prepare, for one); Binary,
// Dir, Prefix and Progress are filled in.
func newEnvOpts(t *testing.T, o demo.Options) *demo.Env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root (network namespaces, tun devices, nftables); run the suite as root, e.g. sudo go test ./cmd/internal/e2e")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o.Binary, o.Dir, o.Prefix = binary, t.TempDir(), "ge"
	o.Modify = withDatapath(t, o.Modify)
	o.Progress = func(s string) { t.Log(s) }
	e, err := demo.Start(ctx, o)
	if err != nil {
		t.Fatalf("demo environment: %v", err)
	}
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
	return e
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for {
		ok, s := cond()
		if ok {
			return
		}
		last = s
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last: %s)", d, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
