package e2e

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// TestNetworkPolicyReloadSIGHUP (issue 15): the network policy is
// reloaded with SIGHUP, as `systemctl reload` does. With the demo's
// deny-by-default network policy, TCP 8080 to the echo host (where nothing
// listens) is dropped: the dial times out. The operator adds a rule
// allowing it and sends SIGHUP: the health body shows the new
// network_policy_version, the next dial is answered at once (a reset
// from the host: the SYN went through) and the flow's record names the new
// rule with that version. An invalid rule is refused naming the field and
// 8080 stays allowed. Removing the rule again makes 8080 dropped again.
// Both egress modes.
func TestNetworkPolicyReloadSIGHUP(t *testing.T) {
	for _, mode := range []string{steer.EgressNAT, steer.EgressTunnel} {
		t.Run(mode, func(t *testing.T) { testNetworkPolicyReloadSIGHUP(t, mode) })
	}
}

func testNetworkPolicyReloadSIGHUP(t *testing.T, mode string) {
	e := newEnv(t, mode, nil, false)
	ctx := testCtx(t, 3*time.Minute)
	dst := netip.AddrPortFrom(demo.AddrEcho, 8080).String()
	// passes reports whether a SYN to 8080 went through (refused by the
	// host at once) rather than dropped (timeout).
	passes := func() (bool, error) {
		dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		c, err := e.Clients[0].Dial(dctx, "tcp4", dst)
		if err == nil {
			c.Close()
			return true, nil
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return true, nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false, nil
		}
		return false, err
	}
	netVersion := func() string {
		_, st := policyStats(t, ctx, e)
		v, _ := st["network_policy_version"].(string)
		return v
	}
	sighup := func() {
		t.Helper()
		if err := e.App.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	if ok, err := passes(); ok || err != nil {
		t.Fatalf("8080 before the reload: passes=%v %v, want dropped", ok, err)
	}
	v1 := netVersion()
	if v1 == "" {
		t.Fatal("health body has no network_policy_version")
	}
	const rule = "e2e-tcp-8080"
	rewriteConfig(t, e.Files.Config, func(c *config.Config) {
		c.Steer.NetworkPolicy.Rules = append(c.Steer.NetworkPolicy.Rules, steer.NetRule{Name: rule, Action: steer.NetAllow,
			Protocol: steer.ProtoTCP, Destinations: []netip.Prefix{netip.PrefixFrom(demo.AddrEcho, 32)}, Ports: []policy.PortRange{{Lo: 8080, Hi: 8080}}})
	})
	sighup()
	var v2 string
	waitFor(t, 20*time.Second, "the new network policy in force", func() (bool, string) {
		v2 = netVersion()
		return v2 != v1 && v2 != "", v2
	})
	if ok, err := passes(); !ok {
		t.Fatalf("8080 after the reload that allows it: %v", err)
	}
	if _, err := e.Records.Wait(ctx, 1, func(r *demo.Record) bool {
		return r.RecordType == "flow" && r.Protocol == "tcp" && r.DstPort == 8080 && r.Rule == rule && r.PolicyVersion == v2
	}); err != nil {
		t.Fatalf("flow record naming %s with policy_version %s: %v", rule, v2, err)
	}
	// A denial under the new policy names its version too (carried in
	// the NFLOG prefix).
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if c, err := e.Clients[0].Dial(dctx, "tcp4", netip.AddrPortFrom(demo.AddrEcho, 8081).String()); err == nil {
		c.Close()
	}
	cancel()
	if _, err := e.Records.Wait(ctx, 1, func(r *demo.Record) bool {
		return r.RecordType == "flow_denied" && r.DstPort == 8081 && r.Rule == "default" && r.PolicyVersion == v2
	}); err != nil {
		t.Fatalf("flow_denied record of 8081 with policy_version %s: %v", v2, err)
	}

	// An invalid network rule: refused, named, the rules in force stay.
	good, err := os.ReadFile(e.Files.Config)
	if err != nil {
		t.Fatal(err)
	}
	rewriteConfig(t, e.Files.Config, func(c *config.Config) {
		c.Steer.NetworkPolicy.Rules = append(c.Steer.NetworkPolicy.Rules, steer.NetRule{Name: "e2e-bad", Action: "maybe"})
	})
	sighup()
	waitFor(t, 20*time.Second, "the reload failure in the health body", func() (bool, string) {
		code, st := policyStats(t, ctx, e)
		le, _ := st["last_error"].(string)
		return code == 200 && strings.Contains(le, "steer.network_policy.rules[") && strings.Contains(le, "].action"), le
	})
	if v := netVersion(); v != v2 {
		t.Fatalf("network_policy_version %s after a refused reload, want %s", v, v2)
	}
	if ok, err := passes(); !ok {
		t.Fatalf("8080 after a refused reload: %v (want still allowed)", err)
	}

	// And back: dropped again.
	if err := os.WriteFile(e.Files.Config, good, 0o644); err != nil {
		t.Fatal(err)
	}
	rewriteConfig(t, e.Files.Config, func(c *config.Config) {
		rs := c.Steer.NetworkPolicy.Rules[:0]
		for _, r := range c.Steer.NetworkPolicy.Rules {
			if r.Name != rule {
				rs = append(rs, r)
			}
		}
		c.Steer.NetworkPolicy.Rules = rs
	})
	sighup()
	waitFor(t, 20*time.Second, "the first network policy in force again", func() (bool, string) {
		v := netVersion()
		return v == v1, v
	})
	if ok, err := passes(); ok || err != nil {
		t.Fatalf("8080 after the reload that removes the rule: passes=%v %v, want dropped", ok, err)
	}
}
