package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/proxy/resolve/dnstest"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// Egress link between the appliance and the internet namespace (nat mode).
var (
	EgressAddr   = netip.MustParseAddr("198.18.3.1") // appliance side, eg0
	InternetAddr = netip.MustParseAddr("198.18.3.2") // internet side, eg0
	egressNet    = netip.MustParsePrefix("198.18.3.0/24")
)

// EgressInterface is the appliance's egress veth in nat mode.
const EgressInterface = "eg0"

// Endpoint ids of the two simulated GWLB endpoints (VPC A and VPC B).
const (
	EndpointA uint64 = 0x0d3a0000000000a1
	EndpointB uint64 = 0x0d3a0000000000b2
)

// Network is the namespaces, the GWLB simulator and the internet servers.
type Network struct {
	Mode     string // steer.EgressNAT or steer.EgressTunnel
	Topo     *gwlbsim.Topology
	Sim      *gwlbsim.Sim
	Internet *Internet
	// Inet is the internet namespace in nat mode; nil in tunnel mode, where
	// each endpoint's server namespace is its internet.
	Inet *inns.NS
	// DNS is the appliance's resolver (the VPC resolver's stand-in) on
	// ResolverAddr:53 in the GWLB namespace, answering Names; destination
	// binding asks it. Tests change its answers or silence it.
	DNS *dnstest.Server

	inetName string
	cancel   context.CancelFunc
}

// NewNetworkSim builds the topology for mode (steer.EgressNAT or
// steer.EgressTunnel); prefix starts every namespace name (a random suffix
// follows) and callers must Close it. The GWLB simulator is configured by sim
// (health checks of the appliances, for one) and extra more appliance
// namespaces behind the GWLB (Topo.Extra), wired like the first: in nat
// mode each has its own egress link to the internet namespace, in tunnel
// mode a default route to the GWLB namespace. With extra appliances and
// no sim.Targets, every appliance is a target.
func NewNetworkSim(ctx context.Context, mode, prefix string, sim gwlbsim.Config, extra int) (_ *Network, err error) {
	if mode != steer.EgressNAT && mode != steer.EgressTunnel {
		return nil, fmt.Errorf("egress mode %q is not nat or tunnel", mode)
	}
	n := &Network{Mode: mode}
	defer func() {
		if err != nil {
			_ = n.Close()
		}
	}()
	if n.Internet, err = NewInternet(); err != nil {
		return nil, fmt.Errorf("internet CA: %w", err)
	}
	n.Topo, err = gwlbsim.NewTopology(gwlbsim.TopologyConfig{Prefix: prefix, ExtraAppliances: extra, Endpoints: []gwlbsim.EndpointConfig{
		{ID: EndpointA, AttachmentID: 0xa},
		{ID: EndpointB, AttachmentID: 0xb},
	}})
	if err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	if err = n.startDNS(); err != nil {
		return nil, err
	}
	if mode == steer.EgressNAT {
		if err = n.addInternet(); err != nil {
			return nil, err
		}
		if err = n.Internet.Serve(n.Inet, n.Inet.Name); err != nil {
			return nil, err
		}
	} else {
		// An EC2 instance always has a default route (the VPC router);
		// the GWLB namespace stands in for it. Steering does not rely on
		// it (the listeners' SO_MARK routes SYN-ACKs by the tunnel's
		// table; tunnel/steer/noroute_test.go runs without one), but the
		// demo's topology should look like the instance it imitates.
		r := &netlink.Route{
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			Gw:  gwlbsim.GWLBAddr.AsSlice(),
		}
		if err = n.Topo.Appliance.Netlink().RouteAdd(r); err != nil {
			return nil, fmt.Errorf("netns %s: default route: %w", n.Topo.Appliance.Name, err)
		}
		for _, ep := range n.Topo.Endpoints {
			if err = addAddrs(ep.Server, ep.Server.Name, "i0", 24, internetAddrs); err != nil {
				return nil, err
			}
			if err = addAddrs(ep.Server, ep.Server.Name, "lo", 32, []netip.Addr{AddrIMDS}); err != nil {
				return nil, err
			}
			if err = n.Internet.Serve(ep.Server, ep.Server.Name); err != nil {
				return nil, err
			}
		}
	}
	setTargets := len(sim.Targets) == 0 && len(n.Topo.Extra) > 0
	if setTargets {
		sim.Targets = []netip.Addr{gwlbsim.ApplianceAddr}
	}
	for i, x := range n.Topo.Extra {
		if err = n.wireExtra(i, x); err != nil {
			return nil, err
		}
		if setTargets {
			sim.Targets = append(sim.Targets, x.Addr)
		}
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n.cancel = cancel
	if n.Sim, err = gwlbsim.Start(sctx, n.Topo, sim); err != nil {
		return nil, fmt.Errorf("gwlb simulator: %w", err)
	}
	return n, nil
}

// Namespaces lists every namespace's name.
func (n *Network) Namespaces() []string {
	var names []string
	if n.Topo != nil {
		names = append(names, n.Topo.GWLB.Name, n.Topo.Appliance.Name, n.Topo.Sink.Name)
		for _, x := range n.Topo.Extra {
			names = append(names, x.NS.Name)
		}
		for _, ep := range n.Topo.Endpoints {
			names = append(names, ep.VPC.Name, ep.Client.Name, ep.Server.Name)
		}
	}
	if n.Inet != nil {
		names = append(names, n.Inet.Name)
	}
	return names
}

// addInternet creates the internet namespace beside the topology's (its
// name shares the topology's random prefix) and links it to the appliance:
// eg0 198.18.3.1 <-> eg0 198.18.3.2, internet addresses on its lo, and the
// appliance's default route through it.
func (n *Network) addInternet() error {
	app := n.Topo.Appliance
	name := app.Name[:len(app.Name)-len("app")] + "inet"
	inet, err := inns.New(name)
	if err != nil {
		return err
	}
	n.Inet = inet
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: EgressInterface, MTU: 9001},
		PeerName:      EgressInterface,
		PeerNamespace: netlink.NsFd(int(inet.Handle())),
		PeerMTU:       9001,
	}
	if err := app.Netlink().LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s: %w", EgressInterface, err)
	}
	if err := addAddrs(app, app.Name, EgressInterface, egressNet.Bits(), []netip.Addr{EgressAddr}); err != nil {
		return err
	}
	if err := addAddrs(inet, inet.Name, EgressInterface, egressNet.Bits(), []netip.Addr{InternetAddr}); err != nil {
		return err
	}
	if err := addAddrs(inet, inet.Name, "lo", 32, append([]netip.Addr{AddrIMDS}, internetAddrs...)); err != nil {
		return err
	}
	r := &netlink.Route{
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:  InternetAddr.AsSlice(),
	}
	if err := app.Netlink().RouteAdd(r); err != nil {
		return fmt.Errorf("netns %s: default route: %w", app.Name, err)
	}
	return nil
}

// ExtraEgressAddr is extra appliance i's address on its egress link to
// the internet namespace in nat mode (198.18.(32+i).1; the internet side
// has .2).
func ExtraEgressAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(32 + i), 1}) }

// wireExtra gives extra appliance i what the first one has: in nat mode
// an egress veth eg0 to the internet namespace (eg<i+1> there) and a
// default route through it; in tunnel mode a default route to the GWLB.
func (n *Network) wireExtra(i int, x *gwlbsim.ExtraAppliance) error {
	var gw netip.Addr
	if n.Mode == steer.EgressNAT {
		inetSide := netip.AddrFrom4([4]byte{198, 18, byte(32 + i), 2})
		peer := fmt.Sprintf("eg%d", i+1)
		v := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: EgressInterface, MTU: 9001},
			PeerName:      peer,
			PeerNamespace: netlink.NsFd(int(n.Inet.Handle())),
			PeerMTU:       9001,
		}
		if err := x.NS.Netlink().LinkAdd(v); err != nil {
			return fmt.Errorf("netns %s: veth %s: %w", x.NS.Name, EgressInterface, err)
		}
		if err := addAddrs(x.NS, x.NS.Name, EgressInterface, 24, []netip.Addr{ExtraEgressAddr(i)}); err != nil {
			return err
		}
		if err := addAddrs(n.Inet, n.Inet.Name, peer, 24, []netip.Addr{inetSide}); err != nil {
			return err
		}
		gw = inetSide
	} else {
		gw = netip.AddrFrom4([4]byte{198, 18, byte(16 + i), 1}) // the GWLB namespace's side of its underlay
	}
	r := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: gw.AsSlice()}
	if err := x.NS.Netlink().RouteAdd(r); err != nil {
		return fmt.Errorf("netns %s: default route: %w", x.NS.Name, err)
	}
	return nil
}

// addAddrs adds addresses with prefix length bits to link and sets it up.
func addAddrs(ns *inns.NS, name, link string, bits int, addrs []netip.Addr) error {
	nl := ns.Netlink()
	l, err := nl.LinkByName(link)
	if err != nil {
		return fmt.Errorf("netns %s: %s: %w", name, link, err)
	}
	for _, a := range addrs {
		ipn := &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}
		if err := nl.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("netns %s: %s addr %s: %w", name, link, a, err)
		}
	}
	if err := nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("netns %s: %s up: %w", name, link, err)
	}
	return nil
}

// Close stops the simulator and servers and deletes every namespace.
func (n *Network) Close() error {
	var errs []error
	if n.cancel != nil {
		n.cancel()
	}
	if n.Sim != nil {
		errs = append(errs, n.Sim.Close())
	}
	if n.Internet != nil {
		errs = append(errs, n.Internet.Close())
	}
	if n.DNS != nil {
		errs = append(errs, n.DNS.Close())
		n.DNS = nil
	}
	if n.Inet != nil {
		errs = append(errs, n.Inet.Close())
		n.Inet = nil
	}
	if n.Topo != nil {
		errs = append(errs, n.Topo.Close())
		n.Topo = nil
	}
	return errors.Join(errs...)
}

// ResolverAddr is where the appliance's DNS resolver listens (port 53):
// the GWLB namespace, which every appliance reaches over its underlay
// link in both egress modes, as an instance reaches its VPC resolver.
var ResolverAddr = gwlbsim.GWLBAddr

// DNSTTL is the TTL of the demo names' records.
const DNSTTL = 60

// startDNS serves Names on ResolverAddr:53 in the GWLB namespace.
func (n *Network) startDNS() error {
	return n.Topo.GWLB.Do(func() error {
		s, err := dnstest.Listen(netip.AddrPortFrom(ResolverAddr, 53).String())
		if err != nil {
			return fmt.Errorf("dns server in %s: %w", n.Topo.GWLB.Name, err)
		}
		for name, a := range Names {
			s.Set(name, DNSTTL, a)
		}
		n.DNS = s
		return nil
	})
}

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }
