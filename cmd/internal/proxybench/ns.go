package proxybench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
)

// netNS is a named network namespace (usable with `ip netns exec` and
// nsexec) owned by the benchmark: tunnel/inns's, plus the dial and listen
// helpers the load client and the upstream need.
type netNS struct{ *inns.NS }

// newNetNS creates the named namespace with lo up.
func newNetNS(name string) (*netNS, error) {
	n, err := inns.New(name)
	if err != nil {
		return nil, err
	}
	return &netNS{n}, nil
}

// dialTCP connects to dst from inside the namespace. Only socket(2) runs
// on a thread in the namespace; the connect waits in Go's poller like any
// other dial, so a dial costs one extra thread hop, not a locked thread per
// connection.
func (n *netNS) dialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	var fd int
	if err := n.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		return nil, fmt.Errorf("socket in %s: %w", n.Name, err)
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
	err := n.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s in %s: %w", addr, n.Name, err)
	}
	return l, nil
}
