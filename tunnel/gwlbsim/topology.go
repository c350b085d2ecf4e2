//go:build linux

package gwlbsim

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Fixed addressing. Every namespace is private to one Topology, so these
// repeat across topologies and, inside one topology, across endpoints:
// every VPC has the same client and server addresses, which is how the
// simulator proves that overlapping VPC address space is kept apart.
var (
	// Underlay between the GWLB namespace and the appliance.
	GWLBAddr      = netip.MustParseAddr("198.18.0.1")
	ApplianceAddr = netip.MustParseAddr("198.18.0.2")
	// ForeignAddr is a second address in the GWLB namespace that is not
	// the GWLB: GENEVE from it must be refused by the appliance.
	ForeignAddr = netip.MustParseAddr("198.18.0.66")
	underlayNet = netip.MustParsePrefix("198.18.0.0/24")

	// Plain forwarding (no tunnel) for the baseline benchmark: the GWLB
	// namespace routes PlainDst via the appliance, which routes it to the
	// sink namespace.
	PlainDst      = netip.MustParsePrefix("198.19.128.0/24")
	applianceSink = netip.MustParseAddr("198.18.2.1")
	sinkAddr      = netip.MustParseAddr("198.18.2.2")
	sinkNet       = netip.MustParsePrefix("198.18.2.0/24")

	// Inside every VPC.
	ClientAddr   = netip.MustParseAddr("198.19.0.10")
	vpcClientGW  = netip.MustParseAddr("198.19.0.1")
	clientNet    = netip.MustParsePrefix("198.19.0.0/24")
	ServerAddr   = netip.MustParseAddr("203.0.113.10")
	vpcUplinkGW  = netip.MustParseAddr("203.0.113.1")
	serverNet    = netip.MustParsePrefix("203.0.113.0/24")
	tunnelTable  = 100
	underlayMTU  = 9001
	innerMTU     = 8500
	tunName      = "gwlb0"
	underlayLink = "u0"
)

// EndpointConfig describes one simulated GWLB endpoint.
type EndpointConfig struct {
	ID           uint64
	AttachmentID uint64
}

// TopologyConfig configures NewTopology.
type TopologyConfig struct {
	// Prefix starts every namespace name; a random suffix is added.
	Prefix    string
	Endpoints []EndpointConfig
	// ExtraAppliances adds that many more appliance namespaces behind the
	// GWLB, each on its own underlay link (see ExtraApplianceAddr), for
	// simulations with several targets.
	ExtraAppliances int
}

// ExtraApplianceAddr is the underlay address of extra appliance i (from
// 0): 198.18.(16+i).2, on a link to the GWLB namespace, which has
// 198.18.(16+i).1 there. GENEVE comes from GWLBAddr as for the first
// appliance; the extra appliance routes GWLBAddr's subnet back over its
// link.
func ExtraApplianceAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(16 + i), 2})
}

// ExtraAppliance is one more appliance namespace behind the GWLB.
type ExtraAppliance struct {
	NS   *NS
	Addr netip.Addr // ExtraApplianceAddr(i), on its "u0"
}

// Endpoint is one simulated GWLB endpoint: a VPC namespace whose traffic
// between Client and Server is steered through GWLB (the simulator's tun).
type Endpoint struct {
	EndpointConfig
	// VPC holds the endpoint's route tables and the simulator's tun.
	VPC *NS
	// Client holds ClientAddr; Server (the "internet") holds ServerAddr.
	Client, Server *NS
}

// Topology is the set of namespaces the simulator and benchmark run in:
//
//	client_i --c0-- vpc_i [tun gwlb0] --i0-- server_i     (one per endpoint)
//	gwlb --u0-- appliance --s0-- sink
//
// The appliance under test runs in Appliance (ip netns exec <name>) and
// receives GENEVE on ApplianceAddr:6081 from GWLBAddr.
type Topology struct {
	GWLB, Appliance, Sink *NS
	Endpoints             []*Endpoint
	// Extra are the TopologyConfig.ExtraAppliances.
	Extra []*ExtraAppliance
	all   []*NS
}

// NewTopology creates the namespaces and links. Callers must Close it.
func NewTopology(cfg TopologyConfig) (_ *Topology, err error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "gs"
	}
	base := cfg.Prefix + inns.RandSuffix() + "-"
	t := &Topology{}
	defer func() {
		if err != nil {
			_ = t.Close()
		}
	}()
	mk := func(name string) (*NS, error) {
		n, err := inns.New(base + name)
		if err == nil {
			t.all = append(t.all, n)
		}
		return n, err
	}
	if t.GWLB, err = mk("gwlb"); err != nil {
		return nil, err
	}
	if t.Appliance, err = mk("app"); err != nil {
		return nil, err
	}
	if t.Sink, err = mk("sink"); err != nil {
		return nil, err
	}
	if err = link(t.GWLB, underlayLink, t.Appliance, underlayLink, underlayMTU,
		[]netip.Addr{GWLBAddr, ForeignAddr}, []netip.Addr{ApplianceAddr}, underlayNet); err != nil {
		return nil, err
	}
	if err = link(t.Appliance, "s0", t.Sink, "s0", underlayMTU,
		[]netip.Addr{applianceSink}, []netip.Addr{sinkAddr}, sinkNet); err != nil {
		return nil, err
	}
	if err = t.Appliance.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return nil, err
	}
	// Baseline path: GWLB ns -> appliance -> sink, delivered locally there.
	if err = addRoute(t.GWLB, PlainDst, ApplianceAddr, 0); err != nil {
		return nil, err
	}
	if err = addRoute(t.Appliance, PlainDst, sinkAddr, 0); err != nil {
		return nil, err
	}
	if err = addLocalRoute(t.Sink, PlainDst); err != nil {
		return nil, err
	}
	if cfg.ExtraAppliances > 200 {
		return nil, fmt.Errorf("gwlbsim: %d extra appliances: at most 200", cfg.ExtraAppliances)
	}
	for i := range cfg.ExtraAppliances {
		x := &ExtraAppliance{Addr: ExtraApplianceAddr(i)}
		if x.NS, err = mk(fmt.Sprintf("app%d", i+2)); err != nil {
			return nil, err
		}
		gwSide := netip.AddrFrom4([4]byte{198, 18, byte(16 + i), 1})
		if err = link(t.GWLB, fmt.Sprintf("u%d", i+1), x.NS, underlayLink, underlayMTU,
			[]netip.Addr{gwSide}, []netip.Addr{x.Addr}, netip.PrefixFrom(gwSide, 24)); err != nil {
			return nil, err
		}
		if err = addRoute(x.NS, underlayNet, gwSide, 0); err != nil {
			return nil, err
		}
		if err = x.NS.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
			return nil, err
		}
		t.Extra = append(t.Extra, x)
	}
	for i, ec := range cfg.Endpoints {
		ep := &Endpoint{EndpointConfig: ec}
		if ep.VPC, err = mk(fmt.Sprintf("vpc%d", i)); err != nil {
			return nil, err
		}
		if ep.Client, err = mk(fmt.Sprintf("cli%d", i)); err != nil {
			return nil, err
		}
		if ep.Server, err = mk(fmt.Sprintf("srv%d", i)); err != nil {
			return nil, err
		}
		if err = setupVPC(ep); err != nil {
			return nil, err
		}
		t.Endpoints = append(t.Endpoints, ep)
	}
	return t, nil
}

func setupVPC(ep *Endpoint) error {
	if err := link(ep.VPC, "c0", ep.Client, "c0", innerMTU,
		[]netip.Addr{vpcClientGW}, []netip.Addr{ClientAddr}, clientNet); err != nil {
		return err
	}
	if err := link(ep.VPC, "i0", ep.Server, "i0", innerMTU,
		[]netip.Addr{vpcUplinkGW}, []netip.Addr{ServerAddr}, serverNet); err != nil {
		return err
	}
	if err := addRoute(ep.Client, netip.Prefix{}, vpcClientGW, 0); err != nil {
		return err
	}
	if err := addRoute(ep.Server, clientNet, vpcUplinkGW, 0); err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/default/rp_filter", "0"},
		{"net/ipv4/conf/all/send_redirects", "0"},
		// The VPCs are IPv4; without this the tun's own router
		// solicitations would be sent through GWLB.
		{"net/ipv6/conf/all/disable_ipv6", "1"},
		{"net/ipv6/conf/default/disable_ipv6", "1"},
	} {
		if err := ep.VPC.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	// Anything beyond the server subnet also goes to the server namespace
	// (the "internet").
	return addRoute(ep.VPC, netip.Prefix{}, ServerAddr, 0)
}

// steerVPC installs the policy routing that hands traffic from the client
// and uplink sides to GWLB (the tun at index tunIdx), while packets GWLB
// writes back into the tun are routed by the main table.
func steerVPC(ep *Endpoint, tunIdx int) error {
	nl := ep.VPC.Netlink()
	for _, r := range []struct {
		prio  int
		iif   string
		table int
	}{
		{50, tunName, unix.RT_TABLE_MAIN},
		{100, "c0", tunnelTable},
		{101, "i0", tunnelTable},
	} {
		rule := netlink.NewRule()
		rule.Priority, rule.IifName, rule.Table, rule.Family = r.prio, r.iif, r.table, unix.AF_INET
		if err := nl.RuleAdd(rule); err != nil {
			return fmt.Errorf("netns %s: rule iif %s: %w", ep.VPC.Name, r.iif, err)
		}
	}
	return addRoute(ep.VPC, netip.Prefix{}, netip.Addr{}, tunIdx, tunnelTable)
}

// link creates a veth pair a/an <-> b/bn with the given addresses.
func link(a *NS, an string, b *NS, bn string, mtu int, aAddrs, bAddrs []netip.Addr, pfx netip.Prefix) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: an, MTU: mtu},
		PeerName:      bn,
		PeerNamespace: netlink.NsFd(int(b.Handle())),
		PeerMTU:       uint32(mtu),
	}
	if err := a.Netlink().LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s - %s/%s: %w", a.Name, an, b.Name, bn, err)
	}
	for _, side := range []struct {
		ns    *NS
		name  string
		addrs []netip.Addr
	}{{a, an, aAddrs}, {b, bn, bAddrs}} {
		l, err := side.ns.Netlink().LinkByName(side.name)
		if err != nil {
			return fmt.Errorf("netns %s: %s: %w", side.ns.Name, side.name, err)
		}
		for _, ad := range side.addrs {
			ipn := &net.IPNet{IP: ad.AsSlice(), Mask: net.CIDRMask(pfx.Bits(), ad.BitLen())}
			if err := side.ns.Netlink().AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
				return fmt.Errorf("netns %s: %s addr %s: %w", side.ns.Name, side.name, ad, err)
			}
		}
		if err := side.ns.Netlink().LinkSetUp(l); err != nil {
			return fmt.Errorf("netns %s: %s up: %w", side.ns.Name, side.name, err)
		}
	}
	return nil
}

// addRoute adds dst (zero Prefix = default) via gw or out link index oif,
// in table (main if omitted).
func addRoute(n *NS, dst netip.Prefix, gw netip.Addr, oif int, table ...int) error {
	if !dst.IsValid() {
		dst = netip.MustParsePrefix("0.0.0.0/0")
	}
	r := &netlink.Route{
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
		LinkIndex: oif,
	}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	if len(table) > 0 {
		r.Table = table[0]
	}
	if err := n.Netlink().RouteAdd(r); err != nil {
		return fmt.Errorf("netns %s: route %s: %w", n.Name, dst, err)
	}
	return nil
}

func addLocalRoute(n *NS, dst netip.Prefix) error {
	lo, err := n.Netlink().LinkByName("lo")
	if err != nil {
		return fmt.Errorf("netns %s: lo: %w", n.Name, err)
	}
	r := &netlink.Route{
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
		LinkIndex: lo.Attrs().Index,
		Type:      unix.RTN_LOCAL,
		Table:     unix.RT_TABLE_LOCAL,
		Scope:     netlink.SCOPE_HOST,
	}
	if err := n.Netlink().RouteAdd(r); err != nil {
		return fmt.Errorf("netns %s: local route %s: %w", n.Name, dst, err)
	}
	return nil
}

// Close deletes every namespace (and with them all links and tuns).
func (t *Topology) Close() error {
	var errs []error
	for i := len(t.all) - 1; i >= 0; i-- {
		errs = append(errs, t.all[i].Close())
	}
	t.all = nil
	return errors.Join(errs...)
}
