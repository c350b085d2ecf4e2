//go:build linux

package steer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ctnetlink constants (linux/netfilter/nfnetlink_conntrack.h).
const (
	ipctnlMsgCtGet   = 1
	ipctnlMsgCtDel   = 2
	ctaMarkMask      = 21
	ctaTupleOrig     = 1
	ctaMark          = 8
	ctaZone          = 18
	ctaTupleIP       = 1
	ctaTupleProto    = 2
	ctaIPv4Src       = 1
	ctaIPv4Dst       = 2
	ctaIPv6Src       = 3
	ctaIPv6Dst       = 4
	ctaProtoNum      = 1
	ctaProtoSrcPort  = 2
	ctaProtoDstPort  = 3
	nfnlSubsysCtnl   = 1
	nfnetlinkV0      = 0
	nfgenmsgHeaderSz = 4
)

// ctLookup asks the kernel for one conntrack entry by its original tuple
// (a single NFCT GET, not a table dump) and returns its mark. It is how
// EndpointOf and DialUpstream learn which tunnel an accepted connection came
// through.
//
// It speaks netlink on a plain blocking socket rather than through
// mdlayher/netlink's Execute: ctnetlink answers a GET with NLM_F_MULTI set
// and no NLMSG_DONE, and a generic client waits for the DONE forever.
type ctLookup struct {
	mu  sync.Mutex // one request in flight per socket
	fd  int
	seq uint32
	buf []byte
}

func dialConntrack(ns nsExec) (*ctLookup, error) {
	var fd int
	err := ns.do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("conntrack netlink: %w", err)
	}
	// A lost answer must not hang a connection forever.
	tv := unix.Timeval{Sec: 2}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("conntrack netlink: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("conntrack netlink bind: %w", err)
	}
	return &ctLookup{fd: fd, buf: make([]byte, 16384)}, nil
}

func (l *ctLookup) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fd < 0 {
		return nil
	}
	err := unix.Close(l.fd)
	l.fd = -1
	return err
}

// request builds the CT GET for the TCP connection src -> dst in the
// default zone.
func ctRequest(seq uint32, src, dst netip.AddrPort, zone uint16) ([]byte, error) {
	sa, da := src.Addr().Unmap(), dst.Addr().Unmap()
	if sa.Is4() != da.Is4() {
		return nil, errors.New("conntrack: mixed address families")
	}
	fam := uint8(unix.AF_INET)
	srcT, dstT := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if sa.Is6() {
		fam, srcT, dstT = unix.AF_INET6, ctaIPv6Src, ctaIPv6Dst
	}
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Nested(ctaTupleOrig, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
			ae.Bytes(srcT, sa.AsSlice())
			ae.Bytes(dstT, da.AsSlice())
			return nil
		})
		ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
			ae.Uint8(ctaProtoNum, unix.IPPROTO_TCP)
			ae.Uint16(ctaProtoSrcPort, src.Port())
			ae.Uint16(ctaProtoDstPort, dst.Port())
			return nil
		})
		return nil
	})
	ae.Uint16(ctaZone, zone)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, fmt.Errorf("conntrack: encode: %w", err)
	}
	return ctMessage(ipctnlMsgCtGet, unix.NLM_F_REQUEST, seq, fam, attrs), nil
}

// ctMessage frames a ctnetlink request: netlink header, nfgenmsg (family,
// version 0) and attrs.
func ctMessage(typ, flags uint16, seq uint32, family uint8, attrs []byte) []byte {
	n := unix.NLMSG_HDRLEN + nfgenmsgHeaderSz + len(attrs)
	b := make([]byte, n)
	binary.NativeEndian.PutUint32(b[0:], uint32(n))
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysCtnl<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	b[16] = family
	b[17] = nfnetlinkV0
	copy(b[20:], attrs)
	return b
}

// exchange sends req (whose sequence number is l.seq) and returns the
// first answer to it that accept takes; answers to earlier, timed-out
// requests are skipped. l.mu must be held.
func (l *ctLookup) exchange(req []byte, accept func(*syscall.NetlinkMessage) bool) (*syscall.NetlinkMessage, error) {
	if err := unix.Sendto(l.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(l.fd, l.buf, 0)
		if err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(l.buf[:n])
		if err != nil {
			return nil, fmt.Errorf("parse: %w", err)
		}
		for i := range msgs {
			if msgs[i].Header.Seq == l.seq && accept(&msgs[i]) {
				return &msgs[i], nil
			}
		}
	}
}

// errnoOf is the error code of an NLMSG_ERROR message (0: an ack).
func errnoOf(m *syscall.NetlinkMessage) unix.Errno {
	if len(m.Data) < 4 {
		return 0
	}
	return unix.Errno(-int32(binary.NativeEndian.Uint32(m.Data)))
}

// mark returns the conntrack mark of the TCP connection src -> dst in the
// default zone (where client-side connections are tracked).
func (l *ctLookup) mark(src, dst netip.AddrPort) (uint32, error) {
	return l.markZone(src, dst, 0)
}

func (l *ctLookup) markZone(src, dst netip.AddrPort, zone uint16) (uint32, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fd < 0 {
		return 0, errors.New("conntrack: closed")
	}
	l.seq++
	req, err := ctRequest(l.seq, src, dst, zone)
	if err != nil {
		return 0, err
	}
	m, err := l.exchange(req, func(*syscall.NetlinkMessage) bool { return true })
	if err != nil {
		return 0, fmt.Errorf("conntrack get %s -> %s: %w", src, dst, err)
	}
	if m.Header.Type == unix.NLMSG_ERROR {
		if e := errnoOf(m); e != 0 {
			return 0, fmt.Errorf("conntrack get %s -> %s: %w", src, dst, e)
		}
		return 0, fmt.Errorf("conntrack get %s -> %s: no entry", src, dst)
	}
	return parseCtMark(m.Data)
}

// flushMark deletes every conntrack entry, in every zone and family,
// whose mark under mask is mark: one CT DELETE without a tuple, which the
// kernel turns into a filtered flush (no dump to user space, however big
// the table).
//
// Why: a tunnel's slot, and so its mark, is reused by the next tunnel.
// Entries of the old tunnel's flows (a UDP flow lingers for minutes, a
// TCP one in TIME_WAIT for two) would route late packets of those flows
// into the new tunnel's gwo-*, another endpoint's, where at best the flow
// table drops them.
func (l *ctLookup) flushMark(mark, mask uint32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fd < 0 {
		return errors.New("conntrack: closed")
	}
	l.seq++
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Uint32(ctaMark, mark)
	ae.Uint32(ctaMarkMask, mask)
	attrs, err := ae.Encode()
	if err != nil {
		return fmt.Errorf("conntrack: encode: %w", err)
	}
	req := ctMessage(ipctnlMsgCtDel, unix.NLM_F_REQUEST|unix.NLM_F_ACK, l.seq, unix.AF_UNSPEC, attrs) // AF_UNSPEC, version 0: every family
	m, err := l.exchange(req, func(m *syscall.NetlinkMessage) bool { return m.Header.Type == unix.NLMSG_ERROR })
	if err != nil {
		return fmt.Errorf("conntrack flush mark %#x: %w", mark, err)
	}
	// ENOENT: nothing carried the mark.
	if e := errnoOf(m); e != 0 && e != unix.ENOENT {
		return fmt.Errorf("conntrack flush mark %#x: %w", mark, e)
	}
	return nil
}

func parseCtMark(data []byte) (uint32, error) {
	if len(data) < nfgenmsgHeaderSz {
		return 0, errors.New("conntrack: short answer")
	}
	ad, err := netlink.NewAttributeDecoder(data[nfgenmsgHeaderSz:])
	if err != nil {
		return 0, fmt.Errorf("conntrack: decode: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == ctaMark {
			return ad.Uint32(), nil
		}
	}
	if err := ad.Err(); err != nil {
		return 0, fmt.Errorf("conntrack: decode: %w", err)
	}
	return 0, nil // no mark attribute: mark 0
}
