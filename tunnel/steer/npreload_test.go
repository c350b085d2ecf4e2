//go:build linux

package steer

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// lineEcho answers every line on port with the same line, keeping the
// connection open (a long-lived flow).
func lineEcho(t *testing.T, n *nsh, port int) {
	var ln net.Listener
	if err := n.do(func() (err error) { ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
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
				br := bufio.NewReader(c)
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(l)); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// echoConn is a client of lineEcho.
type echoConn struct {
	c  net.Conn
	br *bufio.Reader
}

func (e *echoConn) ask(timeout time.Duration) error {
	e.c.SetDeadline(time.Now().Add(timeout))
	if _, err := e.c.Write([]byte("ping\n")); err != nil {
		return err
	}
	l, err := e.br.ReadString('\n')
	if err != nil {
		return err
	}
	if l != "ping\n" {
		return fmt.Errorf("answer %q", l)
	}
	return nil
}

// TestNetworkPolicyReload, both egress modes: SetNetworkPolicy (what
// SIGHUP calls) swaps the rules in one transaction.
//   - TCP 7000 is denied; a reload adds a rule allowing it and the next
//     connection passes; the flow's conntrack mark carries the new rule's
//     id, which names the rule and the new policy_version;
//   - an invalid policy is refused naming the field, and one the kernel
//     refuses (a rule naming a set that does not exist) leaves the previous
//     table in force: the established flow and new ones still pass, the
//     version and rule ids are unchanged;
//   - renaming the rule moves the established flow to the new rule (its
//     mark is rewritten), the flow keeps running;
//   - a reload back to the first policy cuts the established flow (the
//     new policy denies it) and new connections are denied again.
func TestNetworkPolicyReload(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		t.Run(mode, func(t *testing.T) {
			cfg := npConfig(mode, epA)
			tp := newTopo(t, cfg, "a")
			a := tp.tun["a"]
			srv := tp.eg
			if mode == EgressTunnel {
				srv = a.srv
			}
			lineEcho(t, srv, 7000)
			dst := netip.AddrPortFrom(serverAddr, 7000)
			ctx := context.Background()
			s := tp.s
			v1 := s.PolicyVersion()

			open := func() (*echoConn, error) {
				c, err := dial(t, a.cli, dst, 2*time.Second)
				if err != nil {
					return nil, err
				}
				t.Cleanup(func() { c.Close() })
				return &echoConn{c: c, br: bufio.NewReader(c)}, nil
			}
			if c, err := open(); err == nil {
				c.c.Close()
				t.Fatal("7000 connected before the reload; want denied")
			}

			// The counters carry over the table swap.
			def0 := s.Stats().Counters[npCounter(DefaultRuleName)].Packets
			if def0 == 0 {
				t.Fatal("np_default counted nothing for the denied attempt")
			}
			allow := s.NetworkPolicy()
			allow.Rules = append(slices.Clone(allow.Rules), NetRule{Name: "echo", Action: NetAllow, Protocol: ProtoTCP,
				Ports: []policy.PortRange{{Lo: 7000, Hi: 7000}}})
			res, err := s.SetNetworkPolicy(ctx, allow)
			if err != nil || !res.Changed || res.Version == v1 {
				t.Fatalf("reload to allow: %+v %v", res, err)
			}
			v2 := s.PolicyVersion()
			if d := s.Stats().Counters[npCounter(DefaultRuleName)].Packets; d < def0 {
				t.Fatalf("np_default %d -> %d across the reload: counters must carry over", def0, d)
			}
			if v2 != res.Version {
				t.Fatalf("PolicyVersion %s, reload said %s", v2, res.Version)
			}
			kept, err := open()
			if err != nil {
				t.Fatalf("7000 after the reload that allows it: %v", err)
			}
			if err := kept.ask(5 * time.Second); err != nil {
				t.Fatalf("echo: %v", err)
			}
			local, _ := addrPort(kept.c.LocalAddr())
			ruleOf := func() (string, string) {
				t.Helper()
				m, err := s.ct.Load().mark(local, dst)
				if err != nil {
					t.Fatalf("conntrack: %v", err)
				}
				r, v, ok := s.RuleOfMark(m)
				if !ok {
					t.Fatalf("ct mark %#x carries no rule id", m)
				}
				return r, v
			}
			if r, v := ruleOf(); r != "echo" || v != v2 {
				t.Fatalf("flow attributed to %q %s, want echo %s", r, v, v2)
			}

			// Refused reloads change nothing.
			bad := s.NetworkPolicy()
			bad.Rules = append(slices.Clone(bad.Rules), NetRule{Name: "oops", Action: "maybe"})
			if _, err := s.SetNetworkPolicy(ctx, bad); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("network_policy.rules[%d].action", len(bad.Rules)-1)) {
				t.Fatalf("invalid policy: %v, want an error naming network_policy.rules[%d].action", err, len(bad.Rules)-1)
			}
			s.testBadRule = true
			cut := s.NetworkPolicy()
			cut.Rules = cut.Rules[:len(cut.Rules)-1]
			if _, err := s.SetNetworkPolicy(ctx, cut); err == nil || !strings.Contains(err.Error(), "network_policy") {
				t.Fatalf("kernel-refused policy: %v, want an error", err)
			}
			s.testBadRule = false
			if s.PolicyVersion() != v2 {
				t.Fatalf("version %s after refused reloads, want %s", s.PolicyVersion(), v2)
			}
			if d, err := func() (drift, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.checkLocked() }(); err != nil || !d.empty() {
				t.Fatalf("kernel differs from the table in force after a refused reload: %v %v", d, err)
			}
			if err := kept.ask(5 * time.Second); err != nil {
				t.Fatalf("established flow after refused reloads: %v", err)
			}
			if c, err := open(); err != nil {
				t.Fatalf("new flow after refused reloads: %v", err)
			} else {
				c.c.Close()
			}
			if r, _ := ruleOf(); r != "echo" {
				t.Fatalf("flow attributed to %q after refused reloads", r)
			}

			// Renamed rule: the running flow moves to it.
			renamed := s.NetworkPolicy()
			renamed.Rules[len(renamed.Rules)-1].Name = "echo-renamed"
			res, err = s.SetNetworkPolicy(ctx, renamed)
			if err != nil || res.FlowsMoved < 1 || res.FlowsCut != 0 {
				t.Fatalf("rename: %+v %v", res, err)
			}
			if err := kept.ask(5 * time.Second); err != nil {
				t.Fatalf("established flow after the rename: %v", err)
			}
			if r, v := ruleOf(); r != "echo-renamed" || v != res.Version {
				t.Fatalf("after rename attributed to %q %s, want echo-renamed %s", r, v, res.Version)
			}
			if !strings.Contains(s.Explain(), "np_echo-renamed") {
				t.Fatal("explain lacks the renamed rule")
			}
			if st := s.Stats(); st.Counters[npCounter("echo-renamed")].Packets == 0 && st.Counters[npCounter("ssh-a")].Packets != 0 {
				t.Logf("counters %+v", st.Counters)
			}

			// And back: the new policy denies the flow, which is cut.
			res, err = s.SetNetworkPolicy(ctx, cfg.NetworkPolicy)
			if err != nil || res.Version != v1 || res.FlowsCut < 1 {
				t.Fatalf("reload back: %+v %v (want version %s and the flow cut)", res, err, v1)
			}
			if err := kept.ask(3 * time.Second); err == nil {
				t.Fatal("established flow still answered after the policy denying it was loaded")
			}
			if c, err := open(); err == nil {
				c.c.Close()
				t.Fatal("7000 connected after the reload that denies it")
			}
		})
	}
}

// TestNetworkPolicyReloadNoGap: while the policy is swapped back and forth
// as fast as reloads go (two policies that differ only in an unrelated
// rule), every new UDP flow to the allowed port is answered and not one
// packet to a denied port reaches the server: no moment without rules or
// with the wrong ones. Both egress modes.
func TestNetworkPolicyReloadNoGap(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		t.Run(mode, func(t *testing.T) {
			cfg := npConfig(mode, epA)
			tp := newTopo(t, cfg, "a")
			a := tp.tun["a"]
			srv := tp.eg
			if mode == EgressTunnel {
				srv = a.srv
			}
			udpEchoFrom(t, srv, 5001)
			var leaked atomic.Int64
			var pc net.PacketConn
			if err := srv.do(func() (err error) {
				pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(serverAddr, 5003).String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 64)
				for {
					if _, _, err := pc.ReadFrom(buf); err != nil {
						return
					}
					leaked.Add(1)
				}
			}()
			pa, pb := tp.s.NetworkPolicy(), tp.s.NetworkPolicy()
			pa.Rules = append(slices.Clone(pa.Rules), NetRule{Name: "extra-a", Action: NetDeny, Destinations: []netip.Prefix{netip.MustParsePrefix("203.0.113.98/32")}})
			pb.Rules = append(slices.Clone(pb.Rules), NetRule{Name: "extra-b", Action: NetAllow, Protocol: ProtoTCP, Ports: []policy.PortRange{{Lo: 9999, Hi: 9999}}})

			stop := make(chan struct{})
			reloads := make(chan int, 1)
			go func() {
				n := 0
				defer func() { reloads <- n }()
				for {
					select {
					case <-stop:
						return
					default:
					}
					p := pa
					if n%2 == 1 {
						p = pb
					}
					if _, err := tp.s.SetNetworkPolicy(context.Background(), p); err != nil {
						t.Errorf("reload %d: %v", n, err)
						return
					}
					n++
				}
			}()
			var denied net.Conn
			if err := a.cli.do(func() (err error) {
				denied, err = net.Dial("udp4", netip.AddrPortFrom(serverAddr, 5003).String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer denied.Close()
			asks, sent := 0, 0
			for deadline := time.Now().Add(4 * time.Second); time.Now().Before(deadline); {
				// A new flow each time (new source port): decided by the
				// rules, not by an established entry.
				if _, err := udpAsk(t, a.cli, netip.AddrPortFrom(serverAddr, 5001), "ping"); err != nil {
					t.Fatalf("allowed UDP flow %d during reloads: %v", asks, err)
				}
				asks++
				for range 20 {
					denied.Write([]byte("x"))
					sent++
				}
			}
			close(stop)
			n := <-reloads
			time.Sleep(500 * time.Millisecond)
			t.Logf("%d reloads; %d allowed flows all answered; %d packets to the denied port, %d reached the server", n, asks, sent, leaked.Load())
			if n < 10 {
				t.Fatalf("only %d reloads happened", n)
			}
			if leaked.Load() != 0 {
				t.Fatalf("%d packets to the denied port reached the server during reloads", leaked.Load())
			}
		})
	}
}
