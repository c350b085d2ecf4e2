package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// TestNetworkPolicyFlowRecords (issue 15), both egress modes, with the
// demo's deny-by-default network policy (the proxy policy denies by
// default and the network policy follows it; only ping and the UDP echo
// are allowed by rule) and records shipped to the CloudWatch Logs fake:
//   - an allowed UDP exchange works and its flow record arrives with the
//     right packet and byte counts, endpoint and rule;
//   - TCP 8080 is refused (no answer at all, not even a reset) and the
//     attempt arrives as a flow_denied record naming the default rule.
func TestNetworkPolicyFlowRecords(t *testing.T) {
	for _, mode := range []string{steer.EgressNAT, steer.EgressTunnel} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, mode, nil, true)
			// UDP flows end 1 s after their last packet instead of 30 s,
			// so the record comes quickly.
			if err := e.Net.Topo.Appliance.Do(func() error {
				return os.WriteFile("/proc/sys/net/netfilter/nf_conntrack_udp_timeout", []byte("1\n"), 0o644)
			}); err != nil {
				t.Fatal(err)
			}
			ctx := testCtx(t, 3*time.Minute)
			ep := demo.EndpointOf(demo.EndpointA)

			msg := make([]byte, 100)
			for i := range msg {
				msg[i] = 'a' + byte(i%26)
			}
			got, err := e.Clients[0].UDP(ctx, netip.AddrPortFrom(demo.AddrEcho, demo.EchoPort), msg, 2*time.Second)
			if err != nil || string(got) != string(msg) {
				t.Fatalf("UDP echo: %q %v", got, err)
			}
			recs, err := e.Records.Wait(ctx, 1, func(r *demo.Record) bool {
				return r.RecordType == "flow" && r.Protocol == "udp" && r.DstIP == demo.AddrEcho.String() && r.DstPort == demo.EchoPort
			})
			if err != nil {
				t.Fatalf("flow record of the UDP exchange: %v", err)
			}
			r := recs[0]
			t.Logf("flow record: %s", r.Raw)
			// One datagram each way, 20 (IPv4) + 8 (UDP) + 100 bytes.
			if r.PacketsOut != 1 || r.BytesOut != 128 || r.PacketsIn != 1 || r.BytesIn != 128 {
				t.Errorf("counts out %d/%d in %d/%d, want 1/128 each way", r.PacketsOut, r.BytesOut, r.PacketsIn, r.BytesIn)
			}
			if r.EndpointID != ep || r.Rule != demo.NetRuleEcho || r.Action != "allow" || r.Field("start") == "" || r.Field("end") == "" {
				t.Errorf("record %s: want endpoint %s, rule %s, action allow, start and end", r.Raw, ep, demo.NetRuleEcho)
			}

			dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			c, err := e.Clients[0].Dial(dctx, "tcp4", netip.AddrPortFrom(demo.AddrEcho, 8080).String())
			cancel()
			if err == nil {
				c.Close()
				t.Fatal("TCP 8080 connected; the network policy should deny it")
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("TCP 8080: %v, want a timeout (dropped), not a reset", err)
			}
			recs, err = e.Records.Wait(ctx, 1, func(r *demo.Record) bool {
				return r.RecordType == "flow_denied" && r.Protocol == "tcp" && r.DstPort == 8080
			})
			if err != nil {
				t.Fatalf("flow_denied record of TCP 8080: %v", err)
			}
			d := recs[0]
			t.Logf("denied record: %s", d.Raw)
			if d.Action != "deny" || d.Rule != "default" || d.EndpointID != ep || d.DstIP != demo.AddrEcho.String() {
				t.Errorf("denied record %s: want deny by default from %s", d.Raw, ep)
			}

			// A burst of short flows: each ends in a flow record or is
			// counted in a flow_summary; the kernel's own count of new
			// flows the rule accepted (its nftables counter) is the
			// reference.
			before, err := e.SteerCounter(ctx, "np_"+demo.NetRuleEcho)
			if err != nil {
				t.Fatal(err)
			}
			const burst, basePort = 2000, 30000
			if err := e.Clients[0].NS.Do(func() error {
				dst := &net.UDPAddr{IP: demo.AddrEcho.AsSlice(), Port: demo.EchoPort}
				for i := range burst {
					c, err := net.DialUDP("udp4", &net.UDPAddr{Port: basePort + i}, dst)
					if err != nil {
						return err
					}
					c.Write([]byte("burst"))
					c.Close()
					if i%100 == 99 {
						time.Sleep(10 * time.Millisecond) // the simulated GWLB's tun queue is short
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			// The burst's packets are still crossing the simulated GWLB:
			// wait until the counter stops moving.
			var after float64
			for last := -1.0; ; last = after {
				time.Sleep(time.Second)
				if after, err = e.SteerCounter(ctx, "np_"+demo.NetRuleEcho); err != nil {
					t.Fatal(err)
				}
				if after == last {
					break
				}
			}
			ref := int(after - before)
			if ref < burst/2 || ref > burst {
				t.Fatalf("the rule accepted %d new flows of %d sent", ref, burst)
			}
			var recorded, summarised int
			waitFor(t, 2*time.Minute, "a record or a summary for every flow of the burst", func() (bool, string) {
				recorded, summarised = 0, 0
				for _, r := range e.Records.All() {
					switch {
					case r.RecordType == "flow" && r.Protocol == "udp" && r.DstPort == demo.EchoPort && r.ClientPort >= basePort && r.ClientPort < basePort+burst:
						recorded++
					case r.RecordType == "flow_summary":
						n, _ := strconv.Atoi(r.Field("flows"))
						summarised += n
					}
				}
				return recorded+summarised >= ref, fmt.Sprintf("%d recorded + %d summarised of %d", recorded, summarised, ref)
			})
			t.Logf("burst: %d flows accepted by the rule (nftables counter), %d flow records, %d summarised", ref, recorded, summarised)
			if recorded+summarised != ref {
				t.Errorf("%d recorded + %d summarised != %d accepted", recorded, summarised, ref)
			}
			checkAllRecords(t, e)
		})
	}
}
