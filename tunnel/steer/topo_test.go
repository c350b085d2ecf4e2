//go:build linux

package steer

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Topology (every box a network namespace):
//
//	cli-X (198.18.1.10, 2001:db8:1::10; the same in every X)
//	  | veth
//	gw-X  "GWLB": everything from cli-X and srv-X goes into tun ti (relayed
//	  |    to the appliance's gwi-X); what the appliance sends out gwo-X
//	  |    (relayed into tun to) is routed normally to cli-X or srv-X.
//	srv-X (203.0.113.80: the server as seen through the tunnel, one-arm)
//
//	app   the appliance: gwi-X/gwo-X tun devices, egress veth eg0
//	  | veth (198.18.200.1 <-> 198.18.200.2)
//	eg    "internet" seen from the egress: also 203.0.113.80 and
//	      169.254.169.254 on lo, so a leak would be answered.
//
// The servers answer "<side> <peer address>" so a test sees both which way
// its connection went and which source address the server saw.
//
// Tun devices rather than veth stand in for the tunnel interfaces because
// the real daemon uses tun: packets it injects enter the stack through
// netif_rx on an L3 device without MAC addresses, exactly as here.
type topo struct {
	t       *testing.T
	app, eg *nsh
	tun     map[string]*tunNS
	s       *Steerer
	ln      *Listeners
}

type tunNS struct {
	x             string
	gw, cli, srv  *nsh
	pair          tunnel.Pair
	in, out       atomic.Int64 // packets relayed into gwi / out of gwo+gwi
	fIn, fOut     *os.File
	fTi, fTo      *os.File
	endpointID    uint64
	slot          uint16
	serverUDPSeen atomic.Int64
}

var (
	serverAddr  = netip.MustParseAddr("203.0.113.80")
	serverAddr6 = netip.MustParseAddr("2001:db8:113::80")
	clientAddr  = netip.MustParseAddr("198.18.1.10")
	clientAddr6 = netip.MustParseAddr("2001:db8:1::10")
	egressAddr  = netip.MustParseAddr("198.18.200.1")
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newTopo(t *testing.T, cfg Config, tunnels ...string) *topo {
	t.Helper()
	return newTopoWith(t, cfg, nil, tunnels...)
}

func newTopoWith(t *testing.T, cfg Config, tweak func(*Steerer), tunnels ...string) *topo {
	t.Helper()
	needRoot(t)
	tp := &topo{t: t, tun: map[string]*tunNS{}}
	tp.app = newNS(t, "app")
	tp.eg = newNS(t, "eg")
	veth(t, tp.app, "eg0", tp.eg, "eth0")
	tp.app.up(t, "eg0", "198.18.200.1/24", "2001:db8:200::1/64")
	tp.eg.up(t, "eth0", "198.18.200.2/24", "2001:db8:200::2/64")
	tp.eg.up(t, "lo", "203.0.113.80/32", "2001:db8:113::80/128", "169.254.169.254/32")
	tp.app.defaultVia(t, "198.18.200.2", "2001:db8:200::2")
	tp.serve(tp.eg, "egress")

	for i, x := range tunnels {
		tp.addTunnel(x, uint16(i+1), 0x0123456789abcdef+uint64(i)*0x1111)
	}

	s, err := newSteerer(cfg, testLogger(t), nil, int(tp.app.h))
	if err != nil {
		t.Fatal(err)
	}
	tp.s = s
	if tweak != nil {
		tweak(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	for _, x := range tunnels {
		tn := tp.tun[x]
		if err := s.PairUp(ctx, tn.pair); err != nil {
			t.Fatal(err)
		}
	}
	return tp
}

func (tp *topo) addTunnel(x string, slot uint16, ep uint64) {
	t := tp.t
	tn := &tunNS{x: x, slot: slot, endpointID: ep}
	tn.gw = newNS(t, "gw"+x)
	tn.cli = newNS(t, "cli"+x)
	tn.srv = newNS(t, "srv"+x)
	in, out := "gwi-"+x, "gwo-"+x
	tn.fIn = tp.app.tun(t, in)
	tn.fOut = tp.app.tun(t, out)
	inL := tp.app.up(t, in)
	outL := tp.app.up(t, out)
	tn.pair = tunnel.Pair{EndpointID: ep, In: in, Out: out, InIndex: inL.Attrs().Index, OutIndex: outL.Attrs().Index, Slot: slot}

	gw := tn.gw
	gw.router(t)
	tn.fTi = gw.tun(t, "ti")
	tn.fTo = gw.tun(t, "to")
	ti := gw.up(t, "ti")
	gw.up(t, "to")
	veth(t, gw, "vc", tn.cli, "eth0")
	veth(t, gw, "vs", tn.srv, "eth0")
	gw.up(t, "vc", "198.18.1.1/24", "2001:db8:1::1/64")
	gw.up(t, "vs", "203.0.113.1/24", "2001:db8:113::1/64")
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		for _, iif := range []string{"vc", "vs"} {
			r := netlink.NewRule()
			r.Family = fam
			r.IifName = iif
			r.Table = 100
			r.Priority = 10
			if err := gw.nl.RuleAdd(r); err != nil {
				t.Fatalf("gw rule: %v", err)
			}
		}
		gw.route(t, &netlink.Route{Dst: anyNet(fam), LinkIndex: ti.Attrs().Index, Table: 100, Scope: netlink.SCOPE_LINK})
	}
	for _, d := range []string{"ti", "to", "vc", "vs"} {
		gw.sysctl(t, "net.ipv4.conf."+d+".rp_filter", "0")
	}
	tn.cli.up(t, "eth0", "198.18.1.10/24", "2001:db8:1::10/64")
	tn.cli.defaultVia(t, "198.18.1.1", "2001:db8:1::1")
	tn.srv.up(t, "eth0", "203.0.113.80/24", "2001:db8:113::80/64")
	tn.srv.defaultVia(t, "203.0.113.1", "2001:db8:113::1")
	tp.serve(tn.srv, "tunnel")

	go relay(tn.fTi, tn.fIn, &tn.in)   // GWLB -> gwi
	go relay(tn.fOut, tn.fTo, &tn.out) // gwo -> GWLB
	go relay(tn.fIn, tn.fTo, &tn.out)  // the stack may send back via gwi too
	tp.tun[x] = tn
}

// serve answers TCP on 22, 80, 443 with "<side> <peer>\n" and counts UDP on
// 443 and 4433 by echoing.
func (tp *topo) serve(n *nsh, side string) {
	t := tp.t
	for _, a := range []string{"0.0.0.0", "::"} {
		for _, port := range []int{22, 80, 443} {
			var ln net.Listener
			err := n.do(func() (err error) {
				nw := "tcp4"
				if a == "::" {
					nw = "tcp6"
				}
				ln, err = net.Listen(nw, net.JoinHostPort(a, fmt.Sprint(port)))
				return err
			})
			if err != nil {
				t.Fatalf("%s listen: %v", n.name, err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						c.SetDeadline(time.Now().Add(30 * time.Second))
						fmt.Fprintf(c, "%s %s\n", side, c.RemoteAddr())
						if port == 443 {
							// A bulk answer: enough segments for
							// conntrack's window tracking to matter.
							c.Write(make([]byte, bulkSize))
						}
					}()
				}
			}()
		}
		for _, port := range []int{443, 4433} {
			var pc net.PacketConn
			err := n.do(func() (err error) {
				nw := "udp4"
				if a == "::" {
					nw = "udp6"
				}
				// Bound to the server address: an unbound socket would
				// answer from the egress namespace's primary address.
				host := serverAddr.String()
				if a == "::" {
					host = serverAddr6.String()
				}
				pc, err = net.ListenPacket(nw, net.JoinHostPort(host, fmt.Sprint(port)))
				return err
			})
			if err != nil {
				t.Fatalf("%s listen udp: %v", n.name, err)
			}
			serveUDP(t, pc, func(msg string, _ net.Addr) string { return side + " " + msg })
		}
	}
}

// dial connects from ns n to dst.
func dial(t *testing.T, n *nsh, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	err := n.do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	return c, err
}

const bulkSize = 4 << 20

// bulk dials dst, reads the first line and counts the bytes after it.
func bulk(t *testing.T, n *nsh, dst netip.AddrPort) (line string, local netip.AddrPort, total int64, err error) {
	t.Helper()
	c, err := dial(t, n, dst, 20*time.Second)
	if err != nil {
		return "", local, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	local, _ = addrPort(c.LocalAddr())
	br := bufio.NewReader(c)
	line, err = br.ReadString('\n')
	if err != nil {
		return line, local, 0, err
	}
	total, err = io.Copy(io.Discard, br)
	return strings.TrimSpace(line), local, total, err
}

// request dials, reads one line and returns it.
func request(t *testing.T, n *nsh, dst netip.AddrPort) (line string, local netip.AddrPort, err error) {
	t.Helper()
	c, err := dial(t, n, dst, 20*time.Second)
	if err != nil {
		return "", local, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	local, _ = addrPort(c.LocalAddr())
	line, err = bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), local, err
}

// startProxy runs a tiny transparent proxy on the steerer's listeners: with
// upstream it dials the original destination through DialUpstream and
// relays its answer; without it answers itself.
func (tp *topo) startProxy(upstream bool) {
	t := tp.t
	ln, err := tp.s.ListenAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tp.ln = ln
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	for _, l := range append(append([]net.Listener{}, ln.HTTP...), ln.TLS...) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					c.SetDeadline(time.Now().Add(30 * time.Second))
					ep, ok := tp.s.EndpointOf(c)
					dst, _ := addrPort(c.LocalAddr())
					if !upstream {
						fmt.Fprintf(c, "proxy dst=%s ep=%x ok=%v client=%s\n", dst, ep, ok, c.RemoteAddr())
						return
					}
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					u, err := tp.s.DialUpstream(ctx, c, dst)
					if err != nil {
						fmt.Fprintf(c, "proxy upstream error: %v\n", err)
						return
					}
					defer u.Close()
					u.SetDeadline(time.Now().Add(20 * time.Second))
					br := bufio.NewReader(u)
					line, err := br.ReadString('\n')
					if err != nil && err != io.EOF {
						fmt.Fprintf(c, "proxy upstream read error: %v\n", err)
						return
					}
					fmt.Fprintf(c, "proxied ep=%x via %s", ep, line)
					io.Copy(c, br)
				}()
			}
		}()
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serveUDP answers every datagram pc receives with reply(payload, sender)
// until the test ends (pc is closed at cleanup).
func serveUDP(t *testing.T, pc net.PacketConn, reply func(msg string, from net.Addr) string) {
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(reply(string(buf[:k]), from)), from)
		}
	}()
}
