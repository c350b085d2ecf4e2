// Package ssrf classifies destination addresses the proxy must never dial on
// a client's behalf: the instance metadata service, link-local and loopback
// ranges, the appliance's own addresses, and every IPv6 wrapping of those
// (IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64, 6to4, Teredo).
//
// The guard is always on; configuration can only add prefixes. The check is
// made on the exact address that is then dialed (the original destination),
// never on a name.
//
// This package is the one owner of that list and of the refresh of the
// appliance's own addresses: the proxy checks with a Guard before it dials,
// tunnel/steer's DialUpstream checks with the same Guard (the composition
// root builds one and hands it to both), and steer's nftables forward guard
// drops HostLocal, a subset of the same table. It imports nothing of the
// project, so both sides can import it without a cycle.
package ssrf

import (
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// builtin lists the always-denied ranges and why. hostLocal marks the
// ranges that only ever mean "this machine" (its loopback, its link, the
// instance services AWS offers on it): forwarded tunnel traffic to them is
// dropped too (see HostLocal). The others (multicast, reserved, NAT64
// local-use) are refused as proxy destinations only.
var builtin = []struct {
	p         netip.Prefix
	reason    string
	hostLocal bool
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified", true},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback", true},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local", true},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast", false},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved", false},
	{netip.MustParsePrefix("::/128"), "unspecified", false},
	{netip.MustParsePrefix("::1/128"), "loopback", true},
	{netip.MustParsePrefix("fe80::/10"), "link-local", true},
	{netip.MustParsePrefix("ff00::/8"), "multicast", false},
	// AWS instance services over IPv6 (IMDS fd00:ec2::254, DNS ::253,
	// NTP ::123): nothing a client should reach through the proxy.
	{netip.MustParsePrefix("fd00:ec2::/32"), "aws-instance-services", true},
	// RFC 8215 local-use NAT64: the embedded IPv4 position depends on the
	// operator's prefix length, so the whole range is denied.
	{netip.MustParsePrefix("64:ff9b:1::/48"), "nat64-local-use", false},
}

// HostLocal returns the built-in ranges that only ever address this
// machine or its link: 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16 (IMDS, VPC
// DNS and time servers), ::1, fe80::/10 and fd00:ec2::/32. tunnel/steer
// drops forwarded tunnel traffic to them in nftables. The slice is fresh;
// callers may keep it.
func HostLocal() []netip.Prefix {
	var out []netip.Prefix
	for _, b := range builtin {
		if b.hostLocal {
			out = append(out, b.p)
		}
	}
	return out
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
	teredo    = netip.MustParsePrefix("2001::/32")
	v4compat  = netip.MustParsePrefix("::/96")
	// RFC 2765 (SIIT) IPv4-translated addresses, ::ffff:0:a.b.c.d: not
	// IPv4-mapped (::ffff:a.b.c.d), but a translator delivers them to
	// a.b.c.d all the same.
	v4translated = netip.MustParsePrefix("::ffff:0:0:0/96")
)

// Config is the ssrf section of the proxy configuration.
type Config struct {
	// DenyCIDRs are denied in addition to the built-in ranges.
	DenyCIDRs []netip.Prefix `yaml:"deny_cidrs,omitempty"`
	// AllowCGNAT lets 100.64.0.0/10 through (some VPCs use it for real
	// workloads). Default false: denied, as smokescreen does.
	AllowCGNAT bool `yaml:"allow_cgnat"`
	// SelfRefresh is how often the appliance's own addresses are re-read.
	SelfRefresh time.Duration `yaml:"self_refresh"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{SelfRefresh: 30 * time.Second} }

// Validate checks c.
func (c *Config) Validate() error {
	for i, p := range c.DenyCIDRs {
		if !p.IsValid() {
			return fmt.Errorf("deny_cidrs[%d]: invalid prefix", i)
		}
	}
	if c.SelfRefresh < time.Second {
		return fmt.Errorf("self_refresh: %v below 1s", c.SelfRefresh)
	}
	return nil
}

// Guard is safe for concurrent use.
type Guard struct {
	cfg   Config
	self  atomic.Pointer[[]netip.Addr]
	addrs func() ([]netip.Addr, error)
}

// InterfaceAddrs lists this host's addresses via net.InterfaceAddrs.
func InterfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("interface addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if pn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(pn.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// New builds a guard. selfAddrs lists the appliance's own addresses; nil
// means InterfaceAddrs. It is called now and by Refresh.
func New(cfg Config, selfAddrs func() ([]netip.Addr, error)) (*Guard, error) {
	if selfAddrs == nil {
		selfAddrs = InterfaceAddrs
	}
	g := &Guard{cfg: cfg, addrs: selfAddrs}
	if err := g.Refresh(); err != nil {
		return nil, err
	}
	return g, nil
}

// Refresh re-reads the appliance's own addresses. On error the previous
// list is kept.
func (g *Guard) Refresh() error {
	as, err := g.addrs()
	if err != nil {
		return err
	}
	g.self.Store(&as)
	return nil
}

// Self returns the current own-address list.
func (g *Guard) Self() []netip.Addr {
	if p := g.self.Load(); p != nil {
		return *p
	}
	return nil
}

// Check returns a non-empty reason when a must not be dialed.
func (g *Guard) Check(a netip.Addr) string {
	if !a.IsValid() {
		return "invalid-address"
	}
	a = a.WithZone("")
	if r := g.check1(a); r != "" {
		return r
	}
	if a.Is6() && !a.Is4In6() {
		for _, emb := range embeddedV4(a) {
			if r := g.check1(emb.addr); r != "" {
				return emb.form + ":" + r
			}
		}
	}
	return ""
}

type embedded struct {
	form string
	addr netip.Addr
}

// embeddedV4 returns the IPv4 addresses an IPv6 address may carry.
func embeddedV4(a netip.Addr) []embedded {
	b := a.As16()
	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{b[i], b[i+1], b[i+2], b[i+3]}) }
	switch {
	case nat64.Contains(a):
		return []embedded{{"nat64", v4(12)}}
	case sixToFour.Contains(a):
		return []embedded{{"6to4", v4(2)}}
	case teredo.Contains(a):
		client := netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]})
		return []embedded{{"teredo-server", v4(4)}, {"teredo-client", client}}
	case v4compat.Contains(a):
		return []embedded{{"ipv4-compatible", v4(12)}}
	case v4translated.Contains(a):
		return []embedded{{"ipv4-translated", v4(12)}}
	}
	return nil
}

func (g *Guard) check1(a netip.Addr) string {
	if a.Is4In6() {
		if r := g.check1(a.Unmap()); r != "" {
			return "ipv4-mapped:" + r
		}
		return ""
	}
	for _, b := range builtin {
		if b.p.Contains(a) {
			return b.reason
		}
	}
	if a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return "broadcast"
	}
	if !g.cfg.AllowCGNAT && cgnat.Contains(a) {
		return "cgnat"
	}
	for _, p := range g.cfg.DenyCIDRs {
		if p.Contains(a) {
			return "configured-deny"
		}
	}
	for _, s := range g.Self() {
		if s == a {
			return "appliance-address"
		}
	}
	return ""
}
