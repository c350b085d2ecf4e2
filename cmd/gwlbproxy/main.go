// Command gwlbproxy is an egress inspection appliance for AWS Gateway Load
// Balancer: GENEVE tunnel handler, transparent TLS-bumping proxy and
// lossless CloudWatch Logs shipper in one binary.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/buildinfo"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/nsexec"
)

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	return map[string]command{
		"run":        {"run the appliance", cmdRun},
		"check":      {"validate a config file and print the effective config", cmdCheck},
		"version":    {"print the version", cmdVersion},
		"ca":         {"create or export the appliance CA", cmdCA},
		"bench":      {"run benchmarks that print figures (root)", cmdBench},
		"demo":       {"run the appliance in namespaces with a simulated GWLB and tour it (root)", cmdDemo},
		"policy":     {"test a policy decision; import Squid ACLs", cmdPolicy},
		"cfn-signal": {"tell CloudFormation the instance came up (or not): SignalResource via the instance role", cmdCFNSignal},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: gwlbproxy <command> [flags]\n\ncommands:\n")
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintf(w, "\nRun 'gwlbproxy <command> --help' for a command's flags.\n")
}

// errUsage marks errors already explained by a usage message.
var errUsage = errors.New("usage")

func main() {
	// The demo and the end-to-end tests start the appliance inside a network
	// namespace this way; it must happen before anything opens a socket.
	if err := nsexec.Enter(); err != nil {
		fmt.Fprintf(os.Stderr, "gwlbproxy: %v\n", err)
		os.Exit(1)
	}
	if version != "" {
		buildinfo.SetVersion(version)
	}
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "gwlbproxy: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := cmd.run(ctx, args[1:], stdout, stderr); err != nil {
		var code exitCode
		if errors.As(err, &code) {
			return int(code)
		}
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if !errors.Is(err, errUsage) {
			fmt.Fprintf(stderr, "gwlbproxy %s: %v\n", args[0], err)
		}
		var ee exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

// newFlags returns a FlagSet whose errors and help go to stderr.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("gwlbproxy "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: gwlbproxy %s\n\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and rejects stray positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}
