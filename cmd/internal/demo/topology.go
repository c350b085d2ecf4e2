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

	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
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
	Inet *extraNS

	inetName string
	cancel   context.CancelFunc
}

// NewNetwork builds the topology for mode (steer.EgressNAT or
// steer.EgressTunnel). prefix starts every namespace name (a random suffix
// follows). Callers must Close it.
func NewNetwork(ctx context.Context, mode, prefix string) (*Network, error) {
	return NewNetworkSim(ctx, mode, prefix, gwlbsim.Config{})
}

// NewNetworkSim is NewNetwork with the GWLB simulator configured by sim
// (health checks of the appliance, for one).
func NewNetworkSim(ctx context.Context, mode, prefix string, sim gwlbsim.Config) (_ *Network, err error) {
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
	n.Topo, err = gwlbsim.NewTopology(gwlbsim.TopologyConfig{Prefix: prefix, Endpoints: []gwlbsim.EndpointConfig{
		{ID: EndpointA, AttachmentID: 0xa},
		{ID: EndpointB, AttachmentID: 0xb},
	}})
	if err != nil {
		return nil, fmt.Errorf("topology: %w", err)
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
		// the GWLB namespace stands in for it. Steering needs one: the
		// proxy's SYN-ACKs are routed by the main table before the
		// output route chain re-marks them into the tunnel, and without
		// any route the kernel drops the SYN (TcpExtListenDrops).
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
	inet, err := newNamedNS(name)
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

// addAddrs adds addresses with prefix length bits to link and sets it up.
func addAddrs(ns Namespace, name, link string, bits int, addrs []netip.Addr) error {
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

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }
