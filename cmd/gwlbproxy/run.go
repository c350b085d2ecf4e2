package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/app"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", "run [--config FILE]", stderr)
	path := fs.String("config", config.DefaultPath, "config file (built-in defaults when the default file does not exist)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := config.Load(*path, *path == config.DefaultPath)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (or CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE): it creates tun devices, nftables rules and policy routes")
	}
	log := newLogger(&c, stderr)
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
	_, err = fmt.Fprintf(w, "\n# Destination binding (proxy.binding)\n%s", c.Proxy.ExplainBinding())
	return err
}
