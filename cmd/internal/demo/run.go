package demo

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
)

// RunOptions configure Run (the `gwlbproxy demo` subcommand).
type RunOptions struct {
	Mode string // nat or tunnel
	Keep bool   // leave everything up until ctx ends
	// CloudWatchFake ships the records to a local CloudWatch Logs fake.
	CloudWatchFake bool
	Binary         string // the gwlbproxy executable (normally os.Executable)
	Out            io.Writer
}

// Run builds the demo, runs the tour, prints it, and removes everything
// (at once, or with Keep when ctx ends). It returns an error when setup
// fails or a step did not go as the appliance should behave.
func Run(ctx context.Context, o RunOptions) (err error) {
	out := o.Out
	t0 := time.Now()
	progress := func(step string) {
		fmt.Fprintf(out, "  [%5.1fs] %s\n", time.Since(t0).Seconds(), step)
	}
	fmt.Fprintf(out, "gwlbproxy demo, egress mode %q\n", o.Mode)
	e, err := Start(ctx, Options{Mode: o.Mode, Binary: o.Binary, Prefix: "gd", Progress: progress, CloudWatchFake: o.CloudWatchFake})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintf(out, "\nremoving namespaces, interfaces, rules and processes ... ")
		if cerr := e.Close(); cerr != nil {
			fmt.Fprintln(out, "with errors")
			if err == nil {
				err = cerr
			}
			return
		}
		fmt.Fprintln(out, "done")
	}()
	where := "records are read from its stdout"
	if e.CloudWatch != nil {
		where = "records are read back from the CloudWatch Logs fake (" + LogGroup + " / " + LogStream + ")"
	}
	progress(fmt.Sprintf("appliance ready (pid %d); %s; its own log is %s", e.App.PID(), where, e.Files.ApplianceLog))
	printTopology(out, e)

	fmt.Fprintf(out, "\nThe tour (every request below really crosses GENEVE, the appliance and its proxy):\n")
	steps := e.Tour(ctx, out)
	var bad []string
	for _, s := range steps {
		if !s.OK {
			bad = append(bad, s.Name)
		}
	}
	fmt.Fprintf(out, "\n%d of %d steps as expected in %.1fs", len(steps)-len(bad), len(TourSteps), time.Since(t0).Seconds())
	if len(bad) > 0 {
		fmt.Fprintf(out, "; unexpected: %s", strings.Join(bad, ", "))
	}
	fmt.Fprintln(out)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if o.Keep {
		printExplore(ctx, out, e)
		<-ctx.Done()
		fmt.Fprintln(out)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d tour steps unexpected: %s", len(bad), strings.Join(bad, ", "))
	}
	return nil
}

func printTopology(w io.Writer, e *Env) {
	t := e.Net.Topo
	fmt.Fprintf(w, "\nTopology (network namespaces):\n")
	for i, ep := range t.Endpoints {
		fmt.Fprintf(w, "  %-22s client %s in VPC %c behind GWLB endpoint %s\n", ep.Client.Name, gwlbsim.ClientAddr, 'A'+i, EndpointOf(ep.ID))
	}
	fmt.Fprintf(w, "  %-22s GWLB simulator %s, GENEVE to %s:6081\n", t.GWLB.Name, gwlbsim.GWLBAddr, gwlbsim.ApplianceAddr)
	fmt.Fprintf(w, "  %-22s the appliance: gwlbproxy run --config %s\n", t.Appliance.Name, e.Files.Config)
	if e.Net.Inet != nil {
		fmt.Fprintf(w, "  %-22s the internet, behind the appliance's %s (%s)\n", e.Net.Inet.Name, EgressInterface, EgressAddr)
	} else {
		for _, ep := range t.Endpoints {
			fmt.Fprintf(w, "  %-22s the internet as seen from VPC %s (tunnel mode: traffic returns through GWLB)\n", ep.Server.Name, EndpointOf(ep.ID))
		}
	}
	fmt.Fprintf(w, "  names (no DNS): ")
	for i, h := range []string{HostApp, HostBank, HostBlocked, HostExpired, HostEcho} {
		if i > 0 {
			fmt.Fprint(w, ", ")
		}
		fmt.Fprintf(w, "%s=%s", h, Names[h])
	}
	fmt.Fprintln(w)
}

func printExplore(ctx context.Context, w io.Writer, e *Env) {
	cli := e.Net.Topo.Endpoints[0].Client.Name
	ca := e.Files.ApplianceCA
	fmt.Fprintf(w, "\nEverything stays up until Ctrl-C. Try (as root):\n")
	for _, h := range []string{HostApp, HostBank, HostBlocked, HostExpired} {
		fmt.Fprintf(w, "  ip netns exec %s curl -sS --cacert %s --resolve %s:443:%s https://%s/\n", cli, ca, h, Names[h], h)
	}
	fmt.Fprintf(w, "  ip netns exec %s curl -sS --resolve %s:80:%s http://%s/\n", cli, HostApp, AddrApp, HostApp)
	fmt.Fprintf(w, "  ip netns exec %s curl -sS http://%s/latest/meta-data/\n", cli, AddrIMDS)
	fmt.Fprintf(w, "  ip netns exec %s ping -c 3 %s\n", cli, AddrEcho)
	fmt.Fprintf(w, "  ip netns exec %s curl -s %s | head -40        # health\n", e.Net.Topo.Appliance.Name, HealthURL())
	fmt.Fprintf(w, "  ip netns exec %s curl -s http://%s/metrics | grep gwlbproxy_steer\n", e.Net.Topo.Appliance.Name, MetricsAddr)
	fmt.Fprintf(w, "  ip netns exec %s nft list table inet gwlbproxy\n", e.Net.Topo.Appliance.Name)
	fmt.Fprintf(w, "  tail -f %s    # the appliance's own log\n", e.Files.ApplianceLog)
	fmt.Fprintf(w, "Records of your requests appear below as they arrive.\n")
	go func() {
		seen := len(e.Records.All())
		for {
			recs, err := e.Records.Wait(ctx, seen+1, func(*Record) bool { return true })
			if err != nil {
				return
			}
			for _, r := range recs[seen:] {
				fmt.Fprintf(w, "record: %s\n", r.Raw)
			}
			seen = len(recs)
		}
	}()
}
