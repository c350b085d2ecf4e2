//go:build linux

package tunnel_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/fastpath"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
)

// TestIPv6UnderlayFastpath runs the eBPF datapath on an IPv6 underlay: a
// veth between a "GWLB" namespace (2001:db8:20::1) and the appliance's
// (2001:db8:20::2). Once the tunnel is on the fast path, GENEVE over IPv6
// carrying an inner IPv4 UDP datagram must be decapsulated by the ingress
// program, forwarded gwi -> gwo by the kernel, encapsulated by the egress
// program and come back to GWLB's port 6081 from GWLB's source port with
// the header verbatim; the receiving kernel verifies the UDP checksum,
// which IPv6 makes mandatory (the program derives it from the inner
// packet's checksums).
func TestIPv6UnderlayFastpath(t *testing.T) {
	needRoot(t)
	if err := fastpath.Supported(); err != nil {
		t.Skipf("kernel refuses the eBPF datapath: %v", err)
	}
	sfx := inns.RandSuffix()
	gw, err := inns.New("fp6" + sfx + "-gw")
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	app, err := inns.New("fp6" + sfx + "-app")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	gwAddr, appAddr := netip.MustParseAddr("2001:db8:20::1"), netip.MustParseAddr("2001:db8:20::2")
	if err := gw.Netlink().LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "u0", MTU: 9001},
		PeerName: "u0", PeerNamespace: netlink.NsFd(int(app.Handle()))}); err != nil {
		t.Fatal(err)
	}
	for _, side := range []struct {
		ns *inns.NS
		a  netip.Addr
	}{{gw, gwAddr}, {app, appAddr}} {
		l, err := side.ns.Netlink().LinkByName("u0")
		if err != nil {
			t.Fatal(err)
		}
		if err := side.ns.Netlink().AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: side.a.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
		if err := side.ns.Netlink().LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		lo, _ := side.ns.Netlink().LinkByName("lo")
		side.ns.Netlink().LinkSetUp(lo)
	}
	for _, kv := range [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv4/conf/all/rp_filter", "0"}, {"net/ipv4/conf/default/rp_filter", "0"}} {
		if err := app.Sysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}

	var ret, snd *net.UDPConn
	if err := gw.Do(func() (err error) {
		if ret, err = net.ListenUDP("udp6", &net.UDPAddr{IP: gwAddr.AsSlice(), Port: geneve.Port}); err != nil {
			return err
		}
		snd, err = net.ListenUDP("udp6", &net.UDPAddr{IP: gwAddr.AsSlice(), Port: 34568})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ret.Close()
	defer snd.Close()

	cfg := tunnel.DefaultConfig()
	cfg.Listen = appAddr
	cfg.AllowedSources = []netip.Prefix{netip.PrefixFrom(gwAddr, 128)}
	cfg.Workers = 1
	cfg.Flows.MaxEntries = 1024
	cfg.Datapath = tunnel.DatapathEBPF
	events := &eventLog{path: t.TempDir() + "/events"}
	d, err := tunnel.New(cfg, nil, nil, &routeObserver{nl: app.Netlink(), log: events})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread's namespace changes
		if err := netns.Set(app.Handle()); err != nil {
			done <- err
			return
		}
		done <- d.Run(ctx)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatal(err)
	}

	hdr := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, 0xabcdef01, 5, 0xc0ffee,
		geneve.Option{Class: 0x0105, Type: 0x11, Data: []byte{9, 9, 9, 9}}) // unknown, non-critical: returned verbatim
	inner := withUDPSum(innerUDP(netip.MustParseAddrPort("198.19.0.10:1000"), netip.MustParseAddrPort("203.0.113.10:2000"), []byte("over v6, in the kernel")))
	dg := append(append([]byte{}, hdr...), inner...)
	to := &net.UDPAddr{IP: appAddr.AsSlice(), Port: geneve.Port}
	buf := make([]byte, 9000)
	roundTrip := func() {
		t.Helper()
		for attempt := 0; ; attempt++ {
			if _, err := snd.WriteToUDP(dg, to); err != nil {
				t.Fatal(err)
			}
			ret.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, from, err := ret.ReadFromUDPAddrPort(buf)
			if err != nil {
				if attempt < 5 {
					continue
				}
				t.Fatalf("no return: %v (stats %+v)", err, d.Stats())
			}
			if from != netip.AddrPortFrom(appAddr, 34568) {
				t.Fatalf("return from %s, want [%s]:34568", from, appAddr)
			}
			got := buf[:n]
			if !bytes.HasPrefix(got, hdr) {
				t.Fatalf("header not verbatim:\n%x\n%x", got[:len(hdr)], hdr)
			}
			back := got[len(hdr):]
			if len(back) != len(inner) || back[8] != inner[8]-1 || !bytes.Equal(back[20:], inner[20:]) {
				t.Fatalf("inner packet: %x", back)
			}
			return
		}
	}
	roundTrip() // creates the tunnel (userspace), which then joins the fast path
	waitOnDatapath(t, d, tunnel.DatapathEBPF, 1)
	for range 5 {
		roundTrip()
	}
	checkFastpath(t, d, tunnel.DatapathEBPF)
}

// withUDPSum fills in the UDP checksum of an IPv4 packet without options.
func withUDPSum(p []byte) []byte {
	u := p[20:]
	u[6], u[7] = 0, 0
	sum := uint32(17) + uint32(len(u))
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for i := 0; i+1 < len(u); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(u[i:]))
	}
	if len(u)%2 == 1 {
		sum += uint32(u[len(u)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return p
}
