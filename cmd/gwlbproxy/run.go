package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

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
	return app.Run(ctx, c, newLogger(&c, stderr))
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
