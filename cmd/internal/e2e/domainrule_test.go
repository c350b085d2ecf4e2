package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// steerDomainStats reads the network policy's domain counters from the
// health body (checks.steer.stats.domains).
func steerDomainStats(t *testing.T, ctx context.Context, e *demo.Env) steer.DomainStats {
	t.Helper()
	_, rep, err := e.Health(ctx)
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	b, err := json.Marshal(rep.Checks["steer"].Stats)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Domains *steer.DomainStats `json:"domains"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Domains == nil {
		t.Fatalf("health body has no steer domain stats (%v): %s", err, b)
	}
	return *st.Domains
}

// TestDomainNetworkRuleFollowsDNS (issue 15 item 2) through the real
// daemon, nat mode, with the demo's deny-by-default network policy plus
// one rule "allow tcp/22 to svc.demo.test", resolved by the appliance's
// resolver (proxy/resolve, shared with destination binding) against the
// topology's test DNS server:
//   - while svc.demo.test resolves to A, SSH to A works and to B does not;
//   - the answer changes to B: B is allowed, and once A's TTL has run out
//     A is denied again (the attempt recorded as flow_denied by default,
//     B's connection as a flow of the rule);
//   - the resolver goes silent: B stays allowed on its last answer until
//     that times out (after a resolution was tried and failed), then the
//     rule fails closed; the failures and lapsed addresses are counted;
//   - the resolver answers again: B is allowed again.
//
// TTLs are 5 s, the shortest the daemon keeps (it raises shorter ones).
func TestDomainNetworkRuleFollowsDNS(t *testing.T) {
	const (
		name = "svc.demo.test"
		rule = "ssh-svc"
		ttl  = 5 // seconds, the daemon's floor for element timeouts
		// A second rule for the same name on a port whose server keeps
		// the connection open: a flow allowed while the name resolved to
		// A that outlives A's answer.
		holdRule = "hold-svc"
		holdPort = 2222
	)
	a, b := demo.AddrApp, demo.AddrBank
	e := newEnvOpts(t, demo.Options{
		Mode:           steer.EgressNAT,
		CloudWatchFake: true,
		Prepare: func(ctx context.Context, e *demo.Env) error {
			e.Net.DNS.Set(name, ttl, a)
			return nil
		},
		Modify: func(c *config.Config) {
			r := &c.Proxy.Binding.Resolver
			r.Timeout = time.Second
			r.MinTTL = time.Second
			r.FailureTTL = time.Second
			r.NegativeTTL = time.Second
			c.Steer.NetworkPolicy.Rules = append(c.Steer.NetworkPolicy.Rules, steer.NetRule{
				Name: rule, Action: steer.NetAllow, Protocol: steer.ProtoTCP,
				Ports: []policy.PortRange{{Lo: 22, Hi: 22}}, Domains: []string{name},
			}, steer.NetRule{
				Name: holdRule, Action: steer.NetAllow, Protocol: steer.ProtoTCP,
				Ports: []policy.PortRange{{Lo: holdPort, Hi: holdPort}}, Domains: []string{name},
			})
		},
	})
	ctx := testCtx(t, 4*time.Minute)
	// TCP flows end (and get their record) a second after the close.
	if err := e.Net.Topo.Appliance.Do(func() error {
		for _, f := range []string{"time_wait", "close", "close_wait", "fin_wait", "last_ack"} {
			if err := os.WriteFile("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_"+f, []byte("1\n"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// An SSH-like server on port 22 of every internet address.
	const banner = "SSH-2.0-gwlbproxy-e2e\r\n"
	var ln net.Listener
	if err := e.Net.Inet.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", "0.0.0.0:22")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, banner)
			c.Close()
		}
	}()

	// A server on holdPort that echoes until the client closes.
	var hl net.Listener
	if err := e.Net.Inet.Do(func() error {
		var err error
		hl, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", holdPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	go func() {
		for {
			c, err := hl.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	echo := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err := io.ReadFull(c, make([]byte, 1))
		return err
	}

	// probe reports whether SSH to dst gets the banner (a denied SYN is
	// dropped: the dial times out; 3 s leave room for a SYN retransmitted
	// after a packet lost on a loaded machine).
	var lastPort int
	probe := func(dst netip.Addr) bool {
		dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		c, err := e.Clients[0].Dial(dctx, "tcp4", netip.AddrPortFrom(dst, 22).String())
		if err != nil {
			return false
		}
		defer c.Close()
		lastPort = c.LocalAddr().(*net.TCPAddr).Port
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		return string(got) == banner
	}
	// denied: two probes in a row fail (one could be a transient loss).
	denied := func(dst netip.Addr) bool { return !probe(dst) && !probe(dst) }
	status := func(dst netip.Addr, allowed bool) func() (bool, string) {
		return func() (bool, string) {
			if allowed {
				ok := probe(dst)
				return ok, fmt.Sprintf("ssh to %s allowed=%v", dst, ok)
			}
			d := denied(dst)
			return d, fmt.Sprintf("ssh to %s denied=%v", dst, d)
		}
	}

	start := time.Now()
	waitFor(t, 30*time.Second, "ssh to A while svc.demo.test resolves to A", status(a, true))
	if !denied(b) {
		t.Fatal("ssh to B allowed before svc.demo.test ever resolved to B")
	}
	// A long flow to A, allowed by holdRule while the name resolves to A.
	hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
	held, err := e.Clients[0].Dial(hctx, "tcp4", netip.AddrPortFrom(a, holdPort).String())
	hcancel()
	if err != nil {
		t.Fatalf("held connection to A: %v", err)
	}
	defer held.Close()
	if err := echo(held); err != nil {
		t.Fatalf("held connection to A: %v", err)
	}
	heldPort := held.LocalAddr().(*net.TCPAddr).Port
	t.Logf("A allowed, B denied after %v", time.Since(start).Round(time.Millisecond))

	// The answer changes.
	e.Net.DNS.Set(name, ttl, b)
	changed := time.Now()
	waitFor(t, 30*time.Second, "ssh to B after the answer changed to B", status(b, true))
	bPort := lastPort
	t.Logf("B allowed %v after the change", time.Since(changed).Round(time.Millisecond))
	waitFor(t, 40*time.Second, "ssh to A denied once its TTL ran out", status(a, false))
	t.Logf("A denied %v after the change", time.Since(changed).Round(time.Millisecond))
	if !probe(b) {
		t.Fatal("ssh to B denied while svc.demo.test resolves to B")
	}
	// The flow to A began under the rule and keeps running (conntrack's
	// established state; a name's changing answers do not cut flows);
	// when it ends, its record names the rule that allowed it, as the
	// kernel recorded it in the flow's conntrack mark, although A is no
	// answer of the name any more.
	if err := echo(held); err != nil {
		t.Fatalf("held connection to A after A's answer lapsed: %v", err)
	}
	held.Close()
	hrctx, hrcancel := context.WithTimeout(ctx, 90*time.Second)
	defer hrcancel()
	if rs, err := e.Records.Wait(hrctx, 1, func(r *demo.Record) bool {
		return r.RecordType == "flow" && r.DstIP == a.String() && r.DstPort == holdPort && r.ClientPort == heldPort
	}); err != nil {
		t.Errorf("flow record of the held connection to A: %v", err)
	} else if r := rs[0]; r.Rule != holdRule || r.Action != "allow" || r.PolicyVersion == "" {
		t.Errorf("flow record of the held connection to A: %s (want rule %s: the rule that allowed it, not today's answer)", r.Raw, holdRule)
	}
	// The records: B's connection as a flow of the rule, an attempt to A
	// after the change as denied by default. A flow's record comes when
	// conntrack reaps its entry, which may take the kernel's garbage
	// collector up to a minute.
	ssh := func() string {
		var l []string
		for _, r := range e.Records.All() {
			if r.DstPort == 22 {
				l = append(l, r.Raw)
			}
		}
		return strings.Join(l, "\n")
	}
	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if rs, err := e.Records.Wait(rctx, 1, func(r *demo.Record) bool {
		return r.RecordType == "flow" && r.Protocol == "tcp" && r.DstIP == b.String() && r.DstPort == 22 && r.ClientPort == bPort
	}); err != nil {
		t.Errorf("flow record of ssh to B from port %d: %v; records to port 22:\n%s", bPort, err, ssh())
	} else if r := rs[0]; r.Rule != rule || r.Action != "allow" || r.BytesIn < int64(len(banner)) {
		t.Errorf("flow record of ssh to B: %s", r.Raw)
	}
	rctx, cancel = context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if rs, err := e.Records.Wait(rctx, 1, func(r *demo.Record) bool {
		return r.RecordType == "flow_denied" && r.Protocol == "tcp" && r.DstIP == a.String() && r.DstPort == 22
	}); err != nil {
		t.Errorf("flow_denied record of ssh to A: %v; records to port 22:\n%s", err, ssh())
	} else if r := rs[0]; r.Rule != "default" || r.Action != "deny" {
		t.Errorf("flow_denied record of ssh to A: %s", r.Raw)
	}

	// The resolver goes silent: the last answer is kept until it times
	// out, then the rule fails closed.
	st0 := steerDomainStats(t, ctx, e)
	q0 := e.Net.DNS.Queries(name)
	e.Net.DNS.Silent(true)
	silenced := time.Now()
	if !probe(b) {
		t.Fatal("ssh to B denied at once when the resolver went silent; the last answer should be kept")
	}
	var triedBeforeDenied bool
	var deniedAfter time.Duration
	waitFor(t, 60*time.Second, "ssh to B denied once its last answer timed out", func() (bool, string) {
		at := time.Since(silenced)
		if probe(b) {
			return false, "ssh to B allowed"
		}
		tried := e.Net.DNS.Queries(name) > q0
		if probe(b) {
			return false, "ssh to B failed once, then allowed"
		}
		triedBeforeDenied, deniedAfter = tried, at
		return true, ""
	})
	t.Logf("B denied %v after the resolver went silent", deniedAfter.Round(time.Millisecond))
	if !triedBeforeDenied {
		t.Error("B was dropped before the appliance asked the resolver again")
	}
	// At most: the resolver's cached answer (ttl), then the daemon's
	// element for it (its floor, ttl), plus slack for a loaded machine.
	if deniedAfter > 4*ttl*time.Second {
		t.Errorf("B allowed for %v after the resolver went silent; its TTL is %ds", deniedAfter, ttl)
	}
	if probe(b) {
		t.Fatal("ssh to B allowed again while the resolver is silent")
	}
	st1 := steerDomainStats(t, ctx, e)
	t.Logf("domain stats before %+v, after %+v", st0, st1)
	if st1.Failures <= st0.Failures || st1.Lapsed <= st0.Lapsed {
		t.Errorf("domain stats %+v -> %+v: want failures and lapsed counted", st0, st1)
	}

	// The resolver answers again.
	e.Net.DNS.Silent(false)
	waitFor(t, 40*time.Second, "ssh to B allowed again once the resolver answers", status(b, true))
	if probe(a) {
		t.Error("ssh to A allowed after recovery; svc.demo.test resolves to B only")
	}
	if !e.App.LogContains("resolving a domain failed") {
		t.Error("no warning in the appliance log about the failing resolution")
	}
	checkAllRecords(t, e)
}
