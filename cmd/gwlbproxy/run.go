package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
)

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", "run [--config FILE]", stderr)
	path := fs.String("config", config.DefaultPath, "config file (built-in defaults when it does not exist)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := config.Load(*path, *path == config.DefaultPath)
	if err != nil {
		return err
	}
	_ = c
	return errors.New("not wired yet")
}

func writeExplain(w io.Writer, c *config.Config) error {
	_, err := fmt.Fprintln(w, "# explain: not wired yet")
	return err
}
