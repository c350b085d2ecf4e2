//go:build linux

package steer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"golang.org/x/sys/unix"
)

// npConfig is a deny-by-default network policy: SSH only from endpoint
// a's tunnel, UDP 5001 to the server, nothing else (no ICMP rule: the
// frag-needed test proves related errors pass anyway).
func npConfig(mode string, epA uint64) Config {
	c := DefaultConfig()
	c.EgressMode = mode
	c.HTTPPorts = []uint16{80} // 8080 is not intercepted here
	c.SysctlInterval = time.Second
	c.NetworkPolicy = NetworkPolicy{
		DefaultAction: NetDeny,
		LogGroup:      4757,
		Rules: []NetRule{
			{Name: "ssh-a", Action: NetAllow, Protocol: ProtoTCP, Endpoints: []string{policy.FormatEndpointID(epA)},
				Destinations: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:113::/48")},
				Ports:        []policy.PortRange{{Lo: 22, Hi: 22}}},
			{Name: "no-test-net-3", Action: NetDeny, Destinations: []netip.Prefix{netip.MustParsePrefix("203.0.113.99/32")}},
			{Name: "udp-echo", Action: NetAllow, Protocol: ProtoUDP, Clients: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")},
				Ports: []policy.PortRange{{Lo: 5000, Hi: 5001}}},
			{Name: "refuse-8081", Action: NetReject, Protocol: ProtoTCP, Ports: []policy.PortRange{{Lo: 8081, Hi: 8081}}},
			{Name: "refuse-5002", Action: NetReject, Protocol: ProtoUDP, Ports: []policy.PortRange{{Lo: 5002, Hi: 5002}}},
		},
	}
	return c
}

const epA = 0x0123456789abcdef // newTopo's endpoint id of the first tunnel

// TestNetworkPolicy: with a deny-by-default network policy, TCP 8080 (a
// server listens) is refused while SSH from the allowed endpoint works and
// SSH from another endpoint does not; an allowed UDP exchange works; TCP
// 443 stays with the proxy; a fragmentation-needed error about the allowed
// UDP flow reaches the client although no rule allows ICMP, and an
// unsolicited one does not. Both egress modes.
func TestNetworkPolicy(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		t.Run(mode, func(t *testing.T) {
			tp := newTopo(t, npConfig(mode, epA), "a", "b")
			tp.startProxy(false)
			a, b := tp.tun["a"], tp.tun["b"]
			far := tp.eg // where forwarded traffic ends up
			if mode == EgressTunnel {
				far = nil
			}
			servers := []*nsh{a.srv, b.srv}
			if far != nil {
				servers = []*nsh{far}
			}
			for _, srv := range servers {
				tcpServe(t, srv, 8080)
				tcpServe(t, srv, 8081)
				udpEchoFrom(t, srv, 5001)
				udpEchoFrom(t, srv, 5002)
			}

			// Intercepted: the proxy answers, the network policy is not asked.
			if line, _, err := request(t, a.cli, netip.AddrPortFrom(serverAddr, 443)); err != nil || !strings.HasPrefix(line, "proxy ") {
				t.Fatalf("443: %q %v", line, err)
			}
			// SSH from a: allowed.
			if line, _, err := request(t, a.cli, netip.AddrPortFrom(serverAddr, 22)); err != nil {
				t.Fatalf("ssh from a: %q %v", line, err)
			}
			if line, _, err := request(t, a.cli, netip.AddrPortFrom(serverAddr6, 22)); err != nil {
				t.Fatalf("ssh6 from a: %q %v", line, err)
			}
			before := tp.s.Stats().Counters[npCounter(DefaultRuleName)].Packets
			// SSH from b (other endpoint) and 8080 from a: denied.
			for _, c := range []struct {
				tn  *tunNS
				dst netip.AddrPort
			}{{b, netip.AddrPortFrom(serverAddr, 22)}, {a, netip.AddrPortFrom(serverAddr, 8080)}, {a, netip.AddrPortFrom(serverAddr6, 8080)}} {
				if conn, err := dial(t, c.tn.cli, c.dst, 2*time.Second); err == nil {
					conn.Close()
					t.Fatalf("%s from %s: connected, want denied", c.dst, c.tn.x)
				}
			}
			if after := tp.s.Stats().Counters[npCounter(DefaultRuleName)].Packets; after <= before {
				t.Fatalf("np_default counter %d -> %d", before, after)
			}
			// reject: refused at once although a server listens (a TCP
			// reset; ICMP administratively prohibited for UDP).
			t0 := time.Now()
			if conn, err := dial(t, a.cli, netip.AddrPortFrom(serverAddr, 8081), 5*time.Second); err == nil {
				conn.Close()
				t.Fatal("8081 connected, want rejected")
			} else if !errors.Is(err, unix.ECONNREFUSED) || time.Since(t0) > 3*time.Second {
				t.Fatalf("8081: %v after %s, want connection refused at once", err, time.Since(t0))
			}
			if _, err := udpAsk(t, a.cli, netip.AddrPortFrom(serverAddr, 5002), "ping"); err == nil || strings.Contains(err.Error(), "no answer") {
				t.Fatalf("udp 5002: %v, want an ICMP error", err)
			}
			// Allowed UDP exchange.
			from, err := udpAsk(t, a.cli, netip.AddrPortFrom(serverAddr, 5001), "ping")
			if err != nil {
				t.Fatalf("udp 5001: %v", err)
			}
			// Not allowed UDP port.
			if _, err := udpAsk(t, a.cli, netip.AddrPortFrom(serverAddr, 4433), "ping"); err == nil {
				t.Fatal("udp 4433 answered, want denied")
			}

			// Frag-needed about the allowed flow, sent from beyond the
			// appliance (quoting the packet as the far side saw it).
			icmpFrom, icmpDst := a.srv, clientAddr
			if far != nil {
				icmpFrom, icmpDst = far, egressAddr
			}
			_ = icmpDst
			got := make(chan struct{}, 1)
			stop := icmpWatch(t, a.cli, from.Port(), got)
			defer stop()
			quoted := netip.AddrPortFrom(from.Addr(), from.Port())
			sendFragNeeded(t, icmpFrom, quoted, netip.AddrPortFrom(serverAddr, 5001))
			select {
			case <-got:
			case <-time.After(5 * time.Second):
				t.Fatalf("frag-needed for the allowed flow did not reach the client; stats %+v", tp.s.Stats())
			}
			// Unsolicited (no such flow): dropped by the default deny in
			// tunnel mode; in nat mode it has no conntrack entry to be
			// de-NATed by and so never reaches the client either.
			stop2 := icmpWatch(t, a.cli, 4999, got)
			defer stop2()
			sendFragNeeded(t, icmpFrom, netip.AddrPortFrom(from.Addr(), 4999), netip.AddrPortFrom(serverAddr, 5001))
			select {
			case <-got:
				t.Fatal("unsolicited frag-needed reached the client")
			case <-time.After(time.Second):
			}
			if !strings.Contains(tp.s.Explain(), "np_ssh-a") {
				t.Fatalf("explain lacks the rules:\n%s", tp.s.Explain())
			}
		})
	}
}

// tcpServe answers TCP on port with "<peer>\n".
func tcpServe(t *testing.T, n *nsh, port int) {
	for _, nw := range []string{"tcp4", "tcp6"} {
		var ln net.Listener
		if err := n.do(func() (err error) { ln, err = net.Listen(nw, fmt.Sprintf(":%d", port)); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s\n", c.RemoteAddr())
				c.Close()
			}
		}()
	}
}

// udpEchoFrom answers each datagram on serverAddr:port with the sender's
// address as the server saw it.
func udpEchoFrom(t *testing.T, n *nsh, port int) {
	var pc net.PacketConn
	if err := n.do(func() (err error) {
		pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(serverAddr, uint16(port)).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	serveUDP(t, pc, func(_ string, from net.Addr) string { return from.String() })
}

// udpExchange sends msg from n to dst and returns the answer parsed as an
// address (what udpEchoFrom replies).
func udpAsk(t *testing.T, n *nsh, dst netip.AddrPort, msg string) (netip.AddrPort, error) {
	var c net.Conn
	if err := n.do(func() (err error) { c, err = net.Dial("udp", dst.String()); return err }); err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	buf := make([]byte, 256)
	for try := 0; try < 3; try++ {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
		k, err := c.Read(buf)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			continue
		}
		if err != nil {
			return netip.AddrPort{}, err
		}
		ap, err := netip.ParseAddrPort(string(buf[:k]))
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("answer %q: %w", buf[:k], err)
		}
		return ap, nil
	}
	return netip.AddrPort{}, fmt.Errorf("no answer from %s", dst)
}

// icmpWatch signals got when n receives an ICMP destination unreachable /
// fragmentation needed quoting a UDP packet from source port sport.
func icmpWatch(t *testing.T, n *nsh, sport uint16, got chan<- struct{}) (stop func()) {
	var fd int
	if err := n.do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tv := unix.Timeval{Usec: 100000}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	done := make(chan struct{})
	exited := make(chan struct{})
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
			if err != nil || k < 20 {
				continue
			}
			ihl := int(buf[0]&0xf) * 4
			p := buf[ihl:k]
			// type 3 code 4, then the quoted IP header and 8 bytes of UDP.
			if len(p) < 8+20+8 || p[0] != 3 || p[1] != 4 {
				continue
			}
			q := p[8:]
			qihl := int(q[0]&0xf) * 4
			if len(q) < qihl+8 || q[9] != unix.IPPROTO_UDP {
				continue
			}
			if binary.BigEndian.Uint16(q[qihl:]) == sport {
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

// sendFragNeeded sends, from n, an ICMP fragmentation-needed (MTU 1280) to
// src's address quoting a UDP packet src -> dst, as a router on the path
// would.
func sendFragNeeded(t *testing.T, n *nsh, src, dst netip.AddrPort) {
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 1400)
	ip[6] = 0x40 // DF
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], csum(ip))
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], 1380)
	msg := append([]byte{3, 4, 0, 0, 0, 0, 0x05, 0x00}, append(ip, udp...)...)
	binary.BigEndian.PutUint16(msg[2:], csum(msg))
	err := n.do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, msg, 0, &unix.SockaddrInet4{Addr: s4})
	})
	if err != nil {
		t.Fatalf("send frag-needed: %v", err)
	}
}

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// TestNetworkPolicyRepair: the policy's rules and endpoint set taken away
// from outside are put back by the periodic check; until then nothing
// would be filtered, afterwards 8080 is denied and SSH from a allowed
// again.
func TestNetworkPolicyRepair(t *testing.T) {
	cfg := npConfig(EgressTunnel, epA)
	tp := newTopo(t, cfg, "a")
	tp.startProxy(false)
	a := tp.tun["a"]
	tcpServe(t, a.srv, 8080)
	table := &nftables.Table{Name: cfg.TableName, Family: nftables.TableFamilyINet}
	for _, c := range []struct {
		name    string
		breakIt func(*testing.T)
	}{
		{"flush chain " + chainFilterFwd, func(t *testing.T) {
			c := otherNFT(t, tp.app)
			c.FlushChain(&nftables.Chain{Name: chainFilterFwd, Table: table})
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
		}},
		{"endpoint element deleted", func(t *testing.T) {
			c := otherNFT(t, tp.app)
			set, err := c.GetSetByName(table, npEndpointSet(0))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.SetDeleteElements(set, []nftables.SetElement{{Key: elemIfIndex(a.pair.InIndex)}}); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := tp.s.Stats().NFTRepairs
			c.breakIt(t)
			waitFor(t, "repair", func() bool { return tp.s.Stats().NFTRepairs > before })
			if err := tp.s.Health(); err != nil {
				t.Fatalf("health after repair: %v", err)
			}
			if _, _, err := request(t, a.cli, netip.AddrPortFrom(serverAddr, 22)); err != nil {
				t.Fatalf("ssh after repair: %v", err)
			}
			if conn, err := dial(t, a.cli, netip.AddrPortFrom(serverAddr, 8080), 2*time.Second); err == nil {
				conn.Close()
				t.Fatal("8080 connected after repair")
			}
		})
	}
}

// TestNetworkPolicyConfig: bad policies get one error naming the field.
func TestNetworkPolicyConfig(t *testing.T) {
	for _, c := range []struct {
		mut  func(*NetworkPolicy)
		want string
	}{
		{func(p *NetworkPolicy) { p.DefaultAction = "drop" }, "network_policy.default_action:"},
		{func(p *NetworkPolicy) { p.Rules = []NetRule{{Name: "x", Action: "permit"}} }, "network_policy.rules[0].action:"},
		{func(p *NetworkPolicy) { p.Rules = []NetRule{{Name: "", Action: NetAllow}} }, "network_policy.rules[0].name:"},
		{func(p *NetworkPolicy) { p.Rules = []NetRule{{Name: "default", Action: NetAllow}} }, "network_policy.rules[0].name:"},
		{func(p *NetworkPolicy) { p.Rules = []NetRule{{Name: "a b", Action: NetAllow}} }, "network_policy.rules[0].name:"},
		{func(p *NetworkPolicy) {
			p.Rules = []NetRule{{Name: "x", Action: NetAllow}, {Name: "x", Action: NetDeny}}
		}, "network_policy.rules[1].name: duplicate"},
		{func(p *NetworkPolicy) { p.Rules = []NetRule{{Name: "x", Action: NetAllow, Protocol: "sctp"}} }, "network_policy.rules[0].protocol:"},
		{func(p *NetworkPolicy) {
			p.Rules = []NetRule{{Name: "x", Action: NetAllow, Ports: []policy.PortRange{{Lo: 22, Hi: 22}}}}
		}, "network_policy.rules[0].ports: needs protocol"},
		{func(p *NetworkPolicy) {
			p.Rules = []NetRule{{Name: "x", Action: NetAllow, Endpoints: []string{"vpce-xyz"}}}
		}, "network_policy.rules[0].endpoints[0]:"},
		{func(p *NetworkPolicy) {
			p.Rules = []NetRule{{Name: "x", Action: NetAllow, Protocol: ProtoICMP, Destinations: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}}}
		}, "network_policy.rules[0].protocol: icmp"},
	} {
		cfg := DefaultConfig()
		c.mut(&cfg.NetworkPolicy)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want %q", err, c.want)
		}
	}
	cfg := npConfig(EgressNAT, epA)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestIntervalElems: overlapping and adjacent CIDRs and port ranges are
// merged (the kernel refuses overlapping intervals), and an interval
// reaching the top of the space has no end element.
func TestIntervalElems(t *testing.T) {
	el, _ := prefixElems([]netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("11.0.0.0/8"), netip.MustParsePrefix("255.255.255.255/32"),
	})
	var got []string
	for _, e := range el {
		a, _ := netip.AddrFromSlice(e.Key)
		got = append(got, fmt.Sprintf("%s/%v", a, e.IntervalEnd))
	}
	if want := "10.0.0.0/false 12.0.0.0/true 255.255.255.255/false"; strings.Join(got, " ") != want {
		t.Fatalf("got %s want %s", strings.Join(got, " "), want)
	}
	pe, _ := portElems([]policy.PortRange{{Lo: 22, Hi: 22}, {Lo: 23, Hi: 30}, {Lo: 60000, Hi: 65535}})
	got = got[:0]
	for _, e := range pe {
		got = append(got, fmt.Sprintf("%d/%v", binary.BigEndian.Uint16(e.Key), e.IntervalEnd))
	}
	if want := "22/false 31/true 60000/false"; strings.Join(got, " ") != want {
		t.Fatalf("got %s want %s", strings.Join(got, " "), want)
	}
}

// TestRuleFor: the rule flow records name is the first match, as in the
// kernel.
func TestRuleFor(t *testing.T) {
	cfg := npConfig(EgressNAT, epA)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	np := &cfg.NetworkPolicy
	srv, cli := serverAddr, clientAddr
	for _, c := range []struct {
		ep    uint64
		proto uint8
		dst   netip.Addr
		port  uint16
		want  string
	}{
		{epA, unix.IPPROTO_TCP, srv, 22, "ssh-a"},
		{epA + 1, unix.IPPROTO_TCP, srv, 22, DefaultRuleName},
		{epA, unix.IPPROTO_UDP, srv, 22, DefaultRuleName},
		{epA, unix.IPPROTO_UDP, srv, 5001, "udp-echo"},
		{epA, unix.IPPROTO_UDP, netip.MustParseAddr("203.0.113.99"), 5001, "no-test-net-3"},
		{epA, unix.IPPROTO_TCP, serverAddr6, 22, "ssh-a"},
		{epA, unix.IPPROTO_ICMP, srv, 0, DefaultRuleName},
	} {
		if got := np.RuleFor(c.ep, c.proto, cli, c.dst, c.port, nil); got != c.want {
			t.Errorf("%x %d %s:%d: %q, want %q", c.ep, c.proto, c.dst, c.port, got, c.want)
		}
	}
	var off NetworkPolicy
	if got := off.RuleFor(epA, unix.IPPROTO_TCP, cli, srv, 22, nil); got != "" {
		t.Errorf("inactive policy: %q", got)
	}
}

// fakeResolver is a test resolver whose answers the test changes.
type fakeResolver struct {
	mu    sync.Mutex
	addrs []netip.Addr
	ttl   time.Duration
	err   error
	calls int
}

func (f *fakeResolver) set(addrs []netip.Addr, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs, f.err = addrs, err
}

func (f *fakeResolver) LookupNetIP(_ context.Context, name string) ([]netip.Addr, time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if name != "ssh.example.test" {
		return nil, 0, fmt.Errorf("no such name %q", name)
	}
	return append([]netip.Addr(nil), f.addrs...), f.ttl, f.err
}

// TestNetworkPolicyDomains: a rule "allow tcp/22 to ssh.example.test"
// follows the resolver's changing answers: allowed while the name
// resolves to the server, denied once the answer moved elsewhere and the
// old address timed out, allowed again, and when resolution fails the last
// answer is kept until its TTL runs out, then the rule fails closed.
func TestNetworkPolicyDomains(t *testing.T) {
	cfg := npConfig(EgressTunnel, epA)
	cfg.NetworkPolicy.Rules = []NetRule{{Name: "ssh-by-name", Action: NetAllow, Protocol: ProtoTCP,
		Ports: []policy.PortRange{{Lo: 22, Hi: 22}}, Domains: []string{"SSH.example.test."}}}
	res := &fakeResolver{addrs: []netip.Addr{serverAddr}, ttl: time.Second} // clamped to minDomainTTL
	tp := newTopoWith(t, cfg, func(s *Steerer) { s.SetResolver(res) }, "a")
	a := tp.tun["a"]
	ssh := netip.AddrPortFrom(serverAddr, 22)
	allowed := func() bool {
		c, err := dial(t, a.cli, ssh, 1500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	waitFor(t, "first answer", func() bool { return tp.s.resolvedNow("ssh.example.test", serverAddr) })
	if !allowed() {
		t.Fatalf("ssh to the resolved address denied; stats %+v", tp.s.Stats())
	}
	if !strings.Contains(tp.s.Explain(), "np_dom4_0") {
		t.Fatalf("explain lacks the domain set:\n%s", tp.s.Explain())
	}
	// The name moves: the old address stays until its TTL, then not.
	res.set([]netip.Addr{netip.MustParseAddr("203.0.113.81")}, nil)
	waitFor(t, "old answer to time out", func() bool { return !tp.s.resolvedNow("ssh.example.test", serverAddr) })
	if allowed() {
		t.Fatal("ssh allowed to an address the name no longer has")
	}
	res.set([]netip.Addr{serverAddr}, nil)
	waitFor(t, "answer back", func() bool { return tp.s.resolvedNow("ssh.example.test", serverAddr) })
	if !allowed() {
		t.Fatal("ssh denied after the name resolved to the server again")
	}
	// Resolution fails: kept until the TTL, then fail closed.
	res.set(nil, errors.New("SERVFAIL"))
	failedAt := time.Now()
	waitFor(t, "a failed resolution", func() bool { st := tp.s.Stats(); return st.Domains != nil && st.Domains.Failures > 0 })
	if time.Since(failedAt) < minDomainTTL/2 && !allowed() {
		t.Fatal("last answer dropped at the first failure")
	}
	waitFor(t, "the last answer to lapse", func() bool { return !tp.s.resolvedNow("ssh.example.test", serverAddr) })
	if allowed() {
		t.Fatal("ssh allowed after the last answer timed out (must fail closed)")
	}
	st := tp.s.Stats().Domains
	if st.Lapsed == 0 || st.Failures == 0 || st.Resolved != 0 {
		t.Fatalf("domain stats %+v", st)
	}
	if r := tp.s.RuleFor(epA, unix.IPPROTO_TCP, clientAddr, serverAddr, 22); r != DefaultRuleName {
		t.Fatalf("RuleFor after lapse: %q", r)
	}
}
