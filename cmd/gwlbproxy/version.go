package main

import (
	"context"
	"fmt"
	"io"
	"runtime"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/buildinfo"
)

// version may be stamped with -ldflags "-X main.version=v1.2.3" (older
// build scripts); make build/release stamp cmd/internal/buildinfo instead.
var version = ""

func versionString() string {
	i := buildinfo.Get()
	v := i.Version
	if i.Commit != "" && len(i.Commit) >= 12 {
		v += " commit " + i.Commit[:12]
		if i.Modified {
			v += "+dirty"
		}
	}
	return fmt.Sprintf("gwlbproxy %s (%s %s/%s)", v, i.GoVersion, runtime.GOOS, runtime.GOARCH)
}

func cmdVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "version", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, versionString())
	return nil
}
