package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/tunnelbench"
)

// cmdBenchTunnel measures the tunnel of this binary against plain kernel
// forwarding (see package tunnelbench).
func cmdBenchTunnel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := tunnelbench.DefaultConfig()
	fs := newFlags("bench tunnel", "bench tunnel [flags]", stderr)
	sizes := fs.String("payloads", "64,8472", "inner UDP payload sizes, comma-separated (8472 = 8500-byte inner packet)")
	fs.IntVar(&c.Flows, "flows", c.Flows, "inner flows (5-tuples)")
	fs.DurationVar(&c.Step, "step", c.Step, "time each offered rate is held")
	fs.IntVar(&c.GeneratorCPU, "generator-cpu", c.GeneratorCPU, "CPU the generator is pinned to (-1: unpinned)")
	fs.IntVar(&c.ApplianceCPU, "appliance-cpu", c.ApplianceCPU, "CPU the appliance is pinned to (-1: unpinned)")
	fs.BoolVar(&c.Offload, "offload", c.Offload, "tunnel.offload: GSO/GRO on the tun devices")
	fs.BoolVar(&c.Notrack, "notrack", c.Notrack, "steer.notrack_geneve: outer GENEVE exempt from conntrack")
	fs.BoolVar(&c.ConntrackChecksum, "conntrack-checksum", c.ConntrackChecksum, "steer.conntrack_checksum: conntrack verifies transport checksums")
	fs.IntVar(&c.Workers, "workers", c.Workers, "tunnel.workers (0: one per CPU)")
	fs.BoolVar(&c.NoBaseline, "no-baseline", false, "measure the tunnel only (no plain and plain+steer rows)")
	fs.StringVar(&c.PerfDir, "perf", "", "record the appliance's CPU with perf record -g during each row into this directory (<path>-<inner size>.data)")
	fs.StringVar(&c.Dir, "dir", "", "keep config and appliance log in this directory (default: temporary)")
	rates := fs.String("rates", "", "hold exactly these offered rates (pps, comma-separated) instead of searching; compare builds by core per packet")
	dps := fs.String("datapaths", strings.Join(c.Datapaths, ","), "tunnel.datapath values to measure, comma-separated (userspace, ebpf)")
	verbose := fs.Bool("v", false, "log progress to stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c.Datapaths = nil
	for _, s := range strings.Split(*dps, ",") {
		switch s = strings.TrimSpace(s); s {
		case "userspace", "ebpf":
			c.Datapaths = append(c.Datapaths, s)
		default:
			fs.Usage()
			return errUsage
		}
	}
	c.Payloads = nil
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 8472 {
			fs.Usage()
			return errUsage
		}
		c.Payloads = append(c.Payloads, n)
	}
	for _, s := range strings.Split(*rates, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		r, err := strconv.ParseFloat(s, 64)
		if err != nil || r <= 0 {
			fs.Usage()
			return errUsage
		}
		c.Rates = append(c.Rates, r)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	c.Binary = exe
	if *verbose {
		c.Log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	res, err := tunnelbench.Run(ctx, c)
	if res != nil && len(res.Rows) > 0 {
		res.WriteTable(stdout)
	}
	return err
}
