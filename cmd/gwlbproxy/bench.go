package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/proxybench"
)

// cmdBench dispatches the benchmarks. Each prints its figures; none is run
// by CI (they need root, namespaces and, for proxy, Squid).
func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	benchUsage := func(w io.Writer) {
		fmt.Fprintf(w, "usage: gwlbproxy bench <benchmark> [flags]\n\nbenchmarks:\n")
		fmt.Fprintf(w, "  proxy    gwlbproxy vs Squid ssl-bump: bumped HTTPS, new connection per request and keep-alive (root)\n")
		fmt.Fprintf(w, "  tunnel   GENEVE tunnel vs plain kernel forwarding: pps and Gbps, 64-byte and 8500-byte packets (root)\n")
	}
	if len(args) == 0 {
		benchUsage(stderr)
		return errUsage
	}
	switch args[0] {
	case "proxy":
		return cmdBenchProxy(ctx, args[1:], stdout, stderr)
	case "tunnel":
		return cmdBenchTunnel(ctx, args[1:], stdout, stderr)
	case "proxy-server": // hidden: the proxy under test, started by "bench proxy"
		return proxybench.ServerMain(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		benchUsage(stdout)
		return nil
	}
	fmt.Fprintf(stderr, "gwlbproxy bench: unknown benchmark %q\n", args[0])
	benchUsage(stderr)
	return errUsage
}

func cmdBenchProxy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	d := proxybench.DefaultConfig()
	fs := newFlags("bench proxy", "bench proxy [flags]", stderr)
	fs.IntVar(&d.Conns, "conns", d.Conns, "concurrent client connections")
	fs.DurationVar(&d.Duration, "duration", d.Duration, "measured time per proxy and scenario")
	fs.DurationVar(&d.Warmup, "warmup", d.Warmup, "warm-up before each measurement")
	fs.IntVar(&d.BodySize, "body", d.BodySize, "upstream response body bytes")
	fs.StringVar(&d.Squid, "squid", d.Squid, `Squid binary ("" skips Squid)`)
	fs.StringVar(&d.Certgen, "certgen", d.Certgen, "Squid's security_file_certgen")
	fs.BoolVar(&d.Baseline, "baseline", d.Baseline, "also measure without a proxy")
	fs.IntVar(&d.ProxyCPU, "proxy-cpu", d.ProxyCPU, "CPU the proxy under test is pinned to")
	fs.IntVar(&d.ClientCPU, "client-cpu", d.ClientCPU, "CPU the client and upstream are pinned to")
	fs.StringVar(&d.Profile, "cpuprofile", "", "write gwlbproxy's CPU profile (pprof) to this file")
	fs.StringVar(&d.Dir, "dir", "", "keep CA, configs and logs in this directory (default: temporary)")
	fs.IntVar(&d.Rounds, "rounds", d.Rounds, "repeat no proxy, gwlbproxy, Squid this many times, taking turns; rows aggregate the rounds")
	fs.BoolVar(&d.CompareBinding, "compare-binding", d.CompareBinding, "also run gwlbproxy with destination binding off (row "+proxybench.BindOffRow+") to show binding's cost")
	fs.StringVar(&d.Scenario, "scenario", "", "run only new-conn or keep-alive (default both), or idle: hold --idle-conns bumped connections and report RSS per connection")
	fs.IntVar(&d.IdleConns, "idle-conns", d.IdleConns, "connections the idle scenario holds open")
	fs.BoolVar(&d.IdleHTTP2, "idle-h2", false, "idle scenario: clients speak HTTP/2 to gwlbproxy, as browsers do (Squid skipped)")
	fs.BoolVar(&d.UpstreamPerClient, "upstream-per-client", false, "gwlbproxy dials each upstream from its client's address, one per client connection (egress_mode tunnel)")
	fs.BoolVar(&d.Mirror, "mirror", false, "also run gwlbproxy with the decryption mirror on (row gwlbproxy+m) and print its cost")
	bodies := fs.String("bodies", "", "comma-separated body sizes, each scenario run once per size (e.g. 1024,1048576)")
	verbose := fs.Bool("v", false, "log progress to stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	d.ServerCommand = []string{exe, "bench", "proxy-server"}
	if *bodies != "" {
		for _, f := range strings.Split(*bodies, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 0 {
				return fmt.Errorf("bench proxy: --bodies: %q is not a byte count", f)
			}
			d.BodySizes = append(d.BodySizes, n)
		}
	}
	if *verbose {
		d.Log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	res, err := proxybench.Run(ctx, d)
	if err != nil {
		if len(res.Rows) > 0 || len(res.Idle) > 0 {
			res.WriteTable(stdout) // what was measured before the failure
		}
		return err
	}
	res.WriteTable(stdout)
	return nil
}
