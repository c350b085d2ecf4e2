//go:build linux

package udp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
	"golang.org/x/sys/unix"
)

// Header sizes written by Encap.
const (
	IPv4HeaderLen = 20
	IPv6HeaderLen = 40
	UDPHeaderLen  = 8
	// HeaderRoom is the headroom a buffer needs in front of the UDP
	// payload for Encap to prepend the outer headers in place.
	HeaderRoom = IPv6HeaderLen + UDPHeaderLen
)

// DefaultTTL is the outer hop limit. GWLB is one hop away, but routing
// through a transit hop must not be precluded.
const DefaultTTL = 64

// HeaderLen returns the outer IP+UDP header length for the family of a.
func HeaderLen(a netip.Addr) int {
	if a.Is4() {
		return IPv4HeaderLen + UDPHeaderLen
	}
	return IPv6HeaderLen + UDPHeaderLen
}

// Encap writes outer IP and UDP headers immediately before buf[off:off+n],
// the UDP payload, and returns the whole outer packet (a sub-slice of buf;
// the payload is not copied). src and dst must be the same family and off
// must be at least HeaderLen(dst.Addr()). The UDP checksum is computed
// over the payload; the IPv4 header checksum too (the kernel rewrites it
// anyway for raw sockets). IPv4 packets carry DF: GWLB neither fragments
// nor reassembles.
func Encap(buf []byte, off, n int, src, dst netip.AddrPort, ttl uint8) ([]byte, error) {
	return EncapTail(buf, off, n, nil, 0, src, dst, ttl)
}

// EncapTail is Encap for a UDP payload in two parts, buf[off:off+n]
// followed by tail (sent as a second iovec: Packet.Tail), so a segment of
// a larger packet is sent without being copied. tailSum must be
// csum.Sum(tail, 0); callers that already summed the tail (a segmenter
// computing the inner checksum) save a pass over it.
func EncapTail(buf []byte, off, n int, tail []byte, tailSum uint64, src, dst netip.AddrPort, ttl uint8) ([]byte, error) {
	sa, da := src.Addr(), dst.Addr()
	if sa.Is4() != da.Is4() || !sa.IsValid() || !da.IsValid() {
		return nil, fmt.Errorf("udp encap: address family mismatch %s -> %s", src, dst)
	}
	hl := HeaderLen(da)
	if off < hl || off+n > len(buf) {
		return nil, errors.New("udp encap: no headroom")
	}
	ulen := UDPHeaderLen + n + len(tail)
	start := off - hl
	pkt := buf[start : off+n]
	u := pkt[hl-UDPHeaderLen : hl]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(ulen))
	u[6], u[7] = 0, 0
	var sum uint64
	if da.Is4() {
		if ulen+IPv4HeaderLen > 0xffff {
			return nil, errors.New("udp encap: packet too long")
		}
		ip := pkt[:IPv4HeaderLen]
		ip[0] = 0x45
		ip[1] = 0
		binary.BigEndian.PutUint16(ip[2:], uint16(IPv4HeaderLen+ulen))
		binary.BigEndian.PutUint32(ip[4:], 0x00004000) // id 0 (kernel picks one), DF
		ip[8] = ttl
		ip[9] = unix.IPPROTO_UDP
		ip[10], ip[11] = 0, 0
		s4, d4 := sa.As4(), da.As4()
		copy(ip[12:16], s4[:])
		copy(ip[16:20], d4[:])
		csum.IPv4Header(ip)
		sum = csum.Sum(ip[12:20], uint64(unix.IPPROTO_UDP)+uint64(ulen))
	} else {
		if ulen > 0xffff {
			return nil, errors.New("udp encap: packet too long")
		}
		ip := pkt[:IPv6HeaderLen]
		binary.BigEndian.PutUint32(ip[0:], 6<<28)
		binary.BigEndian.PutUint16(ip[4:], uint16(ulen))
		ip[6] = unix.IPPROTO_UDP
		ip[7] = ttl
		s6, d6 := sa.As16(), da.As16()
		copy(ip[8:24], s6[:])
		copy(ip[24:40], d6[:])
		sum = csum.Sum(ip[8:40], uint64(unix.IPPROTO_UDP)+uint64(ulen))
	}
	sum = csum.Sum(pkt[hl-UDPHeaderLen:], sum)
	if len(tail) > 0 {
		ts := csum.Fold(tailSum)
		if n%2 == 1 {
			// The tail starts at an odd offset: its bytes fall in the
			// other half of each 16-bit word.
			ts = ts<<8 | ts>>8
		}
		sum = csum.Add(sum, uint64(ts))
	}
	cs := ^csum.Fold(sum)
	if cs == 0 {
		cs = 0xffff // 0 means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(u[6:], cs)
	return pkt, nil
}

// Packet is one outer packet for Batch.Send.
type Packet struct {
	// Buf is the complete IP packet as built by Encap, or its head as
	// built by EncapTail.
	Buf []byte
	// Tail, if not empty, is the rest of the packet (EncapTail's tail).
	Tail []byte
	// Dst is its destination (the kernel routes on it).
	Dst netip.Addr
}

// RawSender owns the send-only raw sockets (IPPROTO_RAW, one per family;
// they receive nothing, unlike IPPROTO_UDP raw sockets which would get a
// copy of every UDP packet). It is safe for concurrent use through
// separate Batches.
type RawSender struct {
	v4, v6 *rawSock
}

type rawSock struct {
	f  *os.File
	rc syscall.RawConn
}

// NewRawSender opens the raw sockets in the calling thread's network
// namespace. The IPv6 socket is optional: if the host has IPv6 disabled,
// IPv6 packets fail to send instead.
func NewRawSender() (*RawSender, error) {
	v4, err := openRaw(unix.AF_INET)
	if err != nil {
		return nil, err
	}
	s := &RawSender{v4: v4}
	if v6, err := openRaw(unix.AF_INET6); err == nil {
		s.v6 = v6
	}
	return s, nil
}

func openRaw(family int) (*rawSock, error) {
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("udp: raw socket (family %d): %w", family, err)
	}
	// Large send buffer: a full batch of jumbo packets must fit.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
	f := os.NewFile(uintptr(fd), "raw")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("udp: raw socket: %w", err)
	}
	return &rawSock{f: f, rc: rc}, nil
}

// Close closes the sockets.
func (s *RawSender) Close() error {
	err := s.v4.f.Close()
	if s.v6 != nil {
		err = errors.Join(err, s.v6.f.Close())
	}
	return err
}

// Batch holds the preallocated message arrays for sending through a
// RawSender. One goroutine uses one Batch.
type Batch struct {
	s        *RawSender
	hdrs     []unix.Mmsghdr
	iovs     []unix.Iovec
	names    []unix.RawSockaddrInet6
	writeFn  func(fd uintptr) bool
	wOff     int
	wN       int
	wErr     error
	wFail    int
	pending4 []Packet
	pending6 []Packet
}

// NewBatch returns a Batch sending up to n packets per system call.
func (s *RawSender) NewBatch(n int) *Batch {
	if n < 1 {
		n = 1
	}
	b := &Batch{
		s:        s,
		hdrs:     make([]unix.Mmsghdr, n),
		iovs:     make([]unix.Iovec, 2*n),
		names:    make([]unix.RawSockaddrInet6, n),
		pending4: make([]Packet, 0, n),
		pending6: make([]Packet, 0, n),
	}
	for i := range b.hdrs {
		b.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.hdrs[i].Hdr.Iov = &b.iovs[2*i]
		b.hdrs[i].Hdr.SetIovlen(1)
	}
	b.writeFn = b.doWrite
	return b
}

func (b *Batch) doWrite(fd uintptr) bool {
	for b.wOff < b.wN {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[b.wOff])), uintptr(b.wN-b.wOff), 0, 0, 0)
		switch e {
		case 0:
			b.wOff += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			// The message at wOff failed (EMSGSIZE, no route, ENOBUFS
			// from a full qdisc): record it, skip it, send the rest.
			b.wErr = e
			b.wFail++
			b.wOff++
		}
	}
	return true
}

// Send sends the packets, IPv4 and IPv6 alike, and returns how many the
// kernel accepted. A packet the kernel refuses (no route, too big) is
// skipped and reported in err after the rest have been sent.
func (b *Batch) Send(pkts []Packet) (int, error) {
	sent := 0
	var firstErr error
	for len(pkts) > 0 {
		chunk := pkts
		if len(chunk) > len(b.hdrs) {
			chunk = chunk[:len(b.hdrs)]
		}
		pkts = pkts[len(chunk):]
		b.pending4, b.pending6 = b.pending4[:0], b.pending6[:0]
		for _, p := range chunk {
			if p.Dst.Is4() {
				b.pending4 = append(b.pending4, p)
			} else {
				b.pending6 = append(b.pending6, p)
			}
		}
		for _, fam := range [2]struct {
			sock *rawSock
			pkts []Packet
			v4   bool
		}{{b.s.v4, b.pending4, true}, {b.s.v6, b.pending6, false}} {
			if len(fam.pkts) == 0 {
				continue
			}
			if fam.sock == nil {
				if firstErr == nil {
					firstErr = errors.New("udp: no IPv6 raw socket")
				}
				continue
			}
			n, err := b.send(fam.sock, fam.pkts, fam.v4)
			sent += n
			if err != nil && firstErr == nil {
				firstErr = err
			}
		}
	}
	return sent, firstErr
}

func (b *Batch) send(s *rawSock, pkts []Packet, v4 bool) (int, error) {
	for i, p := range pkts {
		nm := &b.names[i]
		*nm = unix.RawSockaddrInet6{}
		if v4 {
			sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(nm))
			sa.Family = unix.AF_INET
			sa.Addr = p.Dst.As4()
			b.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		} else {
			nm.Family = unix.AF_INET6
			nm.Addr = p.Dst.As16()
			b.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		}
		b.iovs[2*i].Base = unsafe.SliceData(p.Buf)
		b.iovs[2*i].SetLen(len(p.Buf))
		if len(p.Tail) > 0 {
			b.iovs[2*i+1].Base = unsafe.SliceData(p.Tail)
			b.iovs[2*i+1].SetLen(len(p.Tail))
			b.hdrs[i].Hdr.SetIovlen(2)
		} else {
			b.hdrs[i].Hdr.SetIovlen(1)
		}
	}
	b.wOff, b.wN, b.wErr, b.wFail = 0, len(pkts), nil, 0
	err := s.rc.Write(b.writeFn)
	if err == nil && b.wErr != nil {
		err = fmt.Errorf("udp: sendmmsg: %w", b.wErr)
	}
	return b.wOff - b.wFail, err
}
