package main

import (
	"context"
	"fmt"
	"io"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/proxy"
)

func cmdCheck(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("check", "check [--config FILE] [--explain]", stderr)
	path := fs.String("config", config.DefaultPath, "config file to validate")
	explain := fs.Bool("explain", false, "also print the nftables rules, routes and sysctls the config installs, and what destination binding does")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := config.Load(*path, false)
	if err != nil {
		return err
	}
	// What run would refuse on this instance: a connection limit that
	// does not fit its memory.
	if _, err := proxy.SizeMaxConns(c.Proxy.MaxConns, proxy.InstanceMemory()); err != nil {
		return fmt.Errorf("config %s: proxy.%w", *path, err)
	}
	for _, w := range c.Warnings { // deprecated keys: still accepted
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	out, err := c.Marshal()
	if err != nil {
		return err
	}
	if _, err := stdout.Write(out); err != nil {
		return err
	}
	if *explain {
		return writeExplain(stdout, &c)
	}
	return nil
}
