package proxybench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/nsexec"
)

// TestMain lets the test binary stand in for `gwlbproxy bench proxy-server`
// (ServerCommand below), run in the router namespace through nsexec.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "proxy-server" {
		if err := nsexec.Enter(); err != nil {
			fmt.Fprintln(os.Stderr, "enter:", err)
			os.Exit(1)
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err := ServerMain(ctx, os.Args[2:], os.Stdout, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "proxy-server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRunShort runs the whole benchmark for a moment with two connections
// so it does not rot: every row must have completed requests without
// errors, and each proxy must have logged at least one line per request.
// Squid's half is skipped when Squid is not installed.
func TestRunShort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, nftables, TPROXY")
	}
	cfg := DefaultConfig()
	cfg.Conns, cfg.Duration, cfg.Warmup = 2, time.Second, time.Second // a race-built proxy on a busy CI machine needs the second
	cfg.ServerCommand = []string{os.Args[0], "proxy-server"}
	if _, err := os.Stat(cfg.Squid); err != nil {
		t.Logf("no Squid at %s (apt-get install -y squid-openssl): measuring gwlbproxy only", cfg.Squid)
		cfg.Squid = ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res.WriteTable(&out)
	t.Logf("\n%s", out.String())

	proxies := []string{"none", "gwlbproxy", BindOffRow}
	if cfg.Squid != "" {
		proxies = append(proxies, "squid")
	}
	for _, p := range proxies {
		for _, s := range []string{NewConn, KeepAlive} {
			r, ok := res.Find(p, s)
			if !ok {
				t.Errorf("no row for %s %s", p, s)
				continue
			}
			if r.Requests == 0 || r.Errors != 0 {
				t.Errorf("%s %s: %d requests, %d errors (%s)", p, s, r.Requests, r.Errors, r.FirstErr)
			}
			if p != "none" && r.ProxyCPU <= 0 {
				t.Errorf("%s %s: no proxy CPU time measured", p, s)
			}
		}
		if p != "none" && res.LogLines[p] < res.Sent[p] {
			t.Errorf("%s logged %d lines for %d requests", p, res.LogLines[p], res.Sent[p])
		}
	}
	if !strings.Contains(out.String(), "gwlbproxy   new-conn") || !strings.Contains(out.String(), "destination binding on vs off new-conn") {
		t.Errorf("table lacks the gwlbproxy row:\n%s", out.String())
	}
}

// TestIdleShort runs the idle scenario with a few connections, in shared
// and per-client upstream mode and with HTTP/2 clients: every connection
// must be held open by each proxy, its RSS read, and the table must name
// the target.
func TestIdleShort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, nftables, TPROXY")
	}
	for _, mode := range []struct{ perClient, h2 bool }{{false, false}, {true, false}, {false, true}} {
		perClient := mode.perClient
		cfg := DefaultConfig()
		cfg.Scenario, cfg.IdleConns, cfg.UpstreamPerClient, cfg.IdleHTTP2 = Idle, 40, perClient, mode.h2
		cfg.ServerCommand = []string{os.Args[0], "proxy-server"}
		if _, err := os.Stat(cfg.Squid); err != nil || perClient || mode.h2 {
			cfg.Squid = "" // Squid's half once is enough
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		res, err := Run(ctx, cfg)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		want := 1
		if cfg.Squid != "" {
			want = 2
		}
		if len(res.Idle) != want {
			t.Fatalf("idle rows %+v", res.Idle)
		}
		for _, r := range res.Idle {
			if r.Held != cfg.IdleConns || r.Errors != 0 || r.RSSHeld <= 0 || r.FDsHeld <= r.FDsBefore || r.HTTP2 != (mode.h2 && r.Proxy == "gwlbproxy") {
				t.Fatalf("%+v: %+v", mode, r)
			}
		}
		var b bytes.Buffer
		res.WriteTable(&b)
		if !strings.Contains(b.String(), "per idle bumped connection (target <= 60 KB") {
			t.Fatalf("table:\n%s", b.String())
		}
		t.Logf("%+v\n%s", mode, b.String())
	}
}

// TestRunShortMirror: the decryption mirror's rows (issue 19), keep-alive
// with two body sizes in one run, gwlbproxy with and without the mirror;
// the table prints the mirror's cost.
func TestRunShortMirror(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, nftables, TPROXY, tap device")
	}
	cfg := DefaultConfig()
	// A smoke test (the race-built test binary is the proxy here): 256 KiB
	// bodies and a 1 s warm-up keep it meaningful on a loaded CI machine;
	// the figures come from `gwlbproxy bench proxy --mirror`.
	cfg.Conns, cfg.Duration, cfg.Warmup = 2, time.Second, time.Second
	cfg.ServerCommand = []string{os.Args[0], "proxy-server"}
	cfg.Squid, cfg.Baseline, cfg.Mirror, cfg.CompareBinding = "", false, true, false
	cfg.Scenario = KeepAlive
	cfg.BodySizes = []int{1024, 256 << 10}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res.WriteTable(&out)
	t.Logf("\n%s", out.String())
	for _, p := range []string{"gwlbproxy", MirrorRow} {
		for _, s := range []string{KeepAlive + "/1KiB", KeepAlive + "/256KiB"} {
			r, ok := res.Find(p, s)
			if !ok || r.Requests == 0 || r.Errors != 0 || r.ProxyCPU <= 0 {
				t.Errorf("%s %s: %+v", p, s, r)
			}
		}
	}
	if !strings.Contains(out.String(), "mirror cost keep-alive/256KiB") {
		t.Errorf("table lacks the mirror cost:\n%s", out.String())
	}
}
