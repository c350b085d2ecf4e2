package inns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Dir is where named namespaces live (what `ip netns` uses).
const Dir = "/run/netns"

// Path returns the path of a namespace given by name (looked up under Dir)
// or by path (anything with a slash), as `ip netns exec` and
// cmd/internal/nsexec accept it.
func Path(nameOrPath string) string {
	if filepath.Base(nameOrPath) == nameOrPath {
		return filepath.Join(Dir, nameOrPath)
	}
	return nameOrPath
}

// NS is a named network namespace (Dir/Name, so `ip netns exec` and
// cmd/internal/nsexec reach it) with lo up and a netlink handle in it. The
// simulator, the demo, the benchmarks and the root tests all create their
// namespaces with New.
type NS struct {
	Name string
	h    netns.NsHandle
	nl   *netlink.Handle
}

// New creates the named namespace Dir/name with lo up. The caller's thread
// never changes namespace (the switch netns.NewNamed makes happens on a
// thread of Do's).
func New(name string) (*NS, error) {
	cur, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", name, err)
	}
	var h netns.NsHandle
	// NewNamed switches its thread into the new namespace; Do (entered
	// from the current one) switches it back.
	err = Do(cur, func() (err error) {
		h, err = netns.NewNamed(name)
		return err
	})
	cur.Close()
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		_ = netns.DeleteNamed(name)
		return nil, fmt.Errorf("netns %s: netlink: %w", name, err)
	}
	n := &NS{Name: name, h: h, nl: nl}
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("netns %s: lo up: %w", name, err)
	}
	return n, nil
}

// Handle returns the namespace's handle (owned by the NS; do not close).
func (n *NS) Handle() netns.NsHandle { return n.h }

// Netlink returns a netlink handle operating in the namespace (owned by
// the NS; do not close).
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Do runs f on an OS thread switched into the namespace (see the package
// Do). Sockets and tun devices opened by f belong to the namespace and keep
// working after Do returns; goroutines f starts do not inherit it.
func (n *NS) Do(f func() error) error { return Do(n.h, f) }

// Close deletes the namespace and the links in it.
func (n *NS) Close() error {
	if n == nil {
		return nil
	}
	n.nl.Close()
	n.h.Close()
	if err := netns.DeleteNamed(n.Name); err != nil {
		return fmt.Errorf("netns %s: delete: %w", n.Name, err)
	}
	return nil
}

// Sysctl writes a /proc/sys value (path relative to /proc/sys, slashes)
// in the namespace; net.* entries are per namespace.
func (n *NS) Sysctl(path, value string) error {
	return n.Do(func() error {
		if err := os.WriteFile("/proc/sys/"+path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("netns %s: sysctl %s: %w", n.Name, path, err)
		}
		return nil
	})
}

// Dial dials with d from inside the namespace (the socket stays in it).
func (n *NS) Dial(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// HTTPClient is an http.Client whose connections are dialled with d from
// inside the namespace, a new one per request (probes and checks must not
// ride an old connection).
func (n *NS) HTTPClient(timeout time.Duration, d *net.Dialer) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return n.Dial(ctx, d, network, addr)
			},
		},
	}
}

// RandSuffix returns 6 random hex digits: namespaces and links of one run
// get unique names, so concurrent runs (and helpers) never collide.
func RandSuffix() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
