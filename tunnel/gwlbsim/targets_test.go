//go:build linux

package gwlbsim

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
)

func udpKey(t *testing.T, sport uint16) flow.Key {
	t.Helper()
	// IPv4/UDP 198.19.0.10:sport -> 203.0.113.10:7000.
	p := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 19, 0, 10, 203, 0, 113, 10,
		byte(sport >> 8), byte(sport), 0x1b, 0x58, 0, 8, 0, 0}
	var k flow.Key
	if _, r := flow.ParsePacket(p, &k); r != flow.OK {
		t.Fatalf("parse: %v", r)
	}
	return k
}

func TestPlace(t *testing.T) {
	a := &target{addr: netip.MustParseAddr("198.18.0.2")}
	b := &target{addr: netip.MustParseAddr("198.18.0.3")}
	ts := []*target{a, b}
	if place(ts, udpKey(t, 1), false) != nil {
		t.Fatal("placed a flow with no healthy target")
	}
	if got := place(ts, udpKey(t, 1), true); got == nil {
		t.Fatal("fail-open placed nothing")
	}
	a.healthy.Store(true)
	b.healthy.Store(true)
	count := map[*target]int{}
	for p := range uint16(200) {
		k := udpKey(t, 30000+p)
		got := place(ts, k, false)
		if again := place(ts, k, false); again != got {
			t.Fatal("placement of one flow is not stable")
		}
		count[got]++
	}
	if count[a] < 50 || count[b] < 50 {
		t.Fatalf("200 flows spread %d/%d over two healthy targets", count[a], count[b])
	}
	b.healthy.Store(false)
	for p := range uint16(50) {
		if got := place(ts, udpKey(t, 40000+p), false); got != a {
			t.Fatalf("new flow placed on unhealthy %v", got.addr)
		}
	}
}

func TestTargetThresholds(t *testing.T) {
	hc := HealthCheck{HealthyThreshold: 3, UnhealthyThreshold: 2}.withDefaults()
	tg := &target{}
	for i, ok := range []bool{true, true, false, true, true} {
		if tg.record(hc, ok, "") || tg.healthy.Load() {
			t.Fatalf("probe %d: healthy before 3 consecutive successes", i)
		}
	}
	if !tg.record(hc, true, "200") || !tg.healthy.Load() {
		t.Fatal("not healthy after 3 consecutive successes")
	}
	if tg.record(hc, false, "503") || !tg.healthy.Load() {
		t.Fatal("unhealthy after one failure")
	}
	if !tg.record(hc, false, "503") || tg.healthy.Load() {
		t.Fatal("still healthy after 2 consecutive failures")
	}
	st := tg.stats()
	if st.Checks != 8 || st.CheckFailures != 3 || st.LastCheck != "503" {
		t.Fatalf("stats %+v", st)
	}
}

// healthServer answers GWLB's probes on addr:8080 in appliance
// namespace ns with the status in code.
func healthServer(t *testing.T, ns *NS, addr netip.Addr, code *atomic.Int32) {
	t.Helper()
	var l net.Listener
	err := ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", netip.AddrPortFrom(addr, 8080).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(code.Load()))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// TestHealthCheckedTargets: two appliances (reflectors in the appliance
// namespace and in an extra one) behind the simulator. New flows spread over the healthy ones; when one
// answers 503 it gets no new flow while its existing flow keeps being
// carried to it; with none healthy new flows are dropped.
func TestHealthCheckedTargets(t *testing.T) {
	needRoot(t)
	topo, err := NewTopology(TopologyConfig{Prefix: "gst", ExtraAppliances: 1,
		Endpoints: []EndpointConfig{{ID: 0x0123456789abcdef, AttachmentID: 11}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	second := topo.Extra[0].Addr
	targets := []netip.Addr{ApplianceAddr, second}
	var codes [2]atomic.Int32
	for i, ns := range []*NS{topo.Appliance, topo.Extra[0].NS} {
		codes[i].Store(200)
		startReflectorAt(t, ns, targets[i])
		healthServer(t, ns, targets[i], &codes[i])
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sim, err := Start(ctx, topo, Config{Targets: targets, HealthCheck: &HealthCheck{
		Port: 8080, Interval: 50 * time.Millisecond, Timeout: 2 * time.Second, HealthyThreshold: 2, UnhealthyThreshold: 2,
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	ep := topo.Endpoints[0]
	udpEcho(t, ep, 7000)
	waitFor(t, "both targets healthy", func() bool {
		ts := sim.Targets()
		return ts[0].Healthy && ts[1].Healthy
	})

	// Both healthy: flows from 16 ports land on both.
	for p := range 16 {
		if err := roundTrip(t, ep, 41000+p, 7000, []byte("spread")); err != nil {
			t.Fatalf("flow %d: %v", p, err)
		}
	}
	ts := sim.Targets()
	if ts[0].NewFlows == 0 || ts[1].NewFlows == 0 || ts[0].NewFlows+ts[1].NewFlows != 16 {
		t.Fatalf("16 flows over two healthy targets: %+v", ts)
	}
	// A flow pinned to the second target, to be kept after it drains.
	on := map[flow.Key]netip.Addr{}
	for _, f := range sim.Flows() {
		on[f.Key] = f.Target
	}
	var pinned int
	for p := range 16 {
		if on[udpKey(t, uint16(41000+p))] == second {
			pinned = 41000 + p
			break
		}
	}
	if pinned == 0 {
		t.Fatal("no flow on the second target")
	}

	codes[1].Store(http.StatusServiceUnavailable)
	waitFor(t, "second target unhealthy", func() bool { return !sim.Targets()[1].Healthy })
	before := sim.Targets()
	for p := range 16 {
		if err := roundTrip(t, ep, 42000+p, 7000, []byte("after drain")); err != nil {
			t.Fatalf("new flow %d while one target drains: %v", p, err)
		}
	}
	if err := roundTrip(t, ep, pinned, 7000, []byte("pinned")); err != nil {
		t.Fatalf("existing flow on the draining target: %v", err)
	}
	after := sim.Targets()
	if after[1].NewFlows != before[1].NewFlows || after[0].NewFlows != before[0].NewFlows+16 {
		t.Fatalf("new flows went to the draining target: before %+v after %+v", before, after)
	}
	if after[1].Sent <= before[1].Sent || after[1].Returned <= before[1].Returned {
		t.Fatalf("existing flow not carried to the draining target: before %+v after %+v", before, after)
	}

	// None healthy: new flows are dropped, not placed.
	codes[0].Store(http.StatusServiceUnavailable)
	waitFor(t, "first target unhealthy", func() bool { return !sim.Targets()[0].Healthy })
	drops := sim.Stats().NoHealthyTarget
	c, err := dialClient(ep, 43000)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("nowhere")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "no healthy target drop", func() bool { return sim.Stats().NoHealthyTarget > drops })
	final := sim.Targets()
	if final[0].NewFlows != after[0].NewFlows || final[1].NewFlows != after[1].NewFlows {
		t.Fatalf("flow placed with no healthy target: %+v", final)
	}
	if st := sim.Stats(); st.WrongSource != 0 || st.OptionMismatch != 0 || st.UnknownFlow != 0 {
		t.Fatalf("stats %+v", st)
	}
}
