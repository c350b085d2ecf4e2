//go:build linux

package gwlbsim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

// reflector is a trivial appliance: it returns every GENEVE packet as it
// came, from the GWLB's source port to 6081, the way gwlbtun does, after
// an optional tamper step.
type reflector struct {
	conn   *net.UDPConn
	raw    int
	tamper atomic.Pointer[func([]byte)]
	seen   atomic.Uint64
	wg     sync.WaitGroup
}

func startReflector(t *testing.T, topo *Topology) *reflector {
	t.Helper()
	return startReflectorAt(t, topo.Appliance, ApplianceAddr)
}

// startReflectorAt runs a reflector on addr (an address of appliance
// namespace ns), answering from it.
func startReflectorAt(t *testing.T, ns *NS, addr netip.Addr) *reflector {
	t.Helper()
	r := &reflector{}
	var err error
	if r.raw, err = openRaw(ns); err != nil {
		t.Fatal(err)
	}
	err = ns.Do(func() error {
		var err error
		r.conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: addr.AsSlice(), Port: geneve.Port})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if sc, err := r.conn.SyscallConn(); err == nil {
		_ = sc.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
		})
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 65536)
		var out []byte
		for {
			n, from, err := r.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			r.seen.Add(1)
			p := buf[:n]
			if f := r.tamper.Load(); f != nil {
				(*f)(p)
			}
			out = buildUDP4(out, netip.AddrPortFrom(addr, from.Port()), netip.AddrPortFrom(from.Addr().Unmap(), geneve.Port), p)
			_ = sendRaw(r.raw, out, from.Addr().Unmap())
		}
	}()
	t.Cleanup(func() {
		r.conn.Close()
		r.wg.Wait()
		unix.Close(r.raw)
	})
	return r
}

// udpEcho runs a UDP echo server on ServerAddr:port in ep's server
// namespace.
func udpEcho(t *testing.T, ep *Endpoint, port int) {
	t.Helper()
	var c *net.UDPConn
	err := ep.Server.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ServerAddr.AsSlice(), Port: port})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close() })
}

// roundTrip sends msg from ep's client to the echo server and waits for
// the echo, retrying (the first packets may race route setup).
func roundTrip(t *testing.T, ep *Endpoint, lport, port int, msg []byte) error {
	t.Helper()
	var c *net.UDPConn
	err := ep.Client.Do(func() error {
		var err error
		c, err = net.DialUDP("udp4", &net.UDPAddr{IP: ClientAddr.AsSlice(), Port: lport}, &net.UDPAddr{IP: ServerAddr.AsSlice(), Port: port})
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 65536)
	for range 10 {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err == nil {
			if string(buf[:n]) != string(msg) {
				return fmt.Errorf("echo %q, want %q", buf[:n], msg)
			}
			return nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return err
		}
	}
	return errors.New("no echo after 10 tries")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSimThroughReflector(t *testing.T) {
	eps := []EndpointConfig{{ID: 0x0123456789abcdef, AttachmentID: 11}, {ID: 0x76bc493b822cd32f, AttachmentID: 22}}
	topo := newTopo(t, eps...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sim, err := Start(ctx, topo, Config{ExtraOption: &geneve.Option{Class: 0x0200, Type: 0x05, Data: []byte("gwlbsim!")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	refl := startReflector(t, topo)
	for i, ep := range topo.Endpoints {
		udpEcho(t, ep, 7000)
		// Same 5-tuple in both VPCs: overlapping address space.
		if err := roundTrip(t, ep, 40000, 7000, []byte(fmt.Sprintf("hello from vpc %d", i))); err != nil {
			t.Fatalf("endpoint %d: %v", i, err)
		}
	}
	// A large datagram near GWLB's 8500-byte inner MTU goes through too.
	if err := roundTrip(t, topo.Endpoints[0], 40001, 7000, make([]byte, 8400)); err != nil {
		t.Fatalf("8400-byte datagram: %v", err)
	}
	// The reply can overtake the sender's increment of Sent.
	st := sim.Stats()
	for deadline := time.Now().Add(2 * time.Second); st.Sent < 6 && time.Now().Before(deadline); st = sim.Stats() {
		time.Sleep(10 * time.Millisecond)
	}
	if st.Sent < 6 || st.Delivered < 6 || st.OptionMismatch != 0 || st.UnknownFlow != 0 ||
		st.WrongSourcePort != 0 || st.WrongSource != 0 || st.UDPCsumErrors != 0 {
		t.Fatalf("stats %+v", st)
	}
	flows := sim.Flows()
	if len(flows) != 3 {
		t.Fatalf("flows %+v", flows)
	}
	var k flow.Key
	for _, f := range flows {
		if f.EndpointID == eps[1].ID {
			k = f.Key
		}
	}

	// GWLB renews the cookie of a reused 5-tuple: the reflector returns
	// what it gets, so the new cookie must work end to end.
	if _, ok := sim.RenewCookie(eps[1].ID, k); !ok {
		t.Fatal("RenewCookie: flow unknown")
	}
	if err := roundTrip(t, topo.Endpoints[1], 40000, 7000, []byte("after renewal")); err != nil {
		t.Fatal(err)
	}
	if st := sim.Stats(); st.OptionMismatch != 0 {
		t.Fatalf("stats after renewal %+v", st)
	}

	// An appliance that alters an option (here the unknown one) is caught.
	tamper := func(p []byte) {
		var h geneve.Header
		if _, r := geneve.Parse(p, &h); r == geneve.OK {
			p[len(h.Raw)-1] ^= 0x01 // last byte of the extra option's data
		}
	}
	refl.tamper.Store(&tamper)
	before := sim.Stats()
	c, err := dialClient(topo.Endpoints[1], 40002)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("tampered")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "option mismatch", func() bool { return sim.Stats().OptionMismatch > before.OptionMismatch })
	refl.tamper.Store(nil)

	// Injected garbage and GENEVE for a flow GWLB never started reach the
	// appliance (the reflector) and come back as unparseable / unknown;
	// GENEVE from a foreign source reaches it too.
	before = sim.Stats()
	seen := refl.seen.Load()
	if err := sim.SendUDP(netip.AddrPortFrom(GWLBAddr, 5555), []byte("not geneve")); err != nil {
		t.Fatal(err)
	}
	pkt := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, 99, 98, 97)
	pkt = append(pkt, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 19, 0, 10, 203, 0, 113, 10, 0, 1, 0, 2, 0, 8, 0, 0)
	if err := sim.SendUDP(netip.AddrPortFrom(GWLBAddr, 5556), pkt); err != nil {
		t.Fatal(err)
	}
	if err := sim.SendUDP(netip.AddrPortFrom(ForeignAddr, 5557), pkt); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reflector to see 3 injected packets", func() bool { return refl.seen.Load() >= seen+3 })
	waitFor(t, "bad geneve and unknown flow", func() bool {
		st := sim.Stats()
		return st.BadGeneve > before.BadGeneve && st.UnknownFlow > before.UnknownFlow
	})
	if refl.seen.Load() < st.Sent {
		t.Fatalf("reflector saw %d of %d", refl.seen.Load(), st.Sent)
	}
}

func dialClient(ep *Endpoint, lport int) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := ep.Client.Do(func() error {
		var err error
		c, err = net.DialUDP("udp4", &net.UDPAddr{IP: ClientAddr.AsSlice(), Port: lport}, &net.UDPAddr{IP: ServerAddr.AsSlice(), Port: 7000})
		return err
	})
	return c, err
}
