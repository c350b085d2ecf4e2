//go:build linux

package steer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrForbiddenDestination is returned by DialUpstream for destinations the
// appliance must never connect to on a client's behalf.
var ErrForbiddenDestination = errors.New("forbidden upstream destination")

func transparentControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			ifd := int(fd)
			if serr = unix.SetsockoptInt(ifd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
				return
			}
			if network == "tcp6" {
				serr = unix.SetsockoptInt(ifd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			} else {
				serr = unix.SetsockoptInt(ifd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			}
			if serr != nil {
				serr = fmt.Errorf("transparent: %w", serr)
				return
			}
			if mark != 0 {
				if serr = unix.SetsockoptInt(ifd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); serr != nil {
					serr = fmt.Errorf("SO_MARK: %w", serr)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// ListenTransparent opens a transparent (IP_TRANSPARENT / IPV6_TRANSPARENT)
// TCP listener on addr, which should be 127.0.0.1:<port> or [::1]:<port>
// with the http/tls listen port: that is where the TPROXY rules deliver.
// Accepted connections have the client's original destination as their
// local address. The listener carries SO_MARK mark_base, inherited by the
// accepted connections, so their first route lookup never depends on the
// main table (see doc.go).
func (s *Steerer) ListenTransparent(ctx context.Context, addr string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	network := "tcp4"
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		network = "tcp6"
	}
	// mark_base on the listener: the SYN-ACK and the accepted socket's
	// packets are first routed by the local-delivery table (always a
	// route), then re-marked into their tunnel by the output route chain.
	// With mark 0 the first lookup uses the main table and fails without
	// a route to the client (one-arm without a default route).
	lc := net.ListenConfig{Control: transparentControl(s.cfg.MarkBase)}
	var ln net.Listener
	err = s.ns.do(func() error {
		var err error
		ln, err = lc.Listen(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen transparent %s: %w", addr, err)
	}
	return ln, nil
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	switch v := a.(type) {
	case *net.TCPAddr:
		ap := v.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
	case nil:
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// slotOf returns the tunnel slot of an intercepted connection: the mark of
// its conntrack entry (client -> original destination), set in prerouting
// from the gwi-* it arrived on.
func (s *Steerer) slotOf(c net.Conn) (uint16, error) {
	client, ok1 := addrPort(c.RemoteAddr())
	dst, ok2 := addrPort(c.LocalAddr())
	if !ok1 || !ok2 {
		return 0, errors.New("connection without TCP addresses")
	}
	ct := s.ct.Load()
	if ct == nil {
		return 0, errors.New("steerer not started")
	}
	m, err := ct.mark(client, dst)
	if err != nil {
		return 0, err
	}
	if m&markMask != s.cfg.MarkBase || m == s.cfg.MarkBase {
		return 0, fmt.Errorf("connection %s -> %s did not come through a tunnel (ct mark %#x)", client, dst, m)
	}
	return uint16(m & s.cfg.slotMask()), nil
}

// EndpointOf returns the GWLB endpoint id of the tunnel an intercepted
// connection arrived through. It costs one conntrack GET over netlink (see
// doc.go for why not SO_MARK).
func (s *Steerer) EndpointOf(c net.Conn) (uint64, bool) {
	slot, err := s.slotOf(c)
	if err != nil {
		return 0, false
	}
	s.mu.Lock()
	p, ok := s.pairs[slot]
	s.mu.Unlock()
	if !ok {
		return 0, false
	}
	return p.EndpointID, true
}

// DialUpstream connects to dst on behalf of the intercepted client
// connection. In nat mode it is a plain connection from the appliance's own
// address (masquerade is for forwarded traffic only). In tunnel mode it
// keeps the client's address and port (IP_TRANSPARENT, bind client ip:port)
// and carries the tunnel's mark, so it leaves through the client's gwo-*
// with a 5-tuple GWLB already knows; its replies come back through gwi-*
// and are delivered to this socket by the `socket transparent` rule.
func (s *Steerer) DialUpstream(ctx context.Context, client net.Conn, dst netip.AddrPort) (net.Conn, error) {
	if why := s.checkDestination(dst.Addr()); why != "" {
		return nil, fmt.Errorf("dial %s (%s): %w", dst, why, ErrForbiddenDestination)
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	d := net.Dialer{}
	if s.cfg.tunnelMode() {
		slot, err := s.slotOf(client)
		if err != nil {
			return nil, fmt.Errorf("dial %s: tunnel of client: %w", dst, err)
		}
		src, _ := addrPort(client.RemoteAddr())
		if src.Addr().Is4() != dst.Addr().Is4() {
			return nil, fmt.Errorf("dial %s: client %s has another address family", dst, src)
		}
		d.LocalAddr = net.TCPAddrFromAddrPort(src)
		d.Control = transparentControl(s.cfg.tunnelMark(slot))
	}
	network := "tcp4"
	if dst.Addr().Is6() {
		network = "tcp6"
	}
	var c net.Conn
	err := s.ns.do(func() error {
		// Only socket creation depends on the namespace, but Dial creates
		// and connects in one call; the wait happens in the poller.
		var err error
		c, err = d.DialContext(ctx, network, dst.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s: %w", dst, err)
	}
	return c, nil
}
