//go:build linux

package tunnel_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

// TestIPv6Underlay runs the daemon on an IPv6 underlay inside one
// namespace: "GWLB" is 2001:db8::1 and the appliance 2001:db8::2, both on
// lo. A GENEVE packet carrying an inner IPv4 UDP datagram goes in, the
// namespace forwards it gwi -> gwo, and it must come back to GWLB's
// address and port 6081, from the appliance address and GWLB's source
// port, with the header verbatim (the kernel verified the UDP checksum,
// which IPv6 makes mandatory, before delivering it).
func TestIPv6Underlay(t *testing.T) {
	needRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer func() {
		netns.Set(orig)
		runtime.UnlockOSThread()
		ns.Close()
		orig.Close()
	}()
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	lo, _ := nl.LinkByName("lo")
	nl.LinkSetUp(lo)
	gwlb, app := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	for _, a := range []netip.Addr{gwlb, app} {
		if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/default/rp_filter"} {
		v := "0"
		if p == "net/ipv4/ip_forward" {
			v = "1"
		}
		if err := writeSysctl(p, v); err != nil {
			t.Fatal(err)
		}
	}
	// The GWLB side: returns arrive at [gwlb]:6081; sends come from
	// [gwlb]:34567.
	ret, err := net.ListenUDP("udp6", &net.UDPAddr{IP: gwlb.AsSlice(), Port: geneve.Port})
	if err != nil {
		t.Fatal(err)
	}
	defer ret.Close()
	snd, err := net.ListenUDP("udp6", &net.UDPAddr{IP: gwlb.AsSlice(), Port: 34567})
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()

	cfg := tunnel.DefaultConfig()
	cfg.Listen = app
	cfg.AllowedSources = []netip.Prefix{netip.PrefixFrom(gwlb, 128)}
	cfg.Workers = 1
	cfg.Flows.MaxEntries = 1024
	events := &eventLog{path: t.TempDir() + "/events"}
	d, err := tunnel.New(cfg, nil, nil, &routeObserver{nl: nl, log: events})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
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

	hdr := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, 0xabcdef, 5, 0xc0ffee,
		geneve.Option{Class: 0x0105, Type: 0x11, Data: []byte{9, 9, 9, 9}}) // unknown, non-critical: returned verbatim
	inner := innerUDP(netip.MustParseAddrPort("198.19.0.10:1000"), netip.MustParseAddrPort("203.0.113.10:2000"), []byte("over v6"))
	dg := append(append([]byte{}, hdr...), inner...)
	appAddr := &net.UDPAddr{IP: app.AsSlice(), Port: geneve.Port}
	buf := make([]byte, 9000)
	for attempt := 0; ; attempt++ {
		if _, err := snd.WriteToUDP(dg, appAddr); err != nil {
			t.Fatal(err)
		}
		ret.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := ret.ReadFromUDPAddrPort(buf)
		if err != nil {
			if attempt < 4 {
				continue
			}
			t.Fatalf("no return: %v (stats %+v)", err, d.Stats())
		}
		if from != netip.AddrPortFrom(app, 34567) {
			t.Fatalf("return from %s, want [%s]:34567", from, app)
		}
		got := buf[:n]
		if !bytes.HasPrefix(got, hdr) {
			t.Fatalf("header not verbatim:\n%x\n%x", got[:len(hdr)], hdr)
		}
		back := got[len(hdr):]
		if len(back) != len(inner) || back[8] != inner[8]-1 || !bytes.Equal(back[20:], inner[20:]) {
			t.Fatalf("inner packet: %x", back)
		}
		break
	}
}

func writeSysctl(path, v string) error {
	return os.WriteFile("/proc/sys/"+path, []byte(v), 0o644)
}

// innerUDP builds an IPv4/UDP packet (UDP checksum 0, legal for IPv4).
func innerUDP(src, dst netip.AddrPort, payload []byte) []byte {
	p := make([]byte, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, 17
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return p
}
