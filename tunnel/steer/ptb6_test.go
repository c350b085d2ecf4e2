//go:build linux

package steer

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"golang.org/x/sys/unix"
)

// TestNetworkPolicyPacketTooBig6: an ICMPv6 packet-too-big about an
// allowed IPv6 UDP flow, sent from beyond the appliance, reaches the
// client although no rule allows ICMPv6 (related to the flow); one about
// a flow that does not exist does not. Both egress modes.
func TestNetworkPolicyPacketTooBig6(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		t.Run(mode, func(t *testing.T) {
			cfg := npConfig(mode, epA)
			cfg.NetworkPolicy.Rules = append(cfg.NetworkPolicy.Rules, NetRule{Name: "udp6-echo", Action: NetAllow, Protocol: ProtoUDP,
				Destinations: []netip.Prefix{netip.PrefixFrom(serverAddr6, 128)}, Ports: []policy.PortRange{{Lo: 5001, Hi: 5001}}})
			tp := newTopo(t, cfg, "a")
			a := tp.tun["a"]
			far := tp.eg
			if mode == EgressTunnel {
				far = a.srv
			}
			var pc net.PacketConn
			if err := far.do(func() (err error) {
				pc, err = net.ListenPacket("udp6", netip.AddrPortFrom(serverAddr6, 5001).String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			serveUDP(t, pc, func(_ string, from net.Addr) string { return from.String() })
			from, err := udpAsk(t, a.cli, netip.AddrPortFrom(serverAddr6, 5001), "ping")
			if err != nil {
				t.Fatalf("udp6 5001: %v", err)
			}
			got := make(chan struct{}, 1)
			stop := icmp6Watch(t, a.cli, got)
			defer stop()
			sendPacketTooBig(t, far, from, netip.AddrPortFrom(serverAddr6, 5001))
			select {
			case <-got:
			case <-time.After(5 * time.Second):
				t.Fatalf("packet-too-big for the allowed flow did not reach the client; stats %+v", tp.s.Stats())
			}
			// Unsolicited: no such flow (another source port).
			sendPacketTooBig(t, far, netip.AddrPortFrom(from.Addr(), from.Port()^0x5555), netip.AddrPortFrom(serverAddr6, 5001))
			select {
			case <-got:
				t.Fatal("unsolicited packet-too-big reached the client")
			case <-time.After(time.Second):
			}
		})
	}
}

// icmp6Watch signals got when n receives an ICMPv6 packet-too-big.
func icmp6Watch(t *testing.T, n *nsh, got chan<- struct{}) (stop func()) {
	var fd int
	if err := n.do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tv := unix.Timeval{Usec: 100000}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		buf := make([]byte, 2048)
		for {
			select {
			case <-done:
				return
			default:
			}
			k, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || k < 8+40+8 || buf[0] != 2 { // type 2: packet too big
				continue
			}
			if buf[8+6] == unix.IPPROTO_UDP && binary.BigEndian.Uint16(buf[8+40+2:]) == 5001 {
				select {
				case got <- struct{}{}:
				default:
				}
			}
		}
	}()
	return func() {
		select {
		case <-done:
			return
		default:
		}
		close(done)
		<-exited
		unix.Close(fd)
	}
}

// sendPacketTooBig sends, from n, an ICMPv6 packet-too-big (MTU 1280) to
// src's address quoting a UDP packet src -> dst, as a router on the path
// would (the kernel fills in the ICMPv6 checksum).
func sendPacketTooBig(t *testing.T, n *nsh, src, dst netip.AddrPort) {
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], 1400)
	ip[6] = unix.IPPROTO_UDP
	ip[7] = 64
	s6, d6 := src.Addr().As16(), dst.Addr().As16()
	copy(ip[8:], s6[:])
	copy(ip[24:], d6[:])
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], 1400)
	msg := append([]byte{2, 0, 0, 0, 0, 0, 0x05, 0x00}, append(ip, udp...)...)
	err := n.do(func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		// From the server's address, as the error's quoted packet says.
		if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: dst.Addr().As16()}); err != nil {
			return err
		}
		return unix.Sendto(fd, msg, 0, &unix.SockaddrInet6{Addr: s6})
	})
	if err != nil {
		t.Fatalf("send packet-too-big: %v", err)
	}
}
