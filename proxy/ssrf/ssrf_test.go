package ssrf

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	self := []netip.Addr{netip.MustParseAddr("10.0.5.9"), netip.MustParseAddr("2600:1f18::9")}
	cfg := DefaultConfig()
	cfg.DenyCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	g, err := New(cfg, func() ([]netip.Addr, error) { return self, nil })
	if err != nil {
		t.Fatal(err)
	}
	denied := map[string]string{
		"169.254.169.254":        "link-local",
		"169.254.170.2":          "link-local",
		"169.254.0.1":            "link-local",
		"fd00:ec2::254":          "aws-instance-services",
		"fd00:ec2::23":           "aws-instance-services",
		"fe80::1":                "link-local",
		"fe80::1%eth0":           "link-local",
		"127.0.0.1":              "loopback",
		"127.1.2.3":              "loopback",
		"::1":                    "loopback",
		"0.0.0.0":                "unspecified",
		"0.1.2.3":                "unspecified",
		"::":                     "unspecified",
		"10.0.5.9":               "appliance-address",
		"2600:1f18::9":           "appliance-address",
		"100.64.0.1":             "cgnat",
		"100.127.255.254":        "cgnat",
		"::ffff:169.254.169.254": "ipv4-mapped:link-local",
		"::ffff:a9fe:a9fe":       "ipv4-mapped:link-local",
		"::ffff:127.0.0.1":       "ipv4-mapped:loopback",
		"::ffff:10.0.5.9":        "ipv4-mapped:appliance-address",
		"::169.254.169.254":      "ipv4-compatible:link-local",
		// RFC 2765 IPv4-translated form ::ffff:0:a.b.c.d.
		"::ffff:0:169.254.169.254": "ipv4-translated:link-local",
		"::ffff:0:a9fe:a9fe":       "ipv4-translated:link-local",
		"::ffff:0:127.0.0.1":       "ipv4-translated:loopback",
		"::ffff:0:10.0.5.9":        "ipv4-translated:appliance-address",
		"::ffff:0:100.64.0.1":      "ipv4-translated:cgnat",
		"64:ff9b::a9fe:a9fe":       "nat64:link-local",
		"64:ff9b::169.254.169.254": "nat64:link-local",
		"64:ff9b::7f00:1":          "nat64:loopback",
		"64:ff9b::6440:1":          "nat64:cgnat",
		"64:ff9b:1::a9fe:a9fe":     "nat64-local-use",
		"2002:a9fe:a9fe::1":        "6to4:link-local",
		"2002:7f00:1::":            "6to4:loopback",
		"2001:0:a9fe:a9fe::1":      "teredo-server:link-local",
		"224.0.0.1":                "multicast",
		"ff02::1":                  "multicast",
		"255.255.255.255":          "reserved",
		"192.0.2.7":                "configured-deny",
		"::ffff:192.0.2.7":         "ipv4-mapped:configured-deny",
	}
	// Teredo stores the client address inverted in the last 32 bits.
	b := netip.MustParseAddr("2001:0:4136:e378:8000:63bf::").As16()
	v := netip.MustParseAddr("169.254.169.254").As4()
	for i := range v {
		b[12+i] = ^v[i]
	}
	denied[netip.AddrFrom16(b).String()] = "teredo-client:link-local"

	for s, want := range denied {
		a := netip.MustParseAddr(s)
		if got := g.Check(a); got != want {
			t.Errorf("Check(%s) = %q want %q", s, got, want)
		}
	}
	for _, s := range []string{"203.0.113.10", "198.18.0.1", "10.0.5.10", "8.8.8.8", "2600:1f18::10", "64:ff9b::808:808",
		"2002:808:808::1", "2001:0:4136:e378:8000:63bf:f7f7:f7f7", "100.128.0.1", "::ffff:0:808:808"} {
		if got := g.Check(netip.MustParseAddr(s)); got != "" {
			t.Errorf("Check(%s) = %q, want allowed", s, got)
		}
	}
	if g.Check(netip.Addr{}) == "" {
		t.Error("invalid address allowed")
	}
}

func TestAllowCGNATAndRefresh(t *testing.T) {
	addrs := []netip.Addr{netip.MustParseAddr("10.9.9.9")}
	cfg := DefaultConfig()
	cfg.AllowCGNAT = true
	g, err := New(cfg, func() ([]netip.Addr, error) { return addrs, nil })
	if err != nil {
		t.Fatal(err)
	}
	if r := g.Check(netip.MustParseAddr("100.64.1.1")); r != "" {
		t.Fatalf("cgnat with allow_cgnat: %q", r)
	}
	if g.Check(netip.MustParseAddr("10.9.9.10")) != "" {
		t.Fatal("not self yet")
	}
	addrs = append(addrs, netip.MustParseAddr("10.9.9.10"))
	g.Refresh()
	if r := g.Check(netip.MustParseAddr("10.9.9.10")); !strings.Contains(r, "appliance") {
		t.Fatalf("after refresh: %q", r)
	}
	if _, err := InterfaceAddrs(); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	c := DefaultConfig()
	c.SelfRefresh = 0
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "self_refresh:") {
		t.Fatal(err)
	}
}

// TestHostLocal pins the subset tunnel/steer drops in nftables for
// forwarded traffic, and that every one of them is also refused by Check.
func TestHostLocal(t *testing.T) {
	want := []string{"0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "::1/128", "fe80::/10", "fd00:ec2::/32"}
	got := HostLocal()
	if len(got) != len(want) {
		t.Fatalf("HostLocal() = %v, want %v", got, want)
	}
	g, err := New(DefaultConfig(), func() ([]netip.Addr, error) { return nil, nil })
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		if got[i].String() != w {
			t.Errorf("HostLocal()[%d] = %v, want %s", i, got[i], w)
		}
		if why := g.Check(got[i].Addr()); why == "" {
			t.Errorf("Check(%v) allowed a host-local address", got[i].Addr())
		}
	}
	got[0] = netip.Prefix{} // the caller's copy: the next call is unaffected
	if HostLocal()[0].String() != want[0] {
		t.Error("HostLocal shares its backing array")
	}
}
