package e2e

import (
	"strings"
	"syscall"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

const syscallSIGTERM = syscall.SIGTERM
