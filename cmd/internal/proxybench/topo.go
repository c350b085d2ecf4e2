package proxybench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Addressing inside the benchmark's private namespaces.
var (
	clientAddr   = netip.MustParseAddr("198.18.10.2")
	routerClient = netip.MustParseAddr("198.18.10.1")
	routerUp     = netip.MustParseAddr("203.0.113.1")
	upstreamAddr = netip.MustParseAddr("203.0.113.10")
	loopback     = netip.MustParseAddr("127.0.0.1")
)

const (
	tproxyMark  = 0x1
	tproxyTable = 100
	nftTable    = "proxybench"
	nftChain    = "tproxy_prerouting"
	clientLink  = "pbc0" // client side of the client<->router veth
	routerCLink = "pbr0" // router side of it
	routerULink = "pbr1" // router side of the router<->upstream veth
	upLink      = "pbu0"
)

// topology is client --veth-- router --veth-- upstream. The router
// forwards; TPROXY in its nftables table hands TCP 443 from the client veth
// to whichever proxy is under test.
type topology struct {
	client, router, upstream *netNS
	nft                      *nftables.Conn
	table                    *nftables.Table
	chain                    *nftables.Chain
}

func newTopology(prefix string) (_ *topology, err error) {
	sfx := inns.RandSuffix()
	t := &topology{}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	if t.client, err = newNetNS(prefix + "c-" + sfx); err != nil {
		return nil, err
	}
	if t.router, err = newNetNS(prefix + "r-" + sfx); err != nil {
		return nil, err
	}
	if t.upstream, err = newNetNS(prefix + "u-" + sfx); err != nil {
		return nil, err
	}
	if err := veth(t.client, clientLink, clientAddr, t.router, routerCLink, routerClient, 24); err != nil {
		return nil, err
	}
	if err := veth(t.router, routerULink, routerUp, t.upstream, upLink, upstreamAddr, 24); err != nil {
		return nil, err
	}
	if err := defaultRoute(t.client, routerClient); err != nil {
		return nil, err
	}
	if err := defaultRoute(t.upstream, routerUp); err != nil {
		return nil, err
	}
	for _, s := range [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/default/rp_filter", "0"},
		{"net/ipv4/conf/" + routerCLink + "/rp_filter", "0"},
		{"net/ipv4/conf/" + routerULink + "/rp_filter", "0"},
	} {
		if err := t.router.Sysctl(s[0], s[1]); err != nil {
			return nil, err
		}
	}
	for _, n := range []*netNS{t.client, t.upstream} {
		// Many short connections from one address: let ports be reused
		// quickly so the client never runs out of them.
		if err := n.Sysctl("net/ipv4/tcp_tw_reuse", "1"); err != nil {
			return nil, err
		}
		if err := n.Sysctl("net/ipv4/ip_local_port_range", "10000 65000"); err != nil {
			return nil, err
		}
	}
	if err := t.policyRouting(); err != nil {
		return nil, err
	}
	if err := t.installTable(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *topology) close() error {
	var errs []error
	if t.nft != nil {
		errs = append(errs, t.nft.CloseLasting())
	}
	for _, n := range []*netNS{t.upstream, t.router, t.client} {
		if n != nil {
			errs = append(errs, n.Close())
		}
	}
	return errors.Join(errs...)
}

func veth(a *netNS, an string, aAddr netip.Addr, b *netNS, bn string, bAddr netip.Addr, bits int) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: an},
		PeerName:      bn,
		PeerNamespace: netlink.NsFd(int(b.Handle())),
	}
	if err := a.Netlink().LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s - %s/%s: %w", a.Name, an, b.Name, bn, err)
	}
	for _, side := range []struct {
		ns   *netNS
		name string
		addr netip.Addr
	}{{a, an, aAddr}, {b, bn, bAddr}} {
		l, err := side.ns.Netlink().LinkByName(side.name)
		if err != nil {
			return fmt.Errorf("netns %s: %s: %w", side.ns.Name, side.name, err)
		}
		ipn := &net.IPNet{IP: side.addr.AsSlice(), Mask: net.CIDRMask(bits, 32)}
		if err := side.ns.Netlink().AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
			return fmt.Errorf("netns %s: %s addr %s: %w", side.ns.Name, side.name, side.addr, err)
		}
		if err := side.ns.Netlink().LinkSetUp(l); err != nil {
			return fmt.Errorf("netns %s: %s up: %w", side.ns.Name, side.name, err)
		}
	}
	return nil
}

func defaultRoute(n *netNS, gw netip.Addr) error {
	r := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: gw.AsSlice()}
	if err := n.Netlink().RouteAdd(r); err != nil {
		return fmt.Errorf("netns %s: default via %s: %w", n.Name, gw, err)
	}
	return nil
}

// policyRouting: packets marked by the TPROXY rules are delivered locally
// (`ip rule fwmark 0x1 lookup 100`, `local 0.0.0.0/0 dev lo table 100`).
func (t *topology) policyRouting() error {
	nl := t.router.Netlink()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("netns %s: lo: %w", t.router.Name, err)
	}
	r := &netlink.Route{
		Dst:       &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
		LinkIndex: lo.Attrs().Index,
		Type:      unix.RTN_LOCAL,
		Table:     tproxyTable,
		Scope:     netlink.SCOPE_HOST,
	}
	if err := nl.RouteAdd(r); err != nil {
		return fmt.Errorf("netns %s: local 0/0 table %d: %w", t.router.Name, tproxyTable, err)
	}
	rule := netlink.NewRule()
	rule.Priority, rule.Mark, rule.Table, rule.Family = 100, tproxyMark, tproxyTable, unix.AF_INET
	if err := nl.RuleAdd(rule); err != nil {
		return fmt.Errorf("netns %s: rule fwmark %#x: %w", t.router.Name, tproxyMark, err)
	}
	return nil
}

// installTable creates the table and its prerouting chain (priority mangle)
// with only the socket rule:
//
//	meta l4proto tcp socket transparent 1 meta mark set 0x1 accept
//
// Packets of connections a transparent socket already owns are delivered
// locally. setTProxy adds the interception rule.
func (t *topology) installTable() error {
	fd := int(t.router.Handle())
	c, err := nftables.New(nftables.WithNetNSFd(fd), nftables.AsLasting())
	if err != nil {
		return fmt.Errorf("netns %s: nftables: %w", t.router.Name, err)
	}
	t.nft = c
	t.table = c.AddTable(&nftables.Table{Name: nftTable, Family: nftables.TableFamilyIPv4})
	t.chain = c.AddChain(&nftables.Chain{
		Name: nftChain, Table: t.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle,
	})
	c.AddRule(&nftables.Rule{Table: t.table, Chain: t.chain, Exprs: t.socketRule()})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netns %s: nftables table: %w", t.router.Name, err)
	}
	return nil
}

func (t *topology) socketRule() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(tproxyMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// setTProxy replaces the chain's rules: port 0 leaves only the socket rule
// (no interception: the client talks to the upstream through the router),
// otherwise adds
//
//	iifname "pbr0" tcp dport 443 tproxy ip to 127.0.0.1:<port> meta mark set 0x1 accept
func (t *topology) setTProxy(port uint16) error {
	t.nft.FlushChain(t.chain)
	t.nft.AddRule(&nftables.Rule{Table: t.table, Chain: t.chain, Exprs: t.socketRule()})
	if port != 0 {
		ifn := make([]byte, 16)
		copy(ifn, routerCLink)
		t.nft.AddRule(&nftables.Rule{Table: t.table, Chain: t.chain, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifn},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(443)},
			&expr.Immediate{Register: 1, Data: loopback.AsSlice()},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(port)},
			&expr.TProxy{Family: byte(nftables.TableFamilyIPv4), TableFamily: byte(nftables.TableFamilyIPv4), RegAddr: 1, RegPort: 2},
			&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(tproxyMark)},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}})
	}
	if err := t.nft.Flush(); err != nil {
		return fmt.Errorf("netns %s: nftables tproxy rule: %w", t.router.Name, err)
	}
	return nil
}
