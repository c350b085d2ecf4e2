//go:build linux

package steer

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Test topology helpers: real network namespaces, veth and tun devices,
// built through netlink and torn down in t.Cleanup.

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nftables)")
	}
}

func randSuffix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

type nsh struct {
	name string
	h    netns.NsHandle
	nl   *netlink.Handle
}

func newNS(t *testing.T, tag string) *nsh { return newNSB(t, tag) }

func newNSB(t testing.TB, tag string) *nsh {
	t.Helper()
	name := "gwlbt-" + tag + "-" + randSuffix()
	ns, err := inns.New(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	return &nsh{name: name, h: ns.Handle(), nl: ns.Netlink()}
}

// do runs fn in the namespace (socket creation, /proc/sys).
func (n *nsh) do(fn func() error) error {
	return nsExec{fd: int(n.h)}.do(fn)
}

func (n *nsh) sysctl(t *testing.T, key, val string) {
	t.Helper()
	err := n.do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")), []byte(val), 0o644)
	})
	if err != nil {
		t.Fatalf("%s: sysctl %s=%s: %v", n.name, key, val, err)
	}
}

func (n *nsh) router(t *testing.T) {
	n.sysctl(t, "net.ipv4.ip_forward", "1")
	n.sysctl(t, "net.ipv6.conf.all.forwarding", "1")
	n.sysctl(t, "net.ipv4.conf.all.rp_filter", "0")
	n.sysctl(t, "net.ipv4.conf.default.rp_filter", "0")
}

func (n *nsh) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := n.nl.LinkByName(name)
	if err != nil {
		t.Fatalf("%s: link %s: %v", n.name, name, err)
	}
	return l
}

func (n *nsh) up(t *testing.T, name string, cidrs ...string) netlink.Link {
	t.Helper()
	l := n.link(t, name)
	for _, c := range cidrs {
		a, err := netlink.ParseAddr(c)
		if err != nil {
			t.Fatal(err)
		}
		a.Flags = unix.IFA_F_NODAD
		if err := n.nl.AddrAdd(l, a); err != nil {
			t.Fatalf("%s: addr %s on %s: %v", n.name, c, name, err)
		}
	}
	if err := n.nl.LinkSetUp(l); err != nil {
		t.Fatalf("%s: up %s: %v", n.name, name, err)
	}
	return n.link(t, name)
}

func (n *nsh) route(t *testing.T, r *netlink.Route) {
	t.Helper()
	if err := n.nl.RouteAdd(r); err != nil {
		t.Fatalf("%s: route %v: %v", n.name, r, err)
	}
}

func (n *nsh) defaultVia(t *testing.T, gw4, gw6 string) {
	t.Helper()
	n.route(t, &netlink.Route{Dst: anyNet(unix.AF_INET), Gw: net.ParseIP(gw4)})
	if gw6 != "" {
		n.route(t, &netlink.Route{Dst: anyNet(unix.AF_INET6), Gw: net.ParseIP(gw6)})
	}
}

// veth creates a veth pair aName (in a) <-> bName (in b).
func veth(t *testing.T, a *nsh, aName string, b *nsh, bName string) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName, PeerNamespace: netlink.NsFd(int(b.h))}
	if err := a.nl.LinkAdd(v); err != nil {
		t.Fatalf("veth %s/%s: %v", aName, bName, err)
	}
}

// tun creates a tun device (no packet info) in n and returns its queue.
func (n *nsh) tun(t *testing.T, name string) *os.File {
	t.Helper()
	var f *os.File
	err := n.do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		var req [unix.IFNAMSIZ + 64]byte
		copy(req[:], name)
		*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = unix.IFF_TUN | unix.IFF_NO_PI
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); e != 0 {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, e)
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), name)
		return nil
	})
	if err != nil {
		t.Fatalf("%s: tun %s: %v", n.name, name, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// relay copies packets from one tun queue to another, counting them: it
// plays the GENEVE tunnel (decap into gwi-*, encap from gwo-*).
func relay(from, to *os.File, n *atomic.Int64) {
	buf := make([]byte, 65536)
	for {
		k, err := from.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			return
		}
		n.Add(1)
		to.Write(buf[:k])
	}
}
