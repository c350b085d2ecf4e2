//go:build linux

package gwlbsim

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	ipv4Len  = 20
	udpLen   = 8
	outerLen = ipv4Len + udpLen
)

// openRaw opens an IPPROTO_RAW socket (IP_HDRINCL implied) in ns. GWLB
// sends each flow from its own source port, which an ordinary UDP socket
// cannot do without one socket per port.
func openRaw(ns *NS) (int, error) {
	fd := -1
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("netns %s: raw socket: %w", ns.Name, err)
	}
	// A large send buffer keeps the benchmark from measuring socket
	// backpressure instead of the appliance.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
	return fd, nil
}

// buildUDP4 writes an IPv4/UDP packet from src to dst carrying payload
// into buf and returns it. The UDP checksum is valid (GWLB and the
// appliance's kernel drop bad ones); DF is set as GWLB never fragments.
func buildUDP4(buf []byte, src, dst netip.AddrPort, payload []byte) []byte {
	n := outerLen + len(payload)
	buf = append(buf[:0], make([]byte, outerLen)...)
	buf = append(buf, payload...)
	ip := buf[:ipv4Len]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(n))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip, 0)))
	u := buf[ipv4Len:outerLen]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(udpLen+len(payload)))
	ps := sum(ip[12:20], uint64(unix.IPPROTO_UDP)+uint64(udpLen+len(payload)))
	c := ^fold(sum(buf[ipv4Len:], ps))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return buf
}

// sum and fold are the simulator's own RFC 1071 checksum, 16 bits at a
// time, on purpose not tunnel/csum: the simulator plays GWLB and the
// appliance's kernel, which check the appliance's checksums independently,
// so a bug in tunnel/csum must not be mirrored here.
func sum(b []byte, s uint64) uint64 {
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

func fold(s uint64) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func sendRaw(fd int, pkt []byte, dst netip.Addr) error {
	sa := &unix.SockaddrInet4{Addr: dst.As4()}
	return unix.Sendto(fd, pkt, 0, sa)
}

// udpCsumErrors reads the namespace's UDP InCsumErrors counter: datagrams
// the kernel dropped for a bad checksum before any socket saw them.
func udpCsumErrors(ns *NS) (uint64, error) {
	var v uint64
	err := ns.Do(func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		var names []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != "Udp:" {
				continue
			}
			if names == nil {
				names = fields
				continue
			}
			for i, n := range names {
				if n == "InCsumErrors" && i < len(fields) {
					v, err = strconv.ParseUint(fields[i], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("no Udp InCsumErrors in snmp")
	})
	return v, err
}
