package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
)

// cmdDemo runs the appliance in network namespaces with a simulated GWLB,
// two VPCs and an internet, and tours what it does.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "demo [--egress nat|tunnel] [--keep]", stderr)
	egress := fs.String("egress", "nat", "egress mode of the appliance: nat (two-arm, out its own interface) or tunnel (one-arm, back through GWLB)")
	keep := fs.Bool("keep", false, "leave the topology up after the tour and print commands to explore it; Ctrl-C removes it")
	cwFake := fs.Bool("cloudwatch-fake", false, "ship records to a local CloudWatch Logs fake instead of stdout")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *egress != "nat" && *egress != "tunnel" {
		fmt.Fprintf(stderr, "--egress: %q is not nat or tunnel\n", *egress)
		return errUsage
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces, tun devices and nftables rules")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	return demo.Run(ctx, demo.RunOptions{Mode: *egress, Keep: *keep, Binary: self, Out: stdout, CloudWatchFake: *cwFake})
}
