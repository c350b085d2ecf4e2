//go:build linux

// Package udp is the tunnel's underlay I/O: batched receive of GENEVE
// datagrams on SO_REUSEPORT sockets (recvmmsg, with the local address each
// datagram arrived on), and batched send of replies through raw sockets
// (sendmmsg), which is the only way to choose the UDP source port per
// packet.
//
// Why raw sockets for sending: GWLB expects the reply to come from the
// port its packet came from (it hashes on it), to port 6081, and from the
// local address the flow arrived on. A kernel UDP socket bound to 6081
// would always send from 6081. The reference handler (gwlbtun) sends with
// an IPPROTO_RAW socket and builds the IP and UDP headers itself; so does
// this package, but it always writes a valid UDP checksum (mandatory for
// IPv6; the reference's dev branch left it uninitialised and its replies
// were dropped).
//
// Both halves are batch-first and allocate nothing per packet: message
// arrays, iovecs, address and control buffers are built once per socket
// and the callbacks handed to syscall.RawConn are created once.
package udp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Message is one received datagram.
type Message struct {
	// Buf receives the datagram; N is its length.
	Buf []byte
	N   int
	// Src is the sender (the GWLB address and source port).
	Src netip.AddrPort
	// Local is the local address the datagram was sent to, from
	// IP_PKTINFO/IPV6_PKTINFO. Replies must come from it.
	Local netip.Addr
	// IfIndex is the interface the datagram arrived on.
	IfIndex int
	// Truncated is set when the datagram was longer than Buf.
	Truncated bool
}

// ListenConfig configures Listen.
type ListenConfig struct {
	// Addr is the local address and port. An unspecified IPv6 address
	// ("::") gives a dual-stack socket receiving IPv4 too.
	Addr netip.AddrPort
	// Batch is the largest number of datagrams one ReadBatch returns.
	Batch int
	// ReadBuffer, if > 0, sets SO_RCVBUF (SO_RCVBUFFORCE when permitted).
	ReadBuffer int
}

const oobSize = 64 // fits one in6_pktinfo or in_pktinfo control message

// Conn is a receiving UDP socket in a SO_REUSEPORT group: open one per
// worker on the same address and the kernel spreads flows across them.
// ReadBatch must be called from one goroutine at a time.
type Conn struct {
	c  *net.UDPConn
	rc syscall.RawConn

	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	oob   []byte

	readFn func(fd uintptr) bool
	rMsgs  []Message
	rN     int
	rErr   error
}

// Listen opens a receiving socket with SO_REUSEPORT and packet-info
// control messages enabled.
func Listen(ctx context.Context, cfg ListenConfig) (*Conn, error) {
	if cfg.Batch < 1 {
		cfg.Batch = 1
	}
	network := "udp4"
	if cfg.Addr.Addr().Is6() && !cfg.Addr.Addr().Is4In6() {
		network = "udp6"
		if cfg.Addr.Addr().IsUnspecified() {
			network = "udp" // dual stack
		}
	}
	var sockErr error
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		err := rc.Control(func(fd uintptr) {
			s := int(fd)
			if sockErr = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); sockErr != nil {
				sockErr = fmt.Errorf("SO_REUSEPORT: %w", sockErr)
				return
			}
			if network != "udp6" {
				if sockErr = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); sockErr != nil {
					sockErr = fmt.Errorf("IP_PKTINFO: %w", sockErr)
					return
				}
			}
			if network != "udp4" {
				if sockErr = unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); sockErr != nil {
					sockErr = fmt.Errorf("IPV6_RECVPKTINFO: %w", sockErr)
					return
				}
			}
			if cfg.ReadBuffer > 0 {
				if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, cfg.ReadBuffer) != nil {
					if sockErr = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.ReadBuffer); sockErr != nil {
						sockErr = fmt.Errorf("SO_RCVBUF: %w", sockErr)
						return
					}
				}
			}
		})
		if err != nil {
			return err
		}
		return sockErr
	}}
	pc, err := lc.ListenPacket(ctx, network, cfg.Addr.String())
	if err != nil {
		return nil, fmt.Errorf("udp listen %s: %w", cfg.Addr, err)
	}
	uc := pc.(*net.UDPConn)
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("udp listen %s: %w", cfg.Addr, err)
	}
	c := &Conn{
		c:     uc,
		rc:    rc,
		hdrs:  make([]unix.Mmsghdr, cfg.Batch),
		iovs:  make([]unix.Iovec, cfg.Batch),
		names: make([]unix.RawSockaddrInet6, cfg.Batch),
		oob:   make([]byte, cfg.Batch*oobSize),
	}
	for i := range c.hdrs {
		h := &c.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&c.names[i]))
		h.Iov = &c.iovs[i]
		h.SetIovlen(1)
	}
	c.readFn = c.doRead
	return c, nil
}

// LocalAddr returns the bound address.
func (c *Conn) LocalAddr() netip.AddrPort {
	return c.c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// SetReadDeadline bounds how long ReadBatch waits; the daemon uses it so
// an idle worker still wakes to prove it is alive.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.c.SetReadDeadline(t) }

// Close closes the socket; a blocked ReadBatch returns net.ErrClosed.
func (c *Conn) Close() error { return c.c.Close() }

func (c *Conn) doRead(fd uintptr) bool {
	n := len(c.rMsgs)
	if n > len(c.hdrs) {
		n = len(c.hdrs)
	}
	for i := 0; i < n; i++ {
		h := &c.hdrs[i].Hdr
		b := c.rMsgs[i].Buf
		c.iovs[i].Base = unsafe.SliceData(b)
		c.iovs[i].SetLen(len(b))
		h.Namelen = uint32(unsafe.Sizeof(c.names[i]))
		h.Control = &c.oob[i*oobSize]
		h.SetControllen(oobSize)
		h.Flags = 0
	}
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.hdrs[0])), uintptr(n), 0, 0, 0)
		switch e {
		case 0:
			c.rN = int(r)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			c.rErr = e
			return true
		}
	}
}

// ReadBatch receives up to min(len(msgs), Batch) datagrams into msgs[i].Buf
// and fills in the rest of each Message. It blocks until at least one
// datagram arrives (or the read deadline passes) and returns the count.
func (c *Conn) ReadBatch(msgs []Message) (int, error) {
	c.rMsgs, c.rN, c.rErr = msgs, 0, nil
	err := c.rc.Read(c.readFn)
	c.rMsgs = nil
	if err == nil {
		err = c.rErr
	}
	if err != nil {
		return 0, err
	}
	for i := 0; i < c.rN; i++ {
		m := &msgs[i]
		h := &c.hdrs[i]
		m.N = int(h.Len)
		m.Truncated = h.Hdr.Flags&unix.MSG_TRUNC != 0
		m.Src = sockaddrToAddrPort(&c.names[i])
		m.Local, m.IfIndex = parsePktinfo(c.oob[i*oobSize : i*oobSize+int(h.Hdr.Controllen)])
	}
	return c.rN, nil
}

func sockaddrToAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), ntohs(sa4.Port))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return binary.BigEndian.Uint16(b[:])
}

// parsePktinfo walks the control messages without allocating (unlike
// unix.ParseSocketControlMessage) and returns the destination address.
func parsePktinfo(oob []byte) (netip.Addr, int) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		if uint64(h.Len) < unix.SizeofCmsghdr || uint64(h.Len) > uint64(len(oob)) {
			return netip.Addr{}, 0
		}
		data := oob[unix.SizeofCmsghdr:int(h.Len)]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			return netip.AddrFrom4(pi.Addr), int(pi.Ifindex)
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			return netip.AddrFrom16(pi.Addr).Unmap(), int(pi.Ifindex)
		}
		space := unix.CmsgSpace(int(h.Len) - unix.SizeofCmsghdr)
		if space > len(oob) {
			break
		}
		oob = oob[space:]
	}
	return netip.Addr{}, 0
}

// ErrClosed reports whether err means the socket was closed.
func ErrClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
