package main

import (
	"context"
	"io"
)

func cmdImportSquid(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return exitCode(2)
}
