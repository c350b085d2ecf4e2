package proxybench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netNS is a named network namespace (usable with `ip netns exec` and
// nsexec) owned by the benchmark.
type netNS struct {
	name string
	h    netns.NsHandle
	nl   *netlink.Handle
}

// newNetNS creates the named namespace with lo up.
func newNetNS(name string) (*netNS, error) {
	var h netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		h, err = netns.NewNamed(name) // switches this thread
		if rerr := netns.Set(orig); rerr != nil {
			errc <- fmt.Errorf("restore netns: %w", rerr)
			return // thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("netns %s: %w", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		_ = netns.DeleteNamed(name)
		return nil, fmt.Errorf("netns %s: netlink: %w", name, err)
	}
	n := &netNS{name: name, h: h, nl: nl}
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		n.close()
		return nil, fmt.Errorf("netns %s: lo up: %w", name, err)
	}
	return n, nil
}

func (n *netNS) close() error {
	if n == nil {
		return nil
	}
	n.nl.Close()
	n.h.Close()
	if err := netns.DeleteNamed(n.name); err != nil {
		return fmt.Errorf("netns %s: delete: %w", n.name, err)
	}
	return nil
}

// do runs f on a fresh locked thread switched into the namespace. Sockets
// f creates belong to the namespace for their whole life.
func (n *netNS) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(n.h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", n.name, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("restore netns: %w", err) // thread stays locked, is discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func (n *netNS) sysctl(path, value string) error {
	return n.do(func() error {
		if err := os.WriteFile("/proc/sys/"+path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("netns %s: sysctl %s: %w", n.name, path, err)
		}
		return nil
	})
}

// dialTCP connects to dst from inside the namespace. Only socket(2) runs
// on a thread in the namespace; the connect waits in Go's poller like any
// other dial, so a dial costs one extra thread hop, not a locked thread per
// connection.
func (n *netNS) dialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	var fd int
	if err := n.do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		return nil, fmt.Errorf("socket in %s: %w", n.name, err)
	}
	f := os.NewFile(uintptr(fd), "tcp")
	defer f.Close() // net.FileConn dups the descriptor
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = f.SetWriteDeadline(dl)
	}
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	started := false
	var cerr error
	werr := rc.Write(func(fd uintptr) bool {
		if !started {
			started = true
			err := unix.Connect(int(fd), sa)
			if err == unix.EINPROGRESS || err == unix.EALREADY || err == unix.EINTR {
				return false // wait until writable
			}
			cerr = err
			return true
		}
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			cerr = err
		} else if v != 0 {
			cerr = unix.Errno(v)
		}
		return true
	})
	if werr != nil {
		return nil, fmt.Errorf("dial %s: %w", dst, werr)
	}
	if cerr != nil {
		return nil, fmt.Errorf("dial %s: %w", dst, cerr)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", dst, err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// listenTCP listens on addr inside the namespace.
func (n *netNS) listenTCP(addr string) (net.Listener, error) {
	var l net.Listener
	err := n.do(func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s in %s: %w", addr, n.name, err)
	}
	return l, nil
}

func randSuffix() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
