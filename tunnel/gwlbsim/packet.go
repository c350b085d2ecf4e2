//go:build linux

package gwlbsim

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// packetSender is the benchmark's generator socket: an AF_PACKET socket
// bound to the GWLB namespace's underlay link that writes prebuilt
// Ethernet frames straight to the driver (PACKET_QDISC_BYPASS). It skips
// routing, netfilter, the qdisc and the raw socket's per-packet IP work,
// so the generator costs a fraction of what the appliance pays for the
// same packet and the plain-forwarding baseline is limited by the kernel
// it measures, not by the generator.
type packetSender struct {
	fd  int
	hdr [14]byte // Ethernet header: appliance's MAC, ours, IPv4
}

// openPacket opens the generator socket on link in ns, addressing frames
// to the MAC of peerLink in peer (the appliance's side of the veth).
func openPacket(ns *NS, link string, peer *NS, peerLink string) (*packetSender, error) {
	l, err := ns.Netlink().LinkByName(link)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %s: %w", ns.Name, link, err)
	}
	pl, err := peer.Netlink().LinkByName(peerLink)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %s: %w", peer.Name, peerLink, err)
	}
	s := &packetSender{fd: -1}
	copy(s.hdr[0:6], pl.Attrs().HardwareAddr)
	copy(s.hdr[6:12], l.Attrs().HardwareAddr)
	binary.BigEndian.PutUint16(s.hdr[12:], unix.ETH_P_IP)
	err = ns.Do(func() error {
		// Protocol 0: the socket only sends, nothing is queued to it.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		s.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: 0, Ifindex: l.Attrs().Index})
	})
	if err != nil {
		if s.fd >= 0 {
			unix.Close(s.fd)
		}
		return nil, fmt.Errorf("netns %s: packet socket on %s: %w", ns.Name, link, err)
	}
	return s, nil
}

// frame prepends the Ethernet header to an IPv4 packet.
func (s *packetSender) frame(ip []byte) []byte {
	return append(append(make([]byte, 0, len(s.hdr)+len(ip)), s.hdr[:]...), ip...)
}

func (s *packetSender) Close() error { return unix.Close(s.fd) }
