//go:build linux

// Package caps reads the process's effective Linux capabilities so that
// `gwlbproxy run` can refuse to start with a message naming exactly what is
// missing, instead of checking for uid 0: the systemd unit runs it as an
// unprivileged user with ambient capabilities, and a root check would make
// every instance fail (and, with Restart=always, loop).
package caps

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Cap is a Linux capability number (linux/capability.h).
type Cap uint

// The capabilities the appliance uses.
const (
	NetBindService Cap = unix.CAP_NET_BIND_SERVICE
	NetAdmin       Cap = unix.CAP_NET_ADMIN
	NetRaw         Cap = unix.CAP_NET_RAW
	Perfmon        Cap = unix.CAP_PERFMON
	BPF            Cap = unix.CAP_BPF
)

var names = map[Cap]string{
	NetBindService: "CAP_NET_BIND_SERVICE",
	NetAdmin:       "CAP_NET_ADMIN",
	NetRaw:         "CAP_NET_RAW",
	Perfmon:        "CAP_PERFMON",
	BPF:            "CAP_BPF",
}

func (c Cap) String() string {
	if n, ok := names[c]; ok {
		return n
	}
	return fmt.Sprintf("CAP_%d", uint(c))
}

// Set is a 64-bit capability mask.
type Set uint64

// Has reports whether c is in s.
func (s Set) Has(c Cap) bool { return c < 64 && s&(1<<c) != 0 }

// Effective returns the calling thread's effective capability set. All
// threads of a Go program share it unless something changed one thread
// alone, which this program never does.
func Effective() (Set, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, fmt.Errorf("capget: %w", err)
	}
	return Set(uint64(data[1].Effective)<<32 | uint64(data[0].Effective)), nil
}

// Need is one required capability and why it is required.
type Need struct {
	Cap Cap
	Why string
}

// MissingError names every needed capability absent from the effective set.
type MissingError struct {
	Missing []Need
}

func (e *MissingError) Error() string {
	var b strings.Builder
	b.WriteString("missing capabilities in the effective set: ")
	for i, n := range e.Missing {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s (%s)", n.Cap, n.Why)
	}
	b.WriteString("; run as root or grant them, e.g. systemd AmbientCapabilities= as in the shipped unit, " +
		"or `setpriv --inh-caps=+net_admin,... --ambient-caps=+net_admin,...`")
	return b.String()
}

// Check returns a *MissingError naming each of needs not in have, or nil.
func Check(have Set, needs []Need) error {
	var miss []Need
	for _, n := range needs {
		if !have.Has(n.Cap) {
			miss = append(miss, n)
		}
	}
	if len(miss) > 0 {
		return &MissingError{Missing: miss}
	}
	return nil
}
