//go:build linux

// Package nsexec starts a program inside a named network namespace without
// shelling out to `ip netns exec`.
//
// A Go process cannot move itself into another network namespace: setns(2)
// changes only the calling thread, and the runtime has other threads. But a
// thread that has joined the namespace and then calls execve(2) takes the
// whole new process image with it. So the child is started normally with
// EnvVar set; Enter, called first thing in main, joins the namespace on a
// locked thread and re-executes itself without the variable.
//
// Namespaces are created and entered-and-left by tunnel/inns; this package
// is the one place that enters and never leaves (the thread execs), which
// inns.Do by design cannot do. It names namespaces the way inns does
// (inns.Path).
package nsexec

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"golang.org/x/sys/unix"
)

// EnvVar names the namespace a child must enter: a path such as
// /run/netns/NAME (or a bare name, looked up under /run/netns).
const EnvVar = "GWLBPROXY_NETNS"

// Command returns an exec.Cmd that runs name with args inside the network
// namespace ns. name must be a program that calls Enter early (gwlbproxy
// itself).
func Command(ns, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), EnvVar+"="+ns)
	return cmd
}

// Enter joins the namespace named by EnvVar and re-executes the program in
// it. It returns nil without doing anything when EnvVar is unset, and does
// not return on success.
func Enter() error {
	ns, ok := os.LookupEnv(EnvVar)
	if !ok {
		return nil
	}
	if err := os.Unsetenv(EnvVar); err != nil {
		return err
	}
	ns = inns.Path(ns)
	runtime.LockOSThread() // never unlocked: this thread execs or the process exits
	fd, err := unix.Open(ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("netns %s: setns: %w", ns, err)
	}
	unix.Close(fd)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	return unix.Exec(self, os.Args, os.Environ())
}
