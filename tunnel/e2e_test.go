//go:build linux

package tunnel_test

// End-to-end tests: the daemon runs in-process in the appliance namespace
// of a gwlbsim topology. Run is called from a goroutine whose OS thread was
// switched into that namespace, which is all the daemon needs: everything
// namespace-bound is done on Run's (locked) thread.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/fastpath"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
)

const (
	ep0 = 0x0123456789abcdef
	ep1 = 0x76bc493b822cd32f
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, tun devices, raw sockets")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
}

// eventLog is shared by the hook script (appending lines) and the test
// observer, so the order of PairUp, CREATE, DESTROY and PairDown is
// visible in one file.
type eventLog struct {
	mu   sync.Mutex
	path string
}

func (l *eventLog) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, err := os.OpenFile(l.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		panic(err)
	}
	fmt.Fprintln(f, line)
	f.Close()
}

func (l *eventLog) lines() []string {
	b, _ := os.ReadFile(l.path)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// routeObserver installs the minimal appliance routing the real steering
// package does in production: whatever arrives on gwi-X is forwarded out
// gwo-X (policy rule iif gwi-X -> table 1000+slot -> default dev gwo-X).
type routeObserver struct {
	nl  *netlink.Handle
	log *eventLog
	// gates, if set, hold PairUp for an interface until the channel is
	// closed, to show a slow bring-up stalls no other tunnel.
	gates   map[string]chan struct{}
	blocked chan string
}

func (o *routeObserver) PairUp(ctx context.Context, p tunnel.Pair) error {
	if g := o.gates[p.In]; g != nil {
		o.blocked <- p.In
		select {
		case <-g:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if p.InIndex == 0 || p.OutIndex == 0 || p.Slot == 0 {
		return fmt.Errorf("incomplete pair %+v", p)
	}
	table := 1000 + int(p.Slot)
	if err := o.nl.RouteAdd(&netlink.Route{LinkIndex: p.OutIndex, Table: table, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}); err != nil {
		return fmt.Errorf("route: %w", err)
	}
	r := netlink.NewRule()
	r.IifName, r.Table, r.Priority, r.Family = p.In, table, table, unix.AF_INET
	if err := o.nl.RuleAdd(r); err != nil {
		return fmt.Errorf("rule: %w", err)
	}
	o.log.add(fmt.Sprintf("PAIRUP %s %s %d", p.In, p.Out, p.Slot))
	return nil
}

func (o *routeObserver) PairDown(ctx context.Context, p tunnel.Pair) error {
	r := netlink.NewRule()
	r.IifName, r.Table, r.Priority, r.Family = p.In, 1000+int(p.Slot), 1000+int(p.Slot), unix.AF_INET
	err := o.nl.RuleDel(r)
	o.log.add(fmt.Sprintf("PAIRDOWN %s %s %d", p.In, p.Out, p.Slot))
	return err
}

type harness struct {
	topo   *gwlbsim.Topology
	sim    *gwlbsim.Sim
	d      *tunnel.Daemon
	reg    *prometheus.Registry
	obs    *routeObserver
	events *eventLog
	cancel context.CancelFunc
	done   chan error
}

func newHarness(t *testing.T, dp string, eps []uint64, mod func(*tunnel.Config)) *harness {
	return newHarnessObs(t, dp, eps, mod, nil)
}

// eachDatapath runs f once per datapath (tunnel.datapath userspace and
// ebpf), as subtests: the simulator's byte-for-byte checks judge both.
func eachDatapath(t *testing.T, f func(t *testing.T, dp string)) {
	for _, dp := range []string{tunnel.DatapathUserspace, tunnel.DatapathEBPF} {
		t.Run(dp, func(t *testing.T) {
			needRoot(t)
			if dp == tunnel.DatapathEBPF {
				if err := fastpath.Supported(); err != nil {
					t.Skipf("kernel refuses the eBPF datapath: %v", err)
				}
			}
			f(t, dp)
		})
	}
}

// waitOnDatapath waits until n tunnels run on datapath dp.
func waitOnDatapath(t *testing.T, d *tunnel.Daemon, dp string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d tunnels on the %s datapath", n, dp), func() bool {
		on := 0
		for _, ts := range d.Stats().Tunnels {
			if ts.Datapath == dp {
				on++
			}
		}
		return on == n
	})
}

// checkFastpath checks that the eBPF datapath carried traffic both ways
// for every tunnel (dp ebpf only).
func checkFastpath(t *testing.T, d *tunnel.Daemon, dp string) {
	t.Helper()
	s := d.Stats()
	if s.Datapath != dp {
		t.Fatalf("datapath %q, configured %q", s.Datapath, dp)
	}
	if dp != tunnel.DatapathEBPF {
		return
	}
	for _, ts := range s.Tunnels {
		if ts.FastpathPacketsIn == 0 || ts.FastpathPacketsOut == 0 {
			t.Errorf("tunnel %s: fast path carried %d in, %d out (passed up: %v)", ts.In, ts.FastpathPacketsIn, ts.FastpathPacketsOut, s.FastpathPassed)
		}
	}
}

func newHarnessObs(t *testing.T, dp string, eps []uint64, mod func(*tunnel.Config), gates map[string]chan struct{}) *harness {
	t.Helper()
	needRoot(t)
	var ecs []gwlbsim.EndpointConfig
	for i, ep := range eps {
		ecs = append(ecs, gwlbsim.EndpointConfig{ID: ep, AttachmentID: 0x1000 + uint64(i)})
	}
	topo, err := gwlbsim.NewTopology(gwlbsim.TopologyConfig{Prefix: "tt", Endpoints: ecs})
	if err != nil {
		t.Fatalf("topology: %v", err)
	}
	t.Cleanup(func() { topo.Close() })
	for _, kv := range [][2]string{{"net/ipv4/conf/all/rp_filter", "0"}, {"net/ipv4/conf/default/rp_filter", "0"}} {
		if err := topo.Appliance.Sysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	events := &eventLog{path: filepath.Join(dir, "events")}
	hook := filepath.Join(dir, "hook.sh")
	script := "#!/bin/sh\necho \"$*\" >> " + events.path + "\n"
	if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := tunnel.DefaultConfig()
	cfg.AllowedSources = []netip.Prefix{netip.PrefixFrom(gwlbsim.GWLBAddr, 32)}
	cfg.Workers = 2
	cfg.Batch = 16
	cfg.Flows.MaxEntries = 4096
	cfg.CreateHook, cfg.DestroyHook = hook, hook
	cfg.Datapath = dp
	if mod != nil {
		mod(&cfg)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	obs := &routeObserver{nl: topo.Appliance.Netlink(), log: events, gates: gates, blocked: make(chan string, 4)}
	reg := prometheus.NewRegistry()
	d, err := tunnel.New(cfg, log, reg, obs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{topo: topo, d: d, reg: reg, obs: obs, events: events, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- inns.Do(topo.Appliance.Handle(), func() error { return d.Run(ctx) }) }()
	t.Cleanup(func() { h.stop(t) })
	select {
	case <-d.Ready():
	case err := <-h.done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon not ready")
	}
	sctx, scancel := context.WithCancel(context.Background())
	t.Cleanup(scancel)
	// An extra non-critical option beside GWLB's three: it must come back
	// byte for byte on both datapaths (the simulator checks every byte).
	h.sim, err = gwlbsim.Start(sctx, topo, gwlbsim.Config{Logger: log,
		ExtraOption: &geneve.Option{Class: 0x0200, Type: 0x05, Data: []byte("gwlbsim!")}})
	if err != nil {
		t.Fatalf("sim: %v", err)
	}
	t.Cleanup(func() { h.sim.Close() })
	return h
}

// stop cancels the daemon and waits for Run to return (idempotent).
func (h *harness) stop(t *testing.T) {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Error("Run did not return after cancel")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// in runs f in namespace ns.
func in(t *testing.T, ns *gwlbsim.NS, f func() error) {
	t.Helper()
	if err := ns.Do(f); err != nil {
		t.Fatal(err)
	}
}

// ping sends one ICMP echo from the client to the server and waits for
// the reply to that very packet.
func ping(t *testing.T, ep *gwlbsim.Endpoint, seq int, timeout time.Duration) error {
	t.Helper()
	return pingNoT(ep, seq, timeout)
}

// udpEcho starts a UDP echo server in the server namespace.
func udpEcho(t *testing.T, ep *gwlbsim.Endpoint, port int) {
	var c *net.UDPConn
	in(t, ep.Server, func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: gwlbsim.ServerAddr.AsSlice(), Port: port})
		return err
	})
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 9000)
		for {
			n, a, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP(buf[:n], a)
		}
	}()
}

// udpClient returns a UDP socket in the client namespace connected to the
// server, from a fixed local port.
func udpClient(t *testing.T, ep *gwlbsim.Endpoint, lport, rport int) *net.UDPConn {
	var c *net.UDPConn
	in(t, ep.Client, func() (err error) {
		c, err = net.DialUDP("udp4", &net.UDPAddr{IP: gwlbsim.ClientAddr.AsSlice(), Port: lport},
			&net.UDPAddr{IP: gwlbsim.ServerAddr.AsSlice(), Port: rport})
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func udpRoundTrip(c *net.UDPConn, payload []byte) error {
	if _, err := c.Write(payload); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 9000)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !bytes.Equal(buf[:n], payload) {
		return fmt.Errorf("echo mismatch: %d bytes", n)
	}
	return nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func simClean(t *testing.T, s gwlbsim.Stats) {
	t.Helper()
	if s.WrongSource != 0 || s.WrongSourcePort != 0 || s.BadGeneve != 0 || s.UnknownFlow != 0 ||
		s.OptionMismatch != 0 || s.UDPCsumErrors != 0 {
		t.Errorf("simulator saw bad returns: %+v", s)
	}
}

func TestEndToEnd(t *testing.T) { eachDatapath(t, testEndToEnd) }

func testEndToEnd(t *testing.T, dp string) {
	h := newHarness(t, dp, []uint64{ep0, ep1}, nil)
	e0, e1 := h.topo.Endpoints[0], h.topo.Endpoints[1]
	in0, out0 := geneve.InterfaceNames(ep0)
	in1, out1 := geneve.InterfaceNames(ep1)

	t.Run("first ping not lost", func(t *testing.T) {
		// The very first packet creates the tunnel: it must be queued
		// and delivered, not dropped, and its reply must come back.
		if err := ping(t, e0, 1, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{in0, out0} {
			l, err := h.topo.Appliance.Netlink().LinkByName(n)
			if err != nil {
				t.Fatalf("%s: %v", n, err)
			}
			if l.Attrs().MTU != 8500 {
				t.Errorf("%s mtu %d", n, l.Attrs().MTU)
			}
		}
	})

	udpEcho(t, e0, 7000)
	udpEcho(t, e1, 7000)

	t.Run("udp round trip", func(t *testing.T) {
		c := udpClient(t, e0, 40001, 7000)
		for i, n := range []int{1, 100, 1400, 8000} {
			if err := udpRoundTrip(c, bytes.Repeat([]byte{byte(i)}, n)); err != nil {
				t.Fatalf("%d bytes: %v", n, err)
			}
		}
	})

	t.Run("tcp", func(t *testing.T) {
		c := tcpEcho(t, e0, 8080)
		c.SetDeadline(time.Now().Add(60 * time.Second))
		payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
		go c.Write(payload)
		got := make([]byte, len(payload))
		if _, err := io.ReadFull(bufio.NewReader(c), got); err != nil {
			t.Fatalf("read echo: %v", err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatal("tcp echo mismatch")
		}
	})

	t.Run("second endpoint second pair", func(t *testing.T) {
		// Same client/server addresses in both VPCs: flow tables must be
		// per endpoint.
		if err := ping(t, e1, 2, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		c := udpClient(t, e1, 40001, 7000)
		if err := udpRoundTrip(c, []byte("endpoint one")); err != nil {
			t.Fatal(err)
		}
		st := h.d.Stats()
		if len(st.Tunnels) != 2 {
			t.Fatalf("tunnels: %+v", st.Tunnels)
		}
		names := map[string]bool{}
		for _, ts := range st.Tunnels {
			names[ts.In], names[ts.Out] = true, true
			if ts.State != "up" || ts.PacketsIn == 0 || ts.PacketsOut == 0 {
				t.Errorf("tunnel %+v", ts)
			}
		}
		for _, n := range []string{in0, out0, in1, out1} {
			if !names[n] {
				t.Errorf("missing %s in %v", n, names)
			}
		}
	})

	t.Run("renewed cookie honoured", func(t *testing.T) {
		c := udpClient(t, e0, 40002, 7000)
		if err := udpRoundTrip(c, []byte("before")); err != nil {
			t.Fatal(err)
		}
		k := flow.NewKey(flow.ProtoUDP, netip.AddrPortFrom(gwlbsim.ClientAddr, 40002), netip.AddrPortFrom(gwlbsim.ServerAddr, 7000))
		if _, ok := h.sim.RenewCookie(ep0, k); !ok {
			t.Fatal("sim does not know the flow")
		}
		// The sim drops returns whose options differ from the newest it
		// sent, so a round trip proves the new cookie was used.
		if err := udpRoundTrip(c, []byte("after")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("icmp error follows its flow", func(t *testing.T) {
		c := udpClient(t, e0, 40003, 7999) // nothing listens on 7999
		var err error
		for i := 0; i < 5; i++ {
			if err = udpRoundTrip(c, []byte("anyone?")); errors.Is(err, unix.ECONNREFUSED) {
				break
			}
		}
		if !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("want port unreachable back through the tunnel, got %v", err)
		}
	})

	t.Run("malformed and foreign dropped", func(t *testing.T) {
		before := h.d.Stats().Drops
		good := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, ep0, 1, 2)
		good = append(good, icmpEchoPacket()...)
		if err := h.sim.SendUDP(netip.AddrPortFrom(gwlbsim.ForeignAddr, 6081), good); err != nil {
			t.Fatal(err)
		}
		if err := h.sim.SendUDP(netip.AddrPortFrom(gwlbsim.GWLBAddr, 6081), []byte{0xc0, 0, 8, 0, 0, 0, 0, 0, 0x45}); err != nil {
			t.Fatal(err)
		}
		noEndpoint := []byte{0, 0, 8, 0, 0, 0, 0, 0}
		noEndpoint = append(noEndpoint, icmpEchoPacket()...)
		if err := h.sim.SendUDP(netip.AddrPortFrom(gwlbsim.GWLBAddr, 6081), noEndpoint); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "drop counters", func() bool {
			d := h.d.Stats().Drops
			return d["foreign_source"] > before["foreign_source"] &&
				d["geneve_bad_version"] > before["geneve_bad_version"] &&
				d["geneve_no_endpoint"] > before["geneve_no_endpoint"]
		})
		if err := h.d.Health(); err != nil {
			t.Fatalf("health after bad input: %v", err)
		}
	})

	simClean(t, h.sim.Stats())
	t.Run("datapath carried traffic", func(t *testing.T) {
		// A tunnel moves to the kernel just after it comes up.
		waitOnDatapath(t, h.d, dp, 2)
		for i, e := range []*gwlbsim.Endpoint{e0, e1} {
			if err := ping(t, e, 100+i, 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		checkFastpath(t, h.d, dp)
		simClean(t, h.sim.Stats())
	})
	t.Run("metrics", func(t *testing.T) {
		mfs, err := h.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				key := mf.GetName()
				for _, l := range m.GetLabel() {
					key += "," + l.GetName() + "=" + l.GetValue()
				}
				got[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
		hex0 := geneve.EndpointHex(ep0)
		for _, k := range []string{
			"gwlbproxy_tunnel_packets_total,direction=in,endpoint_id=" + hex0 + ",interface=" + in0,
			"gwlbproxy_tunnel_packets_total,direction=out,endpoint_id=" + hex0 + ",interface=" + in0,
			"gwlbproxy_tunnel_flows,endpoint_id=" + hex0 + ",interface=" + in0,
			"gwlbproxy_tunnel_drops_total,reason=foreign_source",
		} {
			if got[k] <= 0 {
				t.Errorf("metric %s = %v", k, got[k])
			}
		}
		if got["gwlbproxy_tunnel_pairs"] != 2 {
			t.Errorf("gwlbproxy_tunnel_pairs = %v", got["gwlbproxy_tunnel_pairs"])
		}
	})
	if st := h.d.Stats(); st.Drops["no_flow"] != 0 {
		t.Logf("no_flow drops: %d (kernel-originated packets such as IPv6 router solicitations)", st.Drops["no_flow"])
	}

	t.Run("shutdown destroys everything in order", func(t *testing.T) {
		h.stop(t)
		for _, n := range []string{in0, out0, in1, out1} {
			if _, err := h.topo.Appliance.Netlink().LinkByName(n); err == nil {
				t.Errorf("%s still exists", n)
			}
		}
		lines := h.events.lines()
		t.Logf("events:\n%s", strings.Join(lines, "\n"))
		for _, ep := range []uint64{ep0, ep1} {
			i, o := geneve.InterfaceNames(ep)
			hex := geneve.EndpointHex(ep)
			want := []string{
				"PAIRUP " + i + " " + o,
				"CREATE " + i + " " + o + " " + hex,
				"DESTROY " + i + " " + o + " " + hex,
				"PAIRDOWN " + i + " " + o,
			}
			pos := 0
			for _, l := range lines {
				if pos < len(want) && strings.HasPrefix(l, want[pos]) {
					pos++
				}
			}
			if pos != len(want) {
				t.Errorf("endpoint %s: events out of order or missing (matched %d of %q)", hex, pos, want)
			}
		}
		if h.d.Health() == nil {
			t.Error("healthy after shutdown")
		}
	})
}

// icmpEchoPacket is an inner IPv4 ICMP echo request client -> server.
func icmpEchoPacket() []byte {
	m := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 1, Seq: 1, Data: []byte("x")}}
	body, _ := m.Marshal(nil)
	hdr := ipv4.Header{Version: 4, Len: 20, TotalLen: 20 + len(body), TTL: 64, Protocol: 1,
		Src: gwlbsim.ClientAddr.AsSlice(), Dst: gwlbsim.ServerAddr.AsSlice()}
	b, _ := hdr.Marshal()
	return append(b, body...)
}

func TestIdleTimeoutCountsBothDirections(t *testing.T) {
	eachDatapath(t, testIdleTimeoutCountsBothDirections)
}

func testIdleTimeoutCountsBothDirections(t *testing.T, dp string) {
	h := newHarness(t, dp, []uint64{ep0}, func(c *tunnel.Config) { c.IdleTimeout = 3 * time.Second })
	e0 := h.topo.Endpoints[0]
	if err := ping(t, e0, 1, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "idle destroy", func() bool { return h.d.Stats().TunnelsDestroyed == 1 })
	in0, _ := geneve.InterfaceNames(ep0)
	if _, err := h.topo.Appliance.Netlink().LinkByName(in0); err == nil {
		t.Fatalf("%s still exists after idle timeout", in0)
	}
	// Traffic recreates the pair.
	if err := ping(t, e0, 2, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	// The reply to the queued packet can overtake the control thread's
	// bookkeeping after the flush: wait for it.
	waitFor(t, "second pair counted", func() bool { return h.d.Stats().TunnelsCreated == 2 })
	if st := h.d.Stats(); st.TunnelsCreated != 2 || len(st.Tunnels) != 1 {
		t.Fatalf("stats: %+v", st)
	}
	// Steady traffic keeps the pair alive past the idle timeout: a round
	// trip every ~300 ms for longer than the timeout.
	//
	// The simulated network around the appliance can lose a packet before
	// it reaches the appliance: every veth hop goes through the kernel's
	// per-CPU backlog (netdev_max_backlog), shared with every other test
	// and benchmark on the machine, and a flood elsewhere makes it drop
	// (softnet_stat's second column). Captures of failing runs showed
	// exactly that: an echo leaving the client's veth and never arriving
	// in the VPC namespace; another time the GENEVE datagram leaving the
	// GWLB namespace's veth and never arriving on the appliance's (TX
	// dropped on one end, RX dropped on the other, IpOutDiscards 1); and
	// the tunnel then rightly idled out, as no traffic reached it. So, as
	// ping does, a lost echo is sent again, after 500 ms, far inside the
	// idle timeout, so the traffic stays steady. What is asserted is
	// unchanged: the live tunnel is never destroyed; and the appliance
	// itself must have dropped nothing.
	lost := 0
	for i, end := 3, time.Now().Add(5*time.Second); time.Now().Before(end); i++ {
		n, err := pingResend(e0, i, 500*time.Millisecond, 10*time.Second)
		if err != nil {
			t.Fatalf("%v (daemon stats %+v; simulator %+v)", err, h.d.Stats(), h.sim.Stats())
		}
		lost += n
		time.Sleep(300 * time.Millisecond)
	}
	st := h.d.Stats()
	if st.TunnelsDestroyed != 1 || len(st.Tunnels) != 1 {
		t.Fatalf("live tunnel destroyed: %+v", st)
	}
	// no_flow is the kernel's own IPv6 chatter on the new tun devices
	// (router solicitations, MLD), which has no flow to return on.
	for reason, n := range st.Drops {
		if reason != "no_flow" {
			t.Errorf("appliance dropped %d packets: %s", n, reason)
		}
	}
	simClean(t, h.sim.Stats())
	if lost > 0 {
		t.Logf("%d echo(es) unanswered within 500 ms and sent again (lost in the simulated network, e.g. a backlog drop in /proc/net/softnet_stat, or late)", lost)
	}
}

// pingResend is ping for steady traffic: it sends an ICMP echo with seq
// from the client and waits for its reply, sending the same echo again
// every resend while none has come back, up to timeout. It returns how
// many echoes went unanswered before the reply.
func pingResend(ep *gwlbsim.Endpoint, seq int, resend, timeout time.Duration) (int, error) {
	var c *icmp.PacketConn
	if err := ep.Client.Do(func() (err error) {
		c, err = icmp.ListenPacket("ip4:icmp", gwlbsim.ClientAddr.String())
		return err
	}); err != nil {
		return 0, err
	}
	defer c.Close()
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 0x4343, Seq: seq, Data: []byte("steady")}}
	b, _ := msg.Marshal(nil)
	dst := &net.IPAddr{IP: gwlbsim.ServerAddr.AsSlice()}
	buf := make([]byte, 1500)
	for sent, end := 0, time.Now().Add(timeout); ; sent++ {
		if !time.Now().Before(end) {
			return sent, fmt.Errorf("echo seq %d: no reply to %d echoes in %s", seq, sent, timeout)
		}
		if _, err := c.WriteTo(b, dst); err != nil {
			return sent, err
		}
		wait := time.Now().Add(resend)
		if wait.After(end) {
			wait = end
		}
		c.SetReadDeadline(wait)
		for {
			n, from, err := c.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // send again
			}
			if err != nil {
				return sent, fmt.Errorf("echo seq %d: %w", seq, err)
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.Seq == seq && from.String() == gwlbsim.ServerAddr.String() {
				return sent, nil
			}
		}
	}
}

// TestSlowBringUpStallsNoOne holds the second endpoint's PairUp and shows
// the first endpoint's traffic keeps flowing meanwhile, and that the second
// endpoint's first packet, queued during bring-up, is delivered after.
func TestSlowBringUpStallsNoOne(t *testing.T) { eachDatapath(t, testSlowBringUpStallsNoOne) }

func testSlowBringUpStallsNoOne(t *testing.T, dp string) {
	in1, _ := geneve.InterfaceNames(ep1)
	gate := make(chan struct{})
	h := newHarnessObs(t, dp, []uint64{ep0, ep1}, func(c *tunnel.Config) { c.ObserverTimeout = 2 * time.Minute },
		map[string]chan struct{}{in1: gate})
	blocked := h.obs.blocked
	e0, e1 := h.topo.Endpoints[0], h.topo.Endpoints[1]
	if err := ping(t, e0, 1, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	udpEcho(t, e0, 7000)
	c0 := udpClient(t, e0, 41000, 7000)

	// The ICMP socket must be opened here (it needs t); the echo is
	// awaited in the background while ep1's bring-up is held.
	res := make(chan error, 1)
	go func() { res <- pingNoT(e1, 9, 60*time.Second) }()
	select {
	case name := <-blocked:
		if name != in1 {
			t.Fatalf("blocked %s", name)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("second endpoint never reached PairUp")
	}
	for i := 0; i < 20; i++ {
		if err := udpRoundTrip(c0, []byte("still flowing")); err != nil {
			t.Fatalf("endpoint 0 stalled while endpoint 1 comes up: %v", err)
		}
	}
	if st := h.d.Stats(); st.PendingQueued == 0 {
		t.Fatalf("first packet of endpoint 1 not queued: %+v", st)
	}
	close(gate)
	if err := <-res; err != nil {
		t.Fatalf("queued first packet of endpoint 1 lost: %v", err)
	}
	simClean(t, h.sim.Stats())
}

// pingNoT is ping without *testing.T, for use off the test goroutine.
func pingNoT(ep *gwlbsim.Endpoint, seq int, timeout time.Duration) error {
	var c *icmp.PacketConn
	if err := ep.Client.Do(func() (err error) {
		c, err = icmp.ListenPacket("ip4:icmp", gwlbsim.ClientAddr.String())
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 0x4343, Seq: seq, Data: []byte("queued")}}
	b, _ := msg.Marshal(nil)
	if _, err := c.WriteTo(b, &net.IPAddr{IP: gwlbsim.ServerAddr.AsSlice()}); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("echo seq %d: %w", seq, err)
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.Seq == seq && from.String() == gwlbsim.ServerAddr.String() {
			return nil
		}
	}
}

// tcpEcho starts a one-connection TCP echo server on the endpoint's
// server at port and returns a connection to it from the endpoint's
// client (through the tunnel); both are closed when the test ends.
func tcpEcho(t *testing.T, e *gwlbsim.Endpoint, port int) net.Conn {
	t.Helper()
	addr := net.JoinHostPort(gwlbsim.ServerAddr.String(), fmt.Sprint(port))
	var l net.Listener
	in(t, e.Server, func() (err error) {
		l, err = net.Listen("tcp4", addr)
		return err
	})
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	var c net.Conn
	in(t, e.Client, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 20*time.Second)
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}
