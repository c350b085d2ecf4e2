package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/resolve"
)

// exitCode is an error that sets the process's exit status; its message,
// if any, was already printed.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

const policyUsage = `usage: gwlbproxy policy <subcommand> [flags]

subcommands:
  test          show how the policy decides one connection (exit 0 allowed, 1 denied, 2 usage)
  import-squid  print a policy fragment translated from squid.conf ACLs
`

func cmdPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return exitCode(2)
	}
	switch args[0] {
	case "test":
		return cmdPolicyTest(ctx, args[1:], stdout, stderr)
	case "import-squid":
		return cmdImportSquid(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, policyUsage)
		return nil
	}
	fmt.Fprintf(stderr, "gwlbproxy policy: unknown subcommand %q\n%s", args[0], policyUsage)
	return exitCode(2)
}

func cmdPolicyTest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("policy test", "policy test --config FILE [--document FILE] [--sni NAME] [--host HOST] [--dst IP:PORT] [--client IP] [--endpoint vpce-...] [--json]", stderr)
	path := fs.String("config", config.DefaultPath, "config file whose policy is tested")
	sni := fs.String("sni", "", "TLS server name (implies TLS)")
	host := fs.String("host", "", "HTTP Host of a request (with --sni: a request inside the bumped connection)")
	dst := fs.String("dst", "", "original destination ip:port (default: the name's first address, port 443 with TLS, else 80)")
	client := fs.String("client", "10.0.0.1", "client address")
	endpoint := fs.String("endpoint", "", "GWLB endpoint id the traffic arrives through (vpce-...)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	docPath := fs.String("document", "", "a fleet policy document (what proxy.policy.source s3/ssm holds) to test instead of the config's rules")
	tlsFlag := fs.Bool("tls", false, "TLS even without --sni (a ClientHello without SNI); implied by --sni and by --dst port 443")
	if err := parseFlags(fs, args); err != nil {
		if err == errUsage {
			return exitCode(2)
		}
		return err
	}
	usageErr := func(format string, a ...any) error {
		fmt.Fprintf(stderr, "gwlbproxy policy test: "+format+"\n", a...)
		return exitCode(2)
	}
	in := proxy.TestInput{SNI: *sni, Host: *host, TLS: *tlsFlag || *sni != ""}
	if *dst != "" {
		ap, err := netip.ParseAddrPort(*dst)
		if err != nil {
			return usageErr("--dst %q: want ip:port", *dst)
		}
		in.Dst = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if ap.Port() == 443 {
			in.TLS = true
		}
	}
	if in.TLS && in.SNI == "" && *host != "" && !*tlsFlag {
		// https://host/ sends the host as SNI.
		in.SNI = policy.HostOnly(*host)
	}
	if *sni == "" && *host == "" && *dst == "" {
		return usageErr("give at least one of --sni, --host, --dst")
	}
	a, err := netip.ParseAddr(*client)
	if err != nil {
		return usageErr("--client %q: not an IP address", *client)
	}
	in.Client = a.Unmap()
	if *endpoint != "" {
		id, err := policy.ParseEndpointID(*endpoint)
		if err != nil {
			return usageErr("--endpoint: %v", err)
		}
		in.Endpoint, in.HasEndpoint = id, true
	}
	c, err := config.Load(*path, false)
	if err != nil {
		return usageErr("%v", err)
	}
	src := c.Proxy.Policy.Source
	if *docPath != "" {
		b, err := os.ReadFile(*docPath)
		if err != nil {
			return usageErr("--document: %v", err)
		}
		if c.Proxy.Policy, err = config.DecodePolicy(b, src); err != nil {
			return usageErr("--document %s: %v", *docPath, err)
		}
	} else if src.Source == policy.SourceS3 || src.Source == policy.SourceSSM {
		fmt.Fprintf(stderr, "gwlbproxy policy test: note: %s takes its rules from proxy.policy.source %s; testing the file's rules (give the fleet document with --document)\n", *path, src.Source)
	}
	var res proxy.TestResolver
	if c.Proxy.Binding.Mode != proxy.BindOff || !in.Dst.IsValid() {
		r, err := resolve.New(c.Proxy.Binding.Resolver)
		if err != nil {
			return usageErr("config %s: proxy.binding.%v", *path, err)
		}
		res = r
	}
	out, err := proxy.TestPolicy(ctx, c.Proxy, in, res, nil)
	if err != nil {
		return usageErr("%v", err)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(out, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		fmt.Fprintf(stdout, "policy_version %s\n", out.PolicyVersion)
		fmt.Fprintf(stdout, "input: sni=%q host=%q dst=%s client=%s endpoint=%s tls=%v\n", in.SNI, in.Host, out.Dst, in.Client, orNone(*endpoint), in.TLS)
		for i, s := range out.Steps {
			fmt.Fprintf(stdout, "%d. %-11s %s\n", i+1, s.Step, s.Outcome)
		}
		verdict := strings.ToUpper(string(out.Action))
		if out.WouldDeny {
			verdict += " (report-only: would deny)"
		}
		fmt.Fprintf(stdout, "decision: %s rule=%s\n", verdict, out.Rule)
	}
	if !out.Allowed() {
		return exitCode(1)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
