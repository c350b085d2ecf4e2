package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/app"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/caps"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// Exit statuses of `run` that a restart cannot cure. The unit lists them in
// RestartPreventExitStatus= so a broken config or a unit without the
// capabilities fails once, with the error in the journal, instead of
// looping until the start limit.
const (
	exitNoPerm = 77 // EX_NOPERM: a needed capability is missing
	exitConfig = 78 // EX_CONFIG: the config file is missing or invalid
)

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", "run [--config FILE]", stderr)
	path := fs.String("config", config.DefaultPath, "config file (built-in defaults when the default file does not exist)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := config.Load(*path, *path == config.DefaultPath)
	if err != nil {
		return exitError{exitConfig, err}
	}
	log := newLogger(&c, stderr)
	for _, w := range c.Warnings { // deprecated keys (issue 17): one line each
		log.Warn(w, "config", *path)
	}
	have, err := caps.Effective()
	if err != nil {
		return exitError{exitNoPerm, err}
	}
	if err := caps.Check(have, neededCaps(&c, unprivilegedPortStart())); err != nil {
		return exitError{exitNoPerm, err}
	}
	return app.Run(ctx, c, log, app.Options{ConfigPath: *path, Reload: daemonSignals(log)})
}

// daemonSignals keeps signals that would otherwise end the process from
// doing so: SIGHUP (what `systemctl reload` sends, and what a closed
// terminal sends) asks for a reload, whose requests it returns; SIGPIPE
// (a write to a closed stdout or stderr, such as a journald restart) and
// SIGUSR1/SIGUSR2 (stray kill -USR1) are logged and ignored.
func daemonSignals(log *slog.Logger) <-chan struct{} {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGPIPE, syscall.SIGUSR1, syscall.SIGUSR2)
	reload := make(chan struct{}, 1)
	// For the life of the process: a SIGHUP during the drain must not
	// end it either (Run no longer reads reload then).
	go func() {
		for s := range sigs {
			switch s {
			case syscall.SIGHUP:
				select {
				case reload <- struct{}{}:
				default: // one reload pending already reads the newest file
				}
			case syscall.SIGPIPE: // not logged: the log may be the closed pipe
			default:
				log.Info("signal ignored", "signal", s.String())
			}
		}
	}()
	return reload
}

// neededCaps lists what `run` needs with config c, measured by running the
// daemon as an unprivileged user with only these capabilities (see
// cmd/internal/e2e TestNonRootUnitCapabilities):
//   - CAP_NET_ADMIN: tun devices, nftables (TPROXY), policy routes and
//     rules, /proc/sys/net writes, SO_MARK and IP_TRANSPARENT sockets (the
//     kernel accepts CAP_NET_ADMIN for both).
//   - CAP_NET_RAW: the tunnel's IPPROTO_RAW send sockets (replies to GWLB
//     from the exact source port each flow arrived on).
//   - CAP_NET_BIND_SERVICE: only when a listener's port is below the
//     namespace's net.ipv4.ip_unprivileged_port_start (the GWLB health check
//     on :80 by default).
func neededCaps(c *config.Config, unprivStart int) []caps.Need {
	needs := []caps.Need{
		{Cap: caps.NetAdmin, Why: "tun devices, nftables TPROXY rules, policy routes, net sysctls, transparent and marked sockets"},
		{Cap: caps.NetRaw, Why: "the tunnel's raw sockets that send GENEVE replies"},
	}
	var low []string
	check := func(key string, port int) {
		if port > 0 && port < unprivStart {
			low = append(low, fmt.Sprintf("%s port %d", key, port))
		}
	}
	check("health.listen", listenPort(c.Health.Listen))
	check("metrics.listen", listenPort(c.Metrics.Listen))
	check("tunnel.port", int(c.Tunnel.Port))
	check("steer.http_listen_port", int(c.Steer.HTTPListenPort))
	check("steer.tls_listen_port", int(c.Steer.TLSListenPort))
	if c.Tunnel.Datapath == tunnel.DatapathEBPF {
		// Measured: without CAP_BPF map creation fails, without
		// CAP_PERFMON the verifier rejects the programs. (auto falls back
		// to userspace without them, with a log line.)
		why := "tunnel.datapath ebpf: BPF maps and tc programs"
		needs = append(needs, caps.Need{Cap: caps.BPF, Why: why}, caps.Need{Cap: caps.Perfmon, Why: why})
	}
	if len(low) > 0 {
		needs = append(needs, caps.Need{Cap: caps.NetBindService, Why: strings.Join(low, ", ") + fmt.Sprintf(" below ip_unprivileged_port_start %d", unprivStart)})
	}
	return needs
}

func listenPort(s string) int {
	_, p, err := net.SplitHostPort(s)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

// unprivilegedPortStart reads the network namespace's lowest port that
// needs no CAP_NET_BIND_SERVICE (1024 when unreadable, the kernel default).
func unprivilegedPortStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return 1024
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 1024
	}
	return n
}

// exitError carries a specific exit status out of a command.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

// newLogger builds the daemon's own logger from the log section.
func newLogger(c *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.SlogLevel()}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// writeExplain prints what the steering layer installs for c, without
// touching the kernel.
func writeExplain(w io.Writer, c *config.Config) error {
	st, err := steer.New(c.SteerConfig(), slog.New(slog.DiscardHandler), nil)
	if err != nil {
		return err
	}
	if _, err = fmt.Fprintf(w, "\n# Rules, routes and sysctls for egress_mode %q\n%s", c.Steer.EgressMode, st.Explain()); err != nil {
		return err
	}
	if _, err = fmt.Fprintf(w, "\n# Destination binding (proxy.binding)\n%s", c.Proxy.ExplainBinding()); err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "\n# AWS environment (aws)\n%s", c.AWS.Explain(c.AWSUses(), c.InstanceID == ""))
	return err
}
