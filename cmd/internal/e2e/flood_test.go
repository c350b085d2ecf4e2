package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flowlog"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// Flood parameters. The bounds are generous on purpose: CI has 2 vCPUs
// and runs the suite with -race; the test asserts behaviour (nothing
// stalls, every flow is accounted for), not speed.
const (
	floodRatePerClient = 1500             // new short flows per second from each VPC's client
	floodDuration      = 8 * time.Second  // how long the generators run
	floodTCPPort       = 5201             // allowed forwarded TCP (the long-lived flow and short ones)
	floodDeniedUDPPort = 9                // no rule: denied by default
	floodDeniedTCPPort = 8080             // no rule: denied by default
	floodRule          = "flood-tcp"      // the network rule allowing floodTCPPort
	maxStall           = 20 * time.Second // longest gap allowed in the long-lived flow's round trips
	maxHTTPS           = 30 * time.Second // longest an HTTPS request through the proxy may take under the flood
)

// TestFloodOfShortFlows (issue 15 item 4), both egress modes, with the
// demo's deny-by-default network policy plus one rule allowing TCP
// floodTCPPort: while both VPCs' clients open thousands of short
// forwarded flows per second (UDP to the allowed echo port, UDP and TCP
// SYNs to denied ports, short allowed TCP connections; every flow a new
// source port),
//   - an HTTPS request bumped by the proxy completes and gets its request
//     record;
//   - a long-lived allowed forwarded TCP flow keeps passing data (no
//     round trip gap longer than maxStall);
//   - afterwards every flow is accounted for, with the kernel's counters
//     as the reference: each new flow an allow rule accepted (its
//     nftables counter) is a flow record or is counted in a flow_summary,
//     each denied packet (the default rule's counter) a flow_denied
//     record or counted as suppressed; only netlink overruns, counted
//     and shown in health, may excuse a shortfall; conntrack itself
//     dropped nothing (conntrack -S: drop, early_drop, insert_failed);
//   - what flowlog says it shipped arrived at the CloudWatch Logs fake;
//   - health and metrics show the degradation counters (records over
//     max_records_per_second summarised, denials over the per-source
//     limit suppressed).
func TestFloodOfShortFlows(t *testing.T) {
	for _, mode := range []string{steer.EgressNAT, steer.EgressTunnel} {
		t.Run(mode, func(t *testing.T) { testFloodOfShortFlows(t, mode, 0) })
	}
	// The smallest netlink receive buffer: the kernel is likely to drop
	// events (how many depends on the machine); whatever it drops must be
	// counted exactly, never silent.
	t.Run("nat-small-buffer", func(t *testing.T) { testFloodOfShortFlows(t, steer.EgressNAT, 64<<10) })
}

// testFloodOfShortFlows runs the flood in mode; readBuffer, if not 0, is
// flow_records.read_buffer.
func testFloodOfShortFlows(t *testing.T, mode string, readBuffer int) {
	e := newEnv(t, mode, func(c *config.Config) {
		c.Steer.NetworkPolicy.Rules = append(c.Steer.NetworkPolicy.Rules, steer.NetRule{
			Name: floodRule, Action: steer.NetAllow, Protocol: steer.ProtoTCP,
			Destinations: []netip.Prefix{netip.PrefixFrom(demo.AddrEcho, 32)},
			Ports:        []policy.PortRange{{Lo: floodTCPPort, Hi: floodTCPPort}},
		})
		// Below the flood's rate: the pipeline must degrade to summaries.
		c.FlowRecords.MaxRecordsPerSecond = 300
		c.FlowRecords.SummaryInterval = time.Second
		c.FlowRecords.InterimInterval = 0
		if readBuffer != 0 {
			c.FlowRecords.ReadBuffer = readBuffer
		}
	}, true)
	ctx := testCtx(t, 6*time.Minute)
	app := e.Net.Topo.Appliance
	// Short flows end a second after their last packet, so that the
	// records come while the test waits.
	if err := app.Do(func() error {
		for _, f := range []string{"udp_timeout", "tcp_timeout_time_wait", "tcp_timeout_close", "tcp_timeout_close_wait",
			"tcp_timeout_fin_wait", "tcp_timeout_last_ack", "tcp_timeout_syn_sent", "tcp_timeout_syn_recv"} {
			if err := os.WriteFile("/proc/sys/net/netfilter/nf_conntrack_"+f, []byte("1\n"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// The TCP server: on every internet address, echoes until the client
	// closes. In tunnel mode each endpoint's server namespace is its
	// internet.
	var servers []net.Listener
	inets := []func(func() error) error{}
	if e.Net.Inet != nil {
		inets = append(inets, e.Net.Inet.Do)
	} else {
		for _, ep := range e.Net.Topo.Endpoints {
			inets = append(inets, ep.Server.Do)
		}
	}
	for _, do := range inets {
		var ln net.Listener
		if err := do(func() error {
			var err error
			ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", floodTCPPort))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		servers = append(servers, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
	}
	defer func() {
		for _, ln := range servers {
			ln.Close()
		}
	}()

	counterNames := []string{"np_" + demo.NetRuleEcho, "np_" + floodRule, "np_" + steer.DefaultRuleName}
	readCounters := func() map[string]float64 {
		t.Helper()
		m, err := e.Metrics(ctx)
		if err != nil {
			t.Fatalf("metrics: %v", err)
		}
		out := map[string]float64{}
		for _, n := range counterNames {
			v, ok := m[`gwlbproxy_steer_packets_total{counter="`+n+`"}`]
			if !ok {
				t.Fatalf("counter %s not exposed", n)
			}
			out[n] = v
		}
		return out
	}
	ctStats := func() (s conntrack.Stats) {
		t.Helper()
		if err := app.Do(func() error {
			c, err := conntrack.Dial(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			cpus, err := c.Stats()
			for _, p := range cpus {
				s.Drop += p.Drop
				s.EarlyDrop += p.EarlyDrop
				s.InsertFailed += p.InsertFailed
				s.Insert += p.Insert
				s.Error += p.Error
			}
			return err
		}); err != nil {
			t.Fatalf("conntrack stats: %v", err)
		}
		return s
	}
	// conntrack's own count of the allowed flows: its NEW events (one
	// per flow confirmed, i.e. accepted by the policy) for the allowed
	// destinations. The rules' nftables counters count packets of state
	// new, which a retransmitted SYN counts twice.
	ctNew := listenCTNew(t, app.Do, func(f *conntrack.Flow) bool {
		o := f.TupleOrig
		return f.Zone == 0 && o.IP.DestinationAddress == demo.AddrEcho &&
			(o.Proto.Protocol == unix.IPPROTO_UDP && o.Proto.DestinationPort == demo.EchoPort ||
				o.Proto.Protocol == unix.IPPROTO_TCP && o.Proto.DestinationPort == floodTCPPort)
	})
	before := readCounters()
	ctBefore := ctStats()
	stBefore := flowStats(t, ctx, e)
	startRecs := len(e.Records.All())

	// (b) The long-lived allowed flow: a round trip every 50 ms; the
	// longest gap between two completed round trips is the stall.
	long, err := e.Clients[0].Dial(ctx, "tcp4", netip.AddrPortFrom(demo.AddrEcho, floodTCPPort).String())
	if err != nil {
		t.Fatalf("long-lived TCP flow: %v", err)
	}
	longLocal := long.LocalAddr().String()
	var (
		longMu       sync.Mutex
		longRTs      int
		longMaxGap   time.Duration
		longErr      error
		longStop     = make(chan struct{})
		longDone     = make(chan struct{})
		longLastGood = time.Now()
	)
	go func() {
		defer close(longDone)
		msg, buf := []byte("0123456789abcdef"), make([]byte, 16)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-longStop:
				return
			case <-tick.C:
			}
			long.SetDeadline(time.Now().Add(2 * maxStall))
			_, err := long.Write(msg)
			if err == nil {
				_, err = io.ReadFull(long, buf)
			}
			now := time.Now()
			longMu.Lock()
			if err != nil {
				longErr = err
				longMu.Unlock()
				return
			}
			longRTs++
			longMaxGap = max(longMaxGap, now.Sub(longLastGood))
			longLastGood = now
			longMu.Unlock()
		}
	}()

	// The flood.
	var sent [4]atomic.Int64 // allowed UDP, denied UDP, denied TCP SYN, allowed short TCP
	var sendErrs atomic.Int64
	floodCtx, stopFlood := context.WithTimeout(ctx, floodDuration)
	defer stopFlood()
	var wg sync.WaitGroup
	for ci, cl := range e.Clients {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := cl.NS.Do(func() error { floodUDP(floodCtx, ci, &sent, &sendErrs); return nil }); err != nil {
				t.Errorf("flood from %s: %v", cl.Name, err)
			}
		}()
		go func() {
			// Short allowed TCP connections, a few per second.
			defer wg.Done()
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-floodCtx.Done():
					return
				case <-tick.C:
				}
				dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				c, err := cl.Dial(dctx, "tcp4", netip.AddrPortFrom(demo.AddrEcho, floodTCPPort).String())
				cancel()
				if err != nil {
					if sendErrs.Add(1) == 1 {
						t.Logf("short TCP flow from %s: %v", cl.Name, err)
					}
					continue
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.Write([]byte("x"))
				io.ReadFull(c, make([]byte, 1))
				c.Close()
				sent[3].Add(1)
			}
		}()
	}

	// (a) HTTPS through the proxy, bumped, three times during the flood
	// from alternating VPCs.
	var results []demo.Result
	var httpsTook []time.Duration
	for i := range 3 {
		time.Sleep(floodDuration / 4)
		hctx, cancel := context.WithTimeout(ctx, maxHTTPS)
		t0 := time.Now()
		res := e.Clients[i%2].Get(hctx, "https://"+demo.HostApp+"/")
		cancel()
		took := time.Since(t0)
		httpsTook = append(httpsTook, took.Round(time.Millisecond))
		if res.Err != nil || res.Status != 200 || res.Issuer != demo.ApplianceCAName {
			t.Errorf("HTTPS during the flood: status %d issuer %q err %v after %s; want 200 bumped within %s", res.Status, res.Issuer, res.Err, took, maxHTTPS)
			continue
		}
		results = append(results, res)
	}
	wg.Wait()
	floodEndsAt := time.Now()
	t.Logf("flood: %d allowed UDP, %d denied UDP, %d denied TCP SYN, %d allowed short TCP sent in %s (%d send errors); HTTPS requests took %v",
		sent[0].Load(), sent[1].Load(), sent[2].Load(), sent[3].Load(), floodDuration, sendErrs.Load(), httpsTook)
	if sent[0].Load() < 1000 {
		t.Errorf("only %d allowed UDP flows sent: the generator did not run", sent[0].Load())
	}

	// The long-lived flow kept passing data during the flood and still does.
	time.Sleep(time.Second)
	close(longStop)
	<-longDone
	longMu.Lock()
	rts, gap, lerr, last := longRTs, longMaxGap, longErr, longLastGood
	longMu.Unlock()
	t.Logf("long-lived flow %s: %d round trips, longest gap %s", longLocal, rts, gap.Round(time.Millisecond))
	if lerr != nil {
		t.Errorf("long-lived flow failed: %v", lerr)
	}
	if gap > maxStall || last.Before(floodEndsAt) {
		t.Errorf("long-lived flow stalled: longest gap %s (bound %s), last round trip %s after the flood ended", gap, maxStall, last.Sub(floodEndsAt))
	}
	if min := int(floodDuration / (50 * time.Millisecond) / 4); rts < min {
		t.Errorf("long-lived flow: %d round trips, want at least %d", rts, min)
	}
	long.Close()

	for _, res := range results {
		if _, err := e.Records.Wait(testCtx(t, time.Minute), 1, func(r *demo.Record) bool {
			return r.RecordType == "" && r.Of(res) && r.Scheme == "https" && r.Action == "allow"
		}); err != nil {
			t.Errorf("request record of the HTTPS request from %s during the flood: %v", res.Local, err)
		}
	}

	// (c) Accounting. The flood's packets may still be crossing the
	// simulated GWLB: wait until the kernel's counters stop moving.
	var after map[string]float64
	for last := map[string]float64(nil); ; last = after {
		time.Sleep(2 * time.Second)
		after = readCounters()
		if fmt.Sprint(after) == fmt.Sprint(last) {
			break
		}
	}
	ctAfter := ctStats()
	// Right after the flood: an overrun (events lost) shows in health.
	if st := flowStats(t, ctx, e); st.ConntrackOverruns+st.NFLOGOverruns > 0 {
		if _, rep, _ := e.Health(ctx); rep.Checks["flowlog"].OK {
			t.Errorf("overruns counted (%+v) but the flowlog health check is green", st)
		} else {
			t.Logf("health after the flood: %s", rep.Checks["flowlog"].Error)
		}
	}
	nftAllowed := int(after["np_"+demo.NetRuleEcho]-before["np_"+demo.NetRuleEcho]) + int(after["np_"+floodRule]-before["np_"+floodRule])
	refAllowed, err := ctNew()
	if err != nil {
		t.Fatalf("conntrack NEW events (the reference): %v", err)
	}
	if refAllowed > nftAllowed || refAllowed < nftAllowed*9/10 {
		t.Errorf("conntrack confirmed %d allowed flows, the rules' nftables counters %d new packets", refAllowed, nftAllowed)
	}
	refDenied := int(after["np_"+steer.DefaultRuleName] - before["np_"+steer.DefaultRuleName])
	t.Logf("kernel: %d allowed flows confirmed by conntrack (%d new packets counted by the rules), %d packets denied (nftables counter); conntrack -S drop %d early_drop %d insert_failed %d error %d",
		refAllowed, nftAllowed, refDenied, ctAfter.Drop-ctBefore.Drop, ctAfter.EarlyDrop-ctBefore.EarlyDrop, ctAfter.InsertFailed-ctBefore.InsertFailed, ctAfter.Error-ctBefore.Error)
	if d := (ctAfter.Drop - ctBefore.Drop) + (ctAfter.EarlyDrop - ctBefore.EarlyDrop) + (ctAfter.InsertFailed - ctBefore.InsertFailed); d != 0 {
		t.Errorf("conntrack dropped %d entries during the flood", d)
	}
	if refAllowed < int(sent[0].Load())/2 || refDenied < int(sent[1].Load()+sent[2].Load())/2 {
		t.Errorf("the kernel saw %d allowed flows of %d sent and %d denied packets of %d: the flood was lost before the policy",
			refAllowed, sent[0].Load()+sent[3].Load()+1, refDenied, sent[1].Load()+sent[2].Load())
	}

	type tally struct {
		recorded, summarised, denied, suppressed, summaries, overrunsInSummaries, lost, deniedLost int
	}
	count := func() (n tally) {
		for _, r := range e.Records.All()[startRecs:] {
			switch r.RecordType {
			case flowlog.TypeFlow:
				if r.Rule == demo.NetRuleEcho || r.Rule == floodRule {
					n.recorded++
				}
			case flowlog.TypeDenied:
				n.denied++
			case flowlog.TypeSummary:
				n.summaries++
				f, _ := strconv.Atoi(r.Field("flows"))
				s, _ := strconv.Atoi(r.Field("denied_suppressed"))
				o, _ := strconv.Atoi(r.Field("netlink_overruns"))
				n.summarised += f
				n.suppressed += s
				n.overrunsInSummaries += o
				fl, _ := strconv.Atoi(r.Field("flows_lost"))
				dl, _ := strconv.Atoi(r.Field("denied_messages_lost"))
				n.lost += fl
				n.deniedLost += dl
			}
		}
		return n
	}
	stats := func() flowlog.Stats { return flowStats(t, ctx, e) }
	var n tally
	var st flowlog.Stats
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n, st = count(), stats()
		// Exact unless the kernel dropped events, and then within what
		// the sockets' drop counters say was lost: flows_lost counts
		// every destroy event dropped, forwarded flows or not (the socket
		// hears the whole namespace), so it bounds from above; an NFLOG
		// message carries up to 32 denials.
		allowedOK := n.recorded+n.summarised <= refAllowed && refAllowed <= n.recorded+n.summarised+n.lost
		deniedOK := n.denied+n.suppressed <= refDenied && refDenied <= n.denied+n.suppressed+32*n.deniedLost
		// Everything flowlog handed to the shipper arrived at the fake
		// (the records of this test and before it).
		shipped := st.Records + st.Denied + st.Summaries
		var arrived uint64
		for _, r := range e.Records.All() {
			switch r.RecordType {
			case flowlog.TypeFlow, flowlog.TypeDenied, flowlog.TypeSummary, flowlog.TypeInterim:
				arrived++
			}
		}
		lostOK := uint64(n.lost) == st.ConntrackEventsLost-stBefore.ConntrackEventsLost && uint64(n.deniedLost) == st.NFLOGMessagesLost-stBefore.NFLOGMessagesLost
		if allowedOK && deniedOK && lostOK && st.Queued == 0 && arrived == shipped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every flow accounted for: allowed %d recorded + %d summarised (+ %d lost) vs %d confirmed by conntrack; denied %d recorded + %d suppressed (+ %d messages lost) vs %d dropped; flowlog shipped %d, %d arrived at the fake; stats %+v",
				n.recorded, n.summarised, n.lost, refAllowed, n.denied, n.suppressed, n.deniedLost, refDenied, shipped, arrived, st)
		}
		time.Sleep(time.Second)
	}
	if st.ConntrackOverruns+st.NFLOGOverruns > 0 {
		t.Logf("the kernel dropped events: overruns conntrack %d nflog %d, lost %d destroy events, %d NFLOG messages (all counted)",
			st.ConntrackOverruns, st.NFLOGOverruns, st.ConntrackEventsLost, st.NFLOGMessagesLost)
		if n.overrunsInSummaries == 0 {
			t.Errorf("overruns counted but no flow_summary carries netlink_overruns")
		}
	}
	t.Logf("accounted: allowed %d recorded + %d summarised (+ %d lost) for %d; denied %d recorded + %d suppressed (+ %d messages lost) for %d; %d summaries; stats %+v",
		n.recorded, n.summarised, n.lost, refAllowed, n.denied, n.suppressed, n.deniedLost, refDenied, n.summaries, st)
	if n.summarised == 0 || st.RateLimited+st.QueueFull == 0 {
		t.Errorf("the flood exceeded max_records_per_second but nothing was summarised (stats %+v)", st)
	}
	if uint64(n.summarised) != st.RateLimited+st.QueueFull {
		t.Errorf("summaries count %d flows, the counters %d", n.summarised, st.RateLimited+st.QueueFull)
	}
	if n.suppressed == 0 || st.DeniedSuppressed == 0 {
		t.Errorf("denials beyond denied_per_source were not suppressed (stats %+v)", st)
	}

	// (d) The degradation counters in the metrics agree with health.
	m, err := e.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]uint64{
		`gwlbproxy_flow_summarised_total{reason="rate_limited"}`:      st.RateLimited,
		`gwlbproxy_flow_summarised_total{reason="queue_full"}`:        st.QueueFull,
		`gwlbproxy_flow_summarised_total{reason="denied_per_source"}`: st.DeniedSuppressed,
		`gwlbproxy_flow_records_total{type="flow_summary"}`:           st.Summaries,
		`gwlbproxy_flow_netlink_overruns_total{socket="conntrack"}`:   st.ConntrackOverruns,
		`gwlbproxy_flow_netlink_overruns_total{socket="nflog"}`:       st.NFLOGOverruns,
		`gwlbproxy_flow_netlink_lost_total{socket="conntrack"}`:       st.ConntrackEventsLost,
		`gwlbproxy_flow_netlink_lost_total{socket="nflog"}`:           st.NFLOGMessagesLost,
	} {
		if v, ok := m[k]; !ok || uint64(v) != want {
			t.Errorf("metric %s = %v (exposed %v), health says %d", k, v, ok, want)
		}
	}
	checkAllRecords(t, e)
}

// flowStats reads flowlog's counters from the health body
// (checks.flowlog.stats).
func flowStats(t *testing.T, ctx context.Context, e *demo.Env) flowlog.Stats {
	t.Helper()
	_, rep, err := e.Health(ctx)
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	b, _ := json.Marshal(rep.Checks["flowlog"].Stats)
	var st flowlog.Stats
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("health has no flowlog stats (%v): %s", err, b)
	}
	return st
}

// floodUDP runs in client ci's namespace until ctx ends, opening
// floodRatePerClient short flows per second, each from a new source
// port: half UDP to the allowed echo port (answered), a quarter UDP to a
// denied port, a quarter TCP SYNs to a denied port (the socket closed
// right after connect, so one SYN and no retransmission).
func floodUDP(ctx context.Context, ci int, sent *[4]atomic.Int64, errs *atomic.Int64) {
	echo := &unix.SockaddrInet4{Port: demo.EchoPort, Addr: demo.AddrEcho.As4()}
	deniedUDP := &unix.SockaddrInet4{Port: floodDeniedUDPPort, Addr: demo.AddrEcho.As4()}
	deniedTCP := &unix.SockaddrInet4{Port: floodDeniedTCPPort, Addr: demo.AddrEcho.As4()}
	// Source ports: each client its own range below the ephemeral ports
	// (which the short TCP connections use), cycled: a port comes back
	// seconds after its flow's 1 s timeout.
	lo, span := 10000+ci*11000, 11000
	const tick = 10 * time.Millisecond
	perTick := floodRatePerClient * int(tick) / int(time.Second)
	tk := time.NewTicker(tick)
	defer tk.Stop()
	i := 0
	one := func(kind int) {
		port := lo + i%span
		i++
		typ := unix.SOCK_DGRAM
		dst := echo
		switch kind {
		case 1:
			dst = deniedUDP
		case 2:
			typ, dst = unix.SOCK_STREAM, deniedTCP
		}
		fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			errs.Add(1)
			return
		}
		defer unix.Close(fd)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
			errs.Add(1)
			return
		}
		if typ == unix.SOCK_STREAM {
			if err := unix.Connect(fd, dst); err != nil && err != unix.EINPROGRESS {
				errs.Add(1)
				return
			}
		} else if err := unix.Sendto(fd, []byte("flood"), 0, dst); err != nil {
			errs.Add(1)
			return
		}
		sent[kind].Add(1)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		for j := 0; j < perTick; j++ {
			switch j % 4 {
			case 0, 1:
				one(0)
			case 2:
				one(1)
			case 3:
				one(2)
			}
		}
	}
}

// listenCTNew subscribes, in the namespace do enters, to conntrack NEW
// events (NFNLGRP_CONNTRACK_NEW: a flow confirmed, i.e. its first packet
// accepted) and counts those match accepts. The returned function gives
// the count so far, or an error if the socket overran (then the count is
// no reference). The socket closes at cleanup.
func listenCTNew(t *testing.T, do func(func() error) error, match func(*conntrack.Flow) bool) func() (int, error) {
	t.Helper()
	var c *netlink.Conn
	if err := do(func() (err error) {
		c, err = netlink.Dial(unix.NETLINK_NETFILTER, nil)
		return err
	}); err != nil {
		t.Fatalf("conntrack events: %v", err)
	}
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20) })
	}
	const nfnlgrpConntrackNew = 1
	if err := c.JoinGroup(nfnlgrpConntrackNew); err != nil {
		c.Close()
		t.Fatalf("conntrack NEW events: %v", err)
	}
	var (
		mu      sync.Mutex
		n       int
		readErr error
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			msgs, err := c.Receive()
			if err != nil {
				if errors.Is(err, unix.ENOBUFS) {
					mu.Lock()
					readErr = fmt.Errorf("the test's own conntrack event socket overran: %w", err)
					mu.Unlock()
					continue
				}
				return // closed
			}
			k := 0
			for _, m := range msgs {
				var ev conntrack.Event
				if ev.Unmarshal(m) == nil && ev.Flow != nil && ev.Type == conntrack.EventNew && match(ev.Flow) {
					k++
				}
			}
			mu.Lock()
			n += k
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return func() (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return n, readErr
	}
}
