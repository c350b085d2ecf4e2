//go:build linux

package steer

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/gwlbproxy/gwlbproxy/proxy/ssrf"
	"golang.org/x/sys/unix"
)

// Counter object names; Stats and the metrics read them back from the kernel.
const (
	ctrIntercepted   = "intercepted"      // packets handed to a transparent socket
	ctrInterceptFail = "intercept_failed" // intercept port but no listener: dropped (fail closed)
	ctrQUICDropped   = "quic_dropped"
	ctrGuardDropped  = "guard_dropped"  // forward to link-local/loopback/IMDS
	ctrLocalDropped  = "local_dropped"  // tunnel traffic to the appliance itself
	ctrDirectRefused = "direct_refused" // direct connects to the listener ports
	ctrForwarded     = "forwarded"      // forwarded from the tunnels
	setTunnels       = "tunnels"        // iif index of every gwi-*
	mapTunnelMark    = "tunnel_mark"    // gwi-* iif index -> tunnel mark
	setHTTPPorts     = "http_ports"
	setTLSPorts      = "tls_ports"
	setQUICPorts     = "quic_ports"
	chainRawPre      = "raw_prerouting"
	chainRawOut      = "raw_output"
	chainMarkPre     = "mark_prerouting"
	chainTProxyPre   = "tproxy_prerouting"
	chainRouteOut    = "route_output"
	chainFilterFwd   = "filter_forward"
	chainFilterIn    = "filter_input"
	chainNATPost     = "nat_postrouting"
	// Regular chains: each base chain tests iif @tunnels once and goes
	// to one of these with the rules for tunnel packets, so a tunnel
	// packet does not pay that lookup (and the protocol test) per rule,
	// and other packets skip the tunnel rules with one lookup.
	chainRawTun       = "raw_prerouting_tunnel"
	chainMarkTun      = "mark_prerouting_tunnel"
	chainTProxyTun    = "tproxy_prerouting_tunnel"
	chainFwdTun       = "filter_forward_tunnel"
	chainFwdGuard4    = "filter_forward_guard4"
	chainFwdGuard6    = "filter_forward_guard6"
	priorityMarkFirst = -155 // mangle - 5: ct mark is set before TPROXY looks at anything
)

// Owner of a 4-tuple (see the rule in buildRuleset).
const (
	ctrCollision   = "tuple_collision" // intercepted packet of another live tunnel's connection: dropped
	setTunnelMarks = "tunnel_marks"    // the tunnel mark of every live gwi-*
	setTunnelOwner = "tunnel_owner"    // gwi-* iif index . its tunnel mark
)

var counterNames = []string{ctrIntercepted, ctrInterceptFail, ctrQUICDropped, ctrGuardDropped, ctrLocalDropped, ctrDirectRefused, ctrForwarded, ctrCollision}

// ruleSpec is one nftables rule with the nft-syntax text Explain prints.
type ruleSpec struct {
	chain string
	text  string
	exprs []expr.Any
}

// ruleset is the whole table, built from the configuration, installed in
// one batch.
type ruleset struct {
	table   *nftables.Table
	chains  map[string]*nftables.Chain
	order   []string // chain creation order, for Explain
	sets    map[string]*nftables.Set
	setVals map[string][]nftables.SetElement
	rules   []ruleSpec
	egress  string

	// Network policy (netpolicy.go): its counters, the anonymous sets of
	// its rules by placeholder name, and the endpoint sets PairUp fills.
	npCounters     []string
	anon           map[string]*anonSet
	anonOrder      []string
	npEndpointSets []npEndpointSetOf
	npDomainSets   []npDomainSetOf
	// ids are the rule ids the allow verdicts set in the conntrack mark
	// (ruleid.go); committed to the id table once the kernel took them.
	ids   assignment
	idsOK bool
	// counterInit are initial counter values (a reload carries the old
	// table's counts over).
	counterInit map[string]Counter
}

func (s *Steerer) buildRuleset(egress string) *ruleset {
	c := &s.cfg
	rs := &ruleset{
		table:   &nftables.Table{Name: c.TableName, Family: nftables.TableFamilyINet},
		chains:  map[string]*nftables.Chain{},
		sets:    map[string]*nftables.Set{},
		setVals: map[string][]nftables.SetElement{},
		egress:  egress,
		anon:    map[string]*anonSet{},
	}
	if c.NetworkPolicy.active() {
		rs.ids, rs.idsOK = s.ids.plan(&c.NetworkPolicy)
	}
	t := rs.table
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio int32) {
		rs.chains[name] = &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio))}
		rs.order = append(rs.order, name)
	}
	if c.tunnelMode() || c.NotrackGeneve {
		chain(chainRawPre, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, -300)
		chain(chainRawOut, nftables.ChainTypeFilter, nftables.ChainHookOutput, -300)
	}
	chain(chainMarkPre, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, priorityMarkFirst)
	chain(chainTProxyPre, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, -150)
	chain(chainRouteOut, nftables.ChainTypeRoute, nftables.ChainHookOutput, -150)
	chain(chainFilterIn, nftables.ChainTypeFilter, nftables.ChainHookInput, 0)
	chain(chainFilterFwd, nftables.ChainTypeFilter, nftables.ChainHookForward, 0)
	if !c.tunnelMode() {
		chain(chainNATPost, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, 100)
	}
	regular := func(name string) {
		rs.chains[name] = &nftables.Chain{Name: name, Table: t}
		rs.order = append(rs.order, name)
	}
	zone := c.tunnelMode() && !s.testNoZone
	if zone {
		regular(chainRawTun)
	}
	regular(chainMarkTun)
	regular(chainTProxyTun)
	regular(chainFwdTun)

	set := func(name string, key, val nftables.SetDatatype, isMap bool, elems []nftables.SetElement) {
		rs.sets[name] = &nftables.Set{Table: t, Name: name, KeyType: key, DataType: val, IsMap: isMap}
		rs.setVals[name] = elems
	}
	ports := func(ps []uint16) []nftables.SetElement {
		var out []nftables.SetElement
		for _, p := range ps {
			out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)})
		}
		return out
	}
	set(setTunnels, nftables.TypeIFIndex, nftables.TypeInvalid, false, nil)
	set(mapTunnelMark, nftables.TypeIFIndex, nftables.TypeMark, true, nil)
	set(setTunnelMarks, nftables.TypeMark, nftables.TypeInvalid, false, nil)
	ownerType, err := nftables.ConcatSetType(nftables.TypeIFIndex, nftables.TypeMark)
	if err != nil {
		panic(err) // two fixed 4-byte types: cannot fail
	}
	rs.sets[setTunnelOwner] = &nftables.Set{Table: t, Name: setTunnelOwner, KeyType: ownerType, Concatenation: true}
	set(setHTTPPorts, nftables.TypeInetService, nftables.TypeInvalid, false, ports(c.HTTPPorts))
	set(setTLSPorts, nftables.TypeInetService, nftables.TypeInvalid, false, ports(c.TLSPorts))
	set(setQUICPorts, nftables.TypeInetService, nftables.TypeInvalid, false, ports(c.QUICPorts))

	add := func(chain, text string, e ...expr.Any) {
		rs.rules = append(rs.rules, ruleSpec{chain: chain, text: text, exprs: e})
	}
	fromTunnel := lookup(setTunnels, rs.sets, false)
	notFromTunnel := lookup(setTunnels, rs.sets, true)
	base := c.MarkBase
	mark := fmt.Sprintf("%#x", base)

	// Tunnel packets leave raw_prerouting at its first rule: the notrack
	// rules below are for the outer packets only.
	if zone {
		add(chainRawPre, fmt.Sprintf("iif @%s goto %s", setTunnels, chainRawTun), cat(fromTunnel, gotoChain(chainRawTun))...)
	} else if c.NotrackGeneve && len(c.GeneveSources) > 0 {
		add(chainRawPre, fmt.Sprintf("iif @%s accept", setTunnels), cat(fromTunnel, accept())...)
	}
	if c.NotrackGeneve {
		// The outer GENEVE packets, GWLB -> appliance and back, bypass
		// conntrack (see Config.NotrackGeneve): only to or from GWLB's
		// subnets (tunnel.allowed_sources), so a forwarded flow that
		// masquerade leaves on the GENEVE port still has its replies
		// de-NATed; and not from a tunnel, so an inner flow to the GENEVE
		// port (client VPCs may overlap the GWLB subnets) stays tracked.
		for _, p := range c.GeneveSources {
			if p.Addr().Is6() && !c.IPv6 {
				continue
			}
			add(chainRawPre, fmt.Sprintf("iif != @%s %s saddr %s meta l4proto udp udp dport %d notrack", setTunnels, ipName(p), p, c.GenevePort),
				cat(notFromTunnel, addrIn(p, false), l4proto(unix.IPPROTO_UDP), udpDportEq(c.GenevePort), []expr.Any{&expr.Notrack{}})...)
			add(chainRawOut, fmt.Sprintf("%s daddr %s meta l4proto udp udp dport %d notrack", ipName(p), p, c.GenevePort),
				cat(addrIn(p, true), l4proto(unix.IPPROTO_UDP), udpDportEq(c.GenevePort), []expr.Any{&expr.Notrack{}})...)
		}
	}

	if zone {
		// The proxy's upstream connection has the client's 5-tuple. Put it
		// (both directions) in its own conntrack zone so it does not merge
		// with the client-side connection. Upstream sockets carry a tunnel
		// mark (SO_MARK); accepted client-side sockets carry none.
		// The listeners (and so the accepted sockets) carry mark_base
		// itself, which is not a tunnel mark.
		sockMark := []expr.Any{&expr.Socket{Key: expr.SocketKeyMark, Register: 1}}
		metaMark := []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}}
		add(chainRawTun, fmt.Sprintf("meta l4proto tcp socket mark & %#x == %s socket mark != %s ct zone set %d", markMask, mark, mark, c.ConntrackZone),
			cat(l4proto(unix.IPPROTO_TCP),
				sockMark, maskEq(base), sockMark, neq(base),
				ctZoneSet(c.ConntrackZone))...)
		add(chainRawOut, fmt.Sprintf("meta mark & %#x == %s meta mark != %s ct zone set %d", markMask, mark, mark, c.ConntrackZone),
			cat(metaMark, maskEq(base), metaMark, neq(base), ctZoneSet(c.ConntrackZone))...)
	}

	// Remember the tunnel of every new connection from a tunnel.
	add(chainMarkPre, fmt.Sprintf("iif @%s goto %s", setTunnels, chainMarkTun), cat(fromTunnel, gotoChain(chainMarkTun))...)
	add(chainMarkTun, fmt.Sprintf("ct state new ct mark set iif map @%s", mapTunnelMark),
		cat(ctStateNew(), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
			&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: mapTunnelMark, SetID: rs.sets[mapTunnelMark].ID},
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
		})...)
	// Packets of a tunnel's flow arriving elsewhere (NAT replies on the
	// egress interface) take the tunnel's mark, which routes them to gwo-*.
	// Only the slot part: the bits above it carry the network policy
	// rule id (ruleid.go), which routing must not see. Tunnel packets
	// went to mark_prerouting_tunnel above and never get here.
	routeMask := c.routeMask()
	add(chainMarkPre, fmt.Sprintf("ct mark & %#x == %s ct mark != %s meta mark set ct mark & %#x", markMask, mark, mark, routeMask),
		cat(ctMarkOurs(base), ctMarkMasked(routeMask), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
		})...)

	// One intercepted connection per 4-tuple. Two endpoints may carry the
	// same client address and port to the same destination; the namespace
	// holds one socket per 4-tuple and conntrack one entry per tuple, so
	// the second tunnel's packets would be handed to the first tunnel's
	// socket (a SYN in the window of a half-open connection resets it:
	// the first client's next packet gets RST) and the replies routed by
	// the first one's ct mark. A packet from a tunnel whose connection
	// carries another live tunnel's mark is dropped and counted instead:
	// the first connection is untouched and the second client's SYN is
	// retransmitted until the tuple is free (conntrack then replaces the
	// closed entry and marks it with the second tunnel). The ct mark of an
	// intercepted connection is its tunnel mark; both lookups compare
	// only its routing part (ct mark & routeMask: ours + slot), so bits
	// outside it (the network policy rule id of ruleid.go) never make a
	// tunnel's own connection look foreign or hide a foreign one. (iif .
	// ct mark & routeMask) is in tunnel_owner when the packet comes from
	// the tunnel that owns it. Flows whose mark no live tunnel owns pass
	// untouched (as before).
	//
	// Every rule of tproxy_prerouting is for TCP from a tunnel: one test
	// sends those packets to tproxy_prerouting_tunnel, the rest skip it.
	add(chainTProxyPre, fmt.Sprintf("iif @%s meta l4proto tcp goto %s", setTunnels, chainTProxyTun),
		cat(fromTunnel, l4proto(unix.IPPROTO_TCP), gotoChain(chainTProxyTun))...)
	for _, set := range []string{setHTTPPorts, setTLSPorts} {
		if len(rs.setVals[set]) == 0 {
			continue
		}
		add(chainTProxyTun, fmt.Sprintf("tcp dport @%s ct mark & %#x @%s iif . ct mark & %#x != @%s counter name %s drop", set, routeMask, setTunnelMarks, routeMask, setTunnelOwner, ctrCollision),
			cat(tcpDport(), lookup(set, rs.sets, false), ctMarkMasked(routeMask), []expr.Any{
				&expr.Lookup{SourceRegister: 1, SetName: setTunnelMarks, SetID: rs.sets[setTunnelMarks].ID},
				&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
				&expr.Ct{Key: expr.CtKeyMARK, Register: 9}, // NFT_REG32_01: the second half of the concatenation
				&expr.Bitwise{SourceRegister: 9, DestRegister: 9, Len: 4, Mask: native32(routeMask), Xor: native32(0)},
				&expr.Lookup{SourceRegister: 1, SetName: setTunnelOwner, SetID: rs.sets[setTunnelOwner].ID, Invert: true},
			}, objref(ctrCollision), drop())...)
	}

	// TPROXY. Established connections first: a packet that belongs to a
	// transparent socket (accepted client-side, or upstream in tunnel mode)
	// is delivered locally by mark.
	add(chainTProxyTun, fmt.Sprintf("socket transparent 1 meta mark set %s counter name %s accept", mark, ctrIntercepted),
		cat([]expr.Any{
			&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
		}, setMark(base), objref(ctrIntercepted), accept())...)
	for _, l := range []struct {
		set  string
		port uint16
	}{{setHTTPPorts, c.HTTPListenPort}, {setTLSPorts, c.TLSListenPort}} {
		if len(rs.setVals[l.set]) == 0 {
			continue
		}
		fams := []struct {
			nfproto byte
			addr    netip.Addr
			name    string
		}{{unix.NFPROTO_IPV4, netip.MustParseAddr("127.0.0.1"), "ip"}}
		if c.IPv6 {
			fams = append(fams, struct {
				nfproto byte
				addr    netip.Addr
				name    string
			}{unix.NFPROTO_IPV6, netip.IPv6Loopback(), "ip6"})
		}
		for _, f := range fams {
			add(chainTProxyTun, fmt.Sprintf("meta nfproto %s tcp dport @%s tproxy %s to %s meta mark set %s counter name %s accept",
				f.name, l.set, f.name, netip.AddrPortFrom(f.addr, l.port), mark, ctrIntercepted),
				cat(nfproto(f.nfproto), tcpDport(), lookup(l.set, rs.sets, false), []expr.Any{
					&expr.Immediate{Register: 1, Data: f.addr.AsSlice()},
					&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(l.port)},
					&expr.TProxy{Family: f.nfproto, TableFamily: byte(nftables.TableFamilyINet), RegAddr: 1, RegPort: 2},
				}, setMark(base), objref(ctrIntercepted), accept())...)
		}
		// Fail closed: an intercepted port whose listener is missing must
		// not be forwarded uninspected.
		add(chainTProxyTun, fmt.Sprintf("tcp dport @%s counter name %s drop", l.set, ctrInterceptFail),
			cat(tcpDport(), lookup(l.set, rs.sets, false), objref(ctrInterceptFail), drop())...)
	}

	// Replies of the proxy (and ICMP errors about forwarded packets) get
	// their connection's tunnel mark. A route chain, so the new mark causes
	// a new route lookup (fwmark rule -> the tunnel's table -> gwo-*).
	// Packets of the transparent listeners and their accepted sockets
	// carry mark_base (SO_MARK on the listener, inherited by the request
	// and the child socket): their first route lookup, made before this
	// chain, then finds the local table and succeeds even when the main
	// table has no route to the client (one-arm appliances need no
	// default route). Other local traffic has mark 0.
	for _, m := range []uint32{0, base} {
		add(chainRouteOut, fmt.Sprintf("meta mark %#x ct mark & %#x == %s ct mark != %s meta mark set ct mark & %#x", m, markMask, mark, mark, routeMask),
			cat([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(m)},
			}, ctMarkOurs(base), ctMarkMasked(routeMask), []expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
			})...)
	}

	// Input: from a tunnel only what TPROXY handed over; nobody reaches the
	// listener ports directly (not even from loopback).
	add(chainFilterIn, fmt.Sprintf("iif @%s meta mark != %s counter name %s drop", setTunnels, mark, ctrLocalDropped),
		cat(fromTunnel, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(base)},
		}, objref(ctrLocalDropped), drop())...)
	for _, p := range []uint16{c.HTTPListenPort, c.TLSListenPort} {
		add(chainFilterIn, fmt.Sprintf("meta l4proto tcp tcp dport %d meta mark != %s counter name %s reject with tcp reset", p, mark, ctrDirectRefused),
			cat(l4proto(unix.IPPROTO_TCP), tcpDport(), []expr.Any{
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(base)},
			}, objref(ctrDirectRefused), []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})...)
	}

	// Forward: everything is about tunnel packets; one test sends them to
	// filter_forward_tunnel. Forward guards first.
	add(chainFilterFwd, fmt.Sprintf("iif @%s goto %s", setTunnels, chainFwdTun), cat(fromTunnel, gotoChain(chainFwdTun))...)
	if c.DropQUIC && len(c.QUICPorts) > 0 {
		add(chainFwdTun, fmt.Sprintf("meta l4proto udp udp dport @%s counter name %s drop", setQUICPorts, ctrQUICDropped),
			cat(l4proto(unix.IPPROTO_UDP), tcpDport(), lookup(setQUICPorts, rs.sets, false), objref(ctrQUICDropped), drop())...)
	}
	// Forwarded traffic to the host-local ranges of the SSRF list
	// (instance services, link-local, loopback) is dropped: the proxy's
	// list, not a copy of it. One chain per family, entered after one
	// family test, so a packet does not test the other family's ranges
	// (nor its own family once per range); the guard4/guard6 chains are
	// only reached by their family, so their rules load the address
	// without repeating that test.
	for _, v6 := range []bool{false, true} {
		if v6 && !c.IPv6 {
			continue
		}
		gc, fam, fname := chainFwdGuard4, byte(unix.NFPROTO_IPV4), "ipv4"
		if v6 {
			gc, fam, fname = chainFwdGuard6, unix.NFPROTO_IPV6, "ipv6"
		}
		n := 0
		for _, p := range ssrf.HostLocal() {
			if p.Addr().Is6() != v6 {
				continue
			}
			if n == 0 {
				regular(gc)
				add(chainFwdTun, fmt.Sprintf("meta nfproto %s jump %s", fname, gc),
					cat(nfproto(fam), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: gc}})...)
			}
			n++
			add(gc, fmt.Sprintf("%s daddr %s counter name %s drop", ipName(p), p, ctrGuardDropped),
				cat(addrIn(p, true)[2:], objref(ctrGuardDropped), drop())...)
		}
	}
	if c.NetworkPolicy.active() {
		s.addNetworkPolicy(rs, add)
	} else {
		add(chainFwdTun, fmt.Sprintf("counter name %s accept", ctrForwarded),
			cat(objref(ctrForwarded), accept())...)
	}

	if s.testBadRule {
		add(chainFilterFwd, "iif @np_missing drop", &expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: "np_missing"}, &expr.Verdict{Kind: expr.VerdictDrop})
	}
	if !c.tunnelMode() {
		add(chainNATPost, fmt.Sprintf("oifname %q ct mark & %#x == %s ct mark != %s masquerade", egress, markMask, mark, mark),
			cat([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(egress)},
			}, ctMarkOurs(base), []expr.Any{&expr.Masq{}})...)
	}
	return rs
}

// install queues the whole table on conn: the stale table of an earlier run
// is deleted and the new one created in the same batch, so the switch is
// atomic when the caller flushes.
func (rs *ruleset) install(conn *nftables.Conn) error {
	conn.AddTable(rs.table) // no-op if it exists; makes the delete below valid
	conn.DelTable(rs.table)
	conn.AddTable(rs.table)
	for _, n := range append(append([]string(nil), counterNames...), rs.npCounters...) {
		ci := rs.counterInit[n]
		conn.AddObj(&nftables.NamedObj{Table: rs.table, Name: n, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{Packets: ci.Packets, Bytes: ci.Bytes}})
	}
	for _, name := range rs.setNames() {
		if err := conn.AddSet(rs.sets[name], rs.setVals[name]); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	for _, ph := range rs.anonOrder {
		a := rs.anon[ph]
		if err := conn.AddSet(a.set, a.elems); err != nil {
			return fmt.Errorf("network policy set { %s }: %w", a.text, err)
		}
	}
	rs.resolveAnon()
	for _, n := range rs.order {
		conn.AddChain(rs.chains[n])
	}
	for _, r := range rs.rules {
		conn.AddRule(&nftables.Rule{Table: rs.table, Chain: rs.chains[r.chain], Exprs: r.exprs})
	}
	return nil
}

// setNames lists the named sets in creation order: the base ones, then
// the network policy's endpoint sets.
func (rs *ruleset) setNames() []string {
	names := []string{setTunnels, mapTunnelMark, setTunnelMarks, setTunnelOwner, setHTTPPorts, setTLSPorts, setQUICPorts}
	for _, es := range rs.npEndpointSets {
		names = append(names, es.name)
	}
	for _, ds := range rs.npDomainSets {
		names = append(names, ds.name)
	}
	return names
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func native32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

func lookup(name string, sets map[string]*nftables.Set, invert bool) []expr.Any {
	k := expr.MetaKeyIIF
	load := []expr.Any{}
	switch name {
	case setTunnels:
		load = append(load, &expr.Meta{Key: k, Register: 1})
	}
	return append(load, &expr.Lookup{SourceRegister: 1, SetName: name, SetID: sets[name].ID, Invert: invert})
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func nfproto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// tcpDport loads the destination port (TCP and UDP share the offset).
func tcpDport() []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}
}

// udpDportEq matches the (UDP or TCP) destination port p.
func udpDportEq(p uint16) []expr.Any {
	return cat(tcpDport(), []expr.Any{&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p)}})
}

// maskEq compares register 1 & markMask with base.
func maskEq(base uint32) []expr.Any {
	return []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(markMask), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(base)},
	}
}

// ctMarkOurs matches ct mark in base+1..base+0xffff (a tunnel mark).
func ctMarkOurs(base uint32) []expr.Any {
	return cat([]expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: 1}}, maskEq(base), []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(base)},
	})
}

// ctMarkMasked loads ct mark & mask into register 1.
func ctMarkMasked(mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(mask), Xor: native32(0)},
	}
}

// ctMarkSetField sets the bits of field in the conntrack mark to val
// (already shifted), keeping the others: ct mark set ct mark & ^field | val.
func ctMarkSetField(field, val uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^field), Xor: native32(val)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}
}

// neq compares register 1 (a mark) with v for inequality.
func neq(v uint32) []expr.Any {
	return []expr.Any{&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(v)}}
}

func ctStateNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(expr.CtStateBitNEW), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
	}
}

func ctZoneSet(zone uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint16(zone)},
		&expr.Ct{Key: expr.CtKeyZONE, Register: 1, SourceRegister: true},
	}
}

func setMark(m uint32) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: native32(m)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
}

func objref(name string) []expr.Any {
	return []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name}}
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

// gotoChain continues in the regular chain name; its end ends the base
// chain (policy accept), as the base chain's own end would.
func gotoChain(name string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: name}}
}
func drop() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}} }

// ipName is "ip" or "ip6" for p's family, as nft prints it.
func ipName(p netip.Prefix) string {
	if p.Addr().Is6() {
		return "ip6"
	}
	return "ip"
}

// addrIn matches packets of p's family whose destination (dst) or source
// address is in p.
func addrIn(p netip.Prefix, dst bool) []expr.Any {
	fam, off := byte(unix.NFPROTO_IPV4), uint32(12)
	if p.Addr().Is6() {
		fam, off = unix.NFPROTO_IPV6, 8
	}
	n := uint32(p.Addr().BitLen() / 8)
	if dst {
		off += n
	}
	return cat(nfproto(fam), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: prefixMask(p), Xor: make([]byte, n)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	})
}

func prefixMask(p netip.Prefix) []byte {
	n := p.Addr().BitLen() / 8
	b := make([]byte, n)
	bits := p.Bits()
	for i := range b {
		switch {
		case bits >= 8:
			b[i] = 0xff
			bits -= 8
		case bits > 0:
			b[i] = byte(0xff << (8 - bits))
			bits = 0
		}
	}
	return b
}

// ownerKey is the tunnel_owner element of the tunnel with input interface
// idx in slot: iif index . tunnel mark.
func (c *Config) ownerKey(idx int, slot uint16) []byte {
	return append(elemIfIndex(idx), native32(c.tunnelMark(slot))...)
}

// elemIfIndex is a set key for an interface index (host byte order).
func elemIfIndex(idx int) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, uint32(idx))
	return b
}
