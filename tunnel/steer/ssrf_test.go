//go:build linux

package steer

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/ssrf"
)

// TestDialUpstreamGuard: DialUpstream refuses what the proxy's SSRF guard
// refuses (one list, proxy/ssrf), before any socket or namespace is touched,
// with its own guard and with the proxy's check handed in by UseCheck. No
// root needed.
func TestDialUpstreamGuard(t *testing.T) {
	s, err := New(DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{
		"169.254.169.254:80", "127.0.0.1:443", "[::1]:443", "[fd00:ec2::254]:80",
		"[fe80::1]:80", "0.0.0.0:80", "224.0.0.1:80", "100.64.0.1:443",
		"[::ffff:169.254.169.254]:80", "[64:ff9b::a9fe:a9fe]:80", "[2002:a9fe:a9fe::1]:80",
	} {
		_, err := s.DialUpstream(context.Background(), nil, netip.MustParseAddrPort(d))
		if !errors.Is(err, ErrForbiddenDestination) {
			t.Errorf("own guard: DialUpstream(%s) = %v, want ErrForbiddenDestination", d, err)
		}
	}

	self := netip.MustParseAddr("198.18.7.7")
	cfg := ssrf.DefaultConfig()
	cfg.DenyCIDRs = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/28")}
	g, err := ssrf.New(cfg, func() ([]netip.Addr, error) { return []netip.Addr{self}, nil })
	if err != nil {
		t.Fatal(err)
	}
	s.UseCheck(g.Check)
	for d, why := range map[string]string{
		"198.18.7.7:443":     "appliance-address",
		"203.0.113.9:80":     "configured-deny",
		"169.254.169.254:80": "link-local",
	} {
		_, err := s.DialUpstream(context.Background(), nil, netip.MustParseAddrPort(d))
		if !errors.Is(err, ErrForbiddenDestination) || !strings.Contains(err.Error(), why) {
			t.Errorf("shared guard: DialUpstream(%s) = %v, want ErrForbiddenDestination (%s)", d, err, why)
		}
	}
}

// TestForwardGuardFromSSRFList: the nftables forward guard drops exactly
// the host-local ranges of the SSRF list (no copy of it in steer).
func TestForwardGuardFromSSRFList(t *testing.T) {
	cfg := DefaultConfig()
	cfg.IPv6 = true
	s, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rs := s.buildRuleset("eth0")
	var got []string
	for _, r := range rs.rules {
		if strings.Contains(r.text, "counter name "+ctrGuardDropped) {
			got = append(got, r.text)
		}
	}
	want := ssrf.HostLocal()
	if len(got) != len(want) {
		t.Fatalf("guard rules %q, want one per %v", got, want)
	}
	for i, p := range want {
		if !strings.Contains(got[i], "daddr "+p.String()+" ") {
			t.Errorf("guard rule %d = %q, want daddr %s", i, got[i], p)
		}
	}
}

// TestForwardGuardIPv4Only: without ipv6 the forward guard keeps only the
// IPv4 host-local ranges of the SSRF list.
func TestForwardGuardIPv4Only(t *testing.T) {
	cfg := DefaultConfig()
	cfg.IPv6 = false
	s, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got int
	for _, r := range s.buildRuleset("eth0").rules {
		if strings.Contains(r.text, "counter name "+ctrGuardDropped) {
			if strings.Contains(r.text, "ip6 ") {
				t.Errorf("IPv6 guard rule without ipv6: %q", r.text)
			}
			got++
		}
	}
	want := 0
	for _, p := range ssrf.HostLocal() {
		if p.Addr().Is4() {
			want++
		}
	}
	if got != want || want == 0 {
		t.Fatalf("%d guard rules, want %d (the IPv4 host-local ranges)", got, want)
	}
}
