//go:build linux

package tunnel_test

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/fastpath"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
)

// TestUnderlayAddedLater: listening on every address, the eBPF datapath
// attaches its ingress program to an underlay device that appears after
// start, and GENEVE arriving there takes the fast path both ways. A device
// deleted and created again (same name, new index) is attached again.
func TestUnderlayAddedLater(t *testing.T) {
	needRoot(t)
	if err := fastpath.Supported(); err != nil {
		t.Skipf("kernel refuses the eBPF datapath: %v", err)
	}
	sfx := inns.RandSuffix()
	gw, err := inns.New("fpu" + sfx + "-gw")
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	app, err := inns.New("fpu" + sfx + "-app")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	veth := func(name string, gwA, appA netip.Addr) {
		t.Helper()
		if err := gw.Netlink().LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 9001},
			PeerName: name, PeerNamespace: netlink.NsFd(int(app.Handle()))}); err != nil {
			t.Fatal(err)
		}
		for _, side := range []struct {
			ns *inns.NS
			a  netip.Addr
		}{{gw, gwA}, {app, appA}} {
			l, err := side.ns.Netlink().LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := side.ns.Netlink().AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: side.a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
				t.Fatal(err)
			}
			if err := side.ns.Netlink().LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
	}
	veth("u0", netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"))
	for _, kv := range [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv4/conf/all/rp_filter", "0"}, {"net/ipv4/conf/default/rp_filter", "0"}} {
		if err := app.Sysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}

	cfg := tunnel.DefaultConfig()
	cfg.Listen = netip.IPv4Unspecified()
	cfg.AllowedSources = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")}
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

	attached := func(name string) bool {
		var ok bool
		app.Do(func() error {
			l, err := app.Netlink().LinkByName(name)
			if err != nil {
				return err
			}
			r, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
			ok = err == nil && len(r.Programs) > 0
			return nil
		})
		return ok
	}
	gwAddr, appAddr := netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.2")
	var ret, snd *net.UDPConn
	for round := 0; round < 2; round++ {
		veth("u1", gwAddr, appAddr)
		waitFor(t, "the ingress program on u1", func() bool { return attached("u1") })
		if round == 0 {
			if err := gw.Do(func() (err error) {
				if ret, err = net.ListenUDP("udp4", &net.UDPAddr{IP: gwAddr.AsSlice(), Port: geneve.Port}); err != nil {
					return err
				}
				snd, err = net.ListenUDP("udp4", &net.UDPAddr{IP: gwAddr.AsSlice(), Port: 34569})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ret.Close()
			defer snd.Close()
		}
		before := fastIn(d)
		hdr := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, 0xfeed0001, 5, 0xc0ffee)
		inner := withUDPSum(innerUDP(netip.MustParseAddrPort("198.19.0.10:1000"), netip.MustParseAddrPort("203.0.113.10:2000"), []byte("via a later device")))
		dg := append(append([]byte{}, hdr...), inner...)
		to := &net.UDPAddr{IP: appAddr.AsSlice(), Port: geneve.Port}
		buf := make([]byte, 9000)
		deadline := time.Now().Add(20 * time.Second)
		for fastIn(d) < before+3 || fastOut(d) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the fast path carried nothing from u1 (stats %+v)", round, d.Stats())
			}
			if _, err := snd.WriteToUDP(dg, to); err != nil {
				t.Fatal(err)
			}
			ret.SetReadDeadline(time.Now().Add(time.Second))
			n, _, err := ret.ReadFromUDPAddrPort(buf)
			if err == nil && !bytes.HasPrefix(buf[:n], hdr) {
				t.Fatalf("header not verbatim: %x", buf[:n])
			}
		}
		// Delete u1: its index may come back as another device.
		l, err := gw.Netlink().LinkByName("u1")
		if err != nil {
			t.Fatal(err)
		}
		if err := gw.Netlink().LinkDel(l); err != nil {
			t.Fatal(err)
		}
	}
}

func fastIn(d *tunnel.Daemon) (n uint64) {
	for _, ts := range d.Stats().Tunnels {
		n += ts.FastpathPacketsIn
	}
	return n
}

func fastOut(d *tunnel.Daemon) (n uint64) {
	for _, ts := range d.Stats().Tunnels {
		n += ts.FastpathPacketsOut
	}
	return n
}
