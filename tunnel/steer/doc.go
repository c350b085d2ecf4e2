//go:build linux

// Package steer moves tunnel traffic where it belongs: TCP to the
// intercepted ports (80/443 by default) from any gwi-* into the proxy's
// transparent listeners, everything else forwarded (nat mode) or back into
// its tunnel (tunnel mode), and every packet for a client out of the gwo-*
// of the tunnel its flow came in on.
//
// It implements tunnel.Observer: PairUp/PairDown add and remove one
// tunnel's routing table, ip rules, sysctls and nftables set/map elements;
// PairDown also flushes the conntrack entries carrying the tunnel's mark,
// because the next tunnel in that slot gets the same mark.
// Everything is in-process netlink (google/nftables, vishvananda/netlink,
// /proc/sys writes); nothing is exec'd. Explain prints the lot.
//
// # Pieces
//
// One nftables table, inet gwlbproxy, replaced atomically: the Start batch
// is "add table; delete table; add table; ..." so a stale table from a
// crashed run is dropped and the new one created in one transaction. Close
// deletes it. Other tables are never touched. Per-tunnel data lives in two
// sets keyed by interface index (tunnels, tunnel_mark), so a tunnel coming
// or going is an element update, never a chain rewrite.
//
// Marks (mark_base, default 0x47570000; the upper 16 bits are ours):
// mark_base itself means "deliver locally" (TPROXY'd packets and packets of
// transparent sockets); mark_base+slot is tunnel slot (tunnel.Pair.Slot).
// Routing tables: route_table_base (local 0.0.0.0/0 and ::/0 dev lo),
// route_table_base+slot (default dev gwo-X). ip rules at rule_priority:
// fwmark mark_base -> local table; +1: fwmark tunnel mark -> tunnel table;
// +2 (tunnel mode only): iif gwi-X -> tunnel table. The local rule comes
// first, or intercepted SYNs would follow the iif rule.
//
// The tunnel is remembered per connection: a new connection from gwi-X gets
// ct mark = tunnel mark (prerouting, priority mangle-5). Locally generated
// replies take it back as packet mark in an output chain of type route (a
// filter chain would change the mark without a new route lookup), and NAT
// replies arriving on the egress interface take it in prerouting. The mark
// selects the tunnel's table, whose only route is gwo-X. Because the tunnel
// is found from conntrack and not from the address, two endpoints with the
// same client addresses each get their own replies.
//
// The conntrack mark of a forwarded flow also carries the id of the
// network policy rule that allowed it (ruleid.go), in the bits between the
// slot (the low bits.Len(max_tunnels) bits) and mark_base; only
// mark_base|slot is copied to packet marks, so routing never sees it.
//
// # Why interception works here when gwlbtun users' TPROXY "had no effect"
//
// TPROXY in prerouting only assigns the packet to a socket; it does not
// change the destination. The routing decision after prerouting still sees
// a foreign destination address. Without a rule that routes the marked
// packet to a local table ("fwmark X lookup T" + "local default dev lo table
// T"), the packet is forwarded, and ip_forward silently drops forwarded
// packets that carry a socket: the SYN vanishes, the TPROXY rule's counter
// moves, nothing is logged (TestWhyTProxyNeedsLocalRoute reproduces it on
// tun devices). The other ways to the same symptom, each handled here:
//   - rule order: an "iif gwi-X" rule (one-arm setups) placed before the
//     fwmark rule sends intercepted SYNs back into the tunnel;
//   - rp_filter: the client's source is not routed via gwi-X, so strict
//     reverse-path filtering drops its packets at the same routing step;
//     systemd-sysctl re-enables it after boot, which is why it is re-asserted
//     every sysctl_interval here, on all, default and each gwi/gwo;
//   - replies: the proxy's SYN-ACK goes out by the main table (the instance
//     NIC) instead of gwo-X, GWLB never sees it, the client times out. The
//     ct mark + route-type output chain fixes that;
//   - no route to the client: the SYN-ACK is sent by the kernel during the
//     handshake and routed once before the output chain can re-mark it. With
//     mark 0 that first lookup uses the main table; an appliance without a
//     default route (one-arm needs none) has no route to the client, the
//     SYN-ACK is never sent (conntrack stuck in SYN_SENT, TcpExtListenDrops
//     rising). The listeners therefore carry SO_MARK mark_base: the request
//     socket and the accepted socket inherit the listener's mark (with
//     tcp_fwmark_accept=0), the first lookup goes to the local-delivery
//     table, which always has a route, and the route chain re-marks
//     mark_base packets of our connections into their tunnel like mark-0
//     ones (TestTunnelModeWithoutDefaultRoute, TestE2EWithTunnelDaemon);
//   - a listener without IP_TRANSPARENT, or bound to another address than
//     the one TPROXY targets, makes the socket lookup fail and the rule
//     falls through (here: fail closed, the packet is dropped and counted as
//     intercept_failed rather than forwarded uninspected).
//
// Tun devices are not special: packets the daemon writes into gwi-X enter
// the stack through the normal receive path and traverse prerouting like
// packets from a NIC (the tests use tun devices to be sure).
//
// # The transparent listeners
//
// They listen on 127.0.0.1 and ::1 (http_listen_port, tls_listen_port) and
// the TPROXY rules name those addresses; they carry SO_MARK mark_base (see
// "no route to the client" above). Nothing from the network can reach
// a loopback address, so a direct connection to the appliance's own address
// on those ports finds no listener and gets RST; a local connection to
// 127.0.0.1 on them is rejected with RST by the input chain (mark !=
// mark_base). route_localnet is not needed: TPROXY assigns the socket
// without rewriting the destination, so no packet is ever routed to 127/8.
//
// # Which tunnel a connection came from (EndpointOf)
//
// One conntrack GET over netlink for the accepted connection's original
// tuple (client -> original destination, default zone) returns its ct mark,
// which is mark_base+slot; slot -> Pair -> EndpointID. It costs one
// request/response on a kept-open netlink socket per connection (not per
// packet), needs no global sysctl, and is exact even when client addresses
// overlap across endpoints. The alternative, tcp_fwmark_accept=1 so the
// accepted socket inherits the SYN's mark (SO_MARK readable for free), was
// rejected: the sysctl is namespace-wide and changes every other listener on
// the host. (Our own listeners' SO_MARK is inherited instead, which is
// per-socket; it is the same mark for every connection, so it says nothing
// about the tunnel.)
// Dumping the table (netlink ConntrackTableList) is O(table) per connection.
// ctnetlink answers a GET with NLM_F_MULTI and no NLMSG_DONE, so the lookup
// uses a plain netlink socket rather than a generic client that would wait
// for the DONE.
//
// Limitation: two tunnels carrying the identical 5-tuple (same client
// address and port to the same destination) at the same time cannot both be
// intercepted: a namespace cannot hold two TCP sockets with the same
// 4-tuple, and conntrack keeps one entry (with the first tunnel's mark) for
// both. Left alone, the second tunnel's packets reach the first one's
// socket: a SYN inside the window of its half-open connection makes the
// kernel reset it (the first client's next packet gets RST), other packets
// draw ACKs that are routed to the first tunnel. So the first connection
// owns the tuple: a packet to an intercepted port from a tunnel whose
// connection carries another live tunnel's mark ((iif . ct mark) not in
// tunnel_owner) is dropped and counted (tuple_collision). The second
// client retransmits its SYN; once the first connection is closed,
// conntrack replaces the closed entry (or it expires), the new one gets
// the second tunnel's mark, and it is intercepted normally. A mark no live tunnel owns (a flow of a
// tunnel gone, or of an earlier run) is left alone. (Identical tuples from
// two endpoints are rare with independent hosts; simulated VPCs on one
// kernel produce them often, because the kernel picks ephemeral ports and
// initial sequence numbers from the addresses and ports alone, not the
// namespace: TestParallelHTTPS and TestSameTupleTwoEndpoints in
// cmd/internal/e2e.) Forwarded traffic is not checked; two such forwarded
// flows share one conntrack entry (in nat mode, its masquerade mapping and
// its replies' tunnel).
//
// # Egress modes
//
// nat (two-arm, default): forwarded tunnel traffic leaves through
// egress_interface (default: the interface of the IPv4 default route) and
// is masqueraded (oifname + ct mark in our range); replies are de-NATed and
// take the tunnel mark on the way in. The proxy's upstream connections are
// ordinary connections from the appliance's own address.
//
// tunnel (one-arm): forwarded traffic goes back into the tunnel it came from
// (iif rule). The proxy's upstream connection keeps the client's address and
// source port (IP_TRANSPARENT, bind client ip:port, connect to the original
// destination) and carries the tunnel mark (SO_MARK), so it leaves through
// gwo-X as the flow GWLB already knows; its replies come back through gwi-X
// and the "socket transparent 1" rule delivers them to the socket. That
// connection has the same 5-tuple, in the same direction, as the
// client-side connection. Without care conntrack takes both for one
// connection: the upstream SYN is "ignored" in the established entry and
// its SYN-ACK resynchronises the window tracking to the upstream's
// sequence space, leaving one entry that describes neither connection
// correctly. Upstream connections are therefore tracked in their own zone
// (conntrack_zone): in raw output by their socket mark, in raw prerouting by
// the mark of the socket the packet belongs to (a tunnel mark; accepted
// client-side sockets carry mark_base, which is not one). TestUpstreamZone shows two entries with the zone
// rules and one without, with 4 MiB moved through a host firewall that drops
// ct state invalid.
//
// DialUpstream refuses, in both modes, every destination the proxy's SSRF
// guard refuses (proxy/ssrf: loopback, link-local (IMDS), fd00:ec2::/32,
// CGNAT, the IPv6 wrappings of those, the appliance's own addresses): the
// composition root hands steer the proxy's check (UseCheck), so there is
// one list and one refresh of the own addresses.
//
// # Guards and QUIC
//
// Forwarded traffic from a tunnel to the host-local ranges of the SSRF list
// (ssrf.HostLocal: 169.254.0.0/16, 127.0.0.0/8, 0.0.0.0/8, fe80::/10, ::1
// and fd00:ec2::/32; IMDS, VPC DNS and time servers) is dropped and counted
// (guard_dropped). Tunnel traffic addressed to the
// appliance itself never reaches forward (it is local); the input chain
// drops every tunnel packet that TPROXY did not hand over (local_dropped).
// UDP to quic_ports (80, 443) from a tunnel is dropped and counted
// (quic_dropped) when drop_quic is on, so browsers fall back to TCP, which
// is intercepted. Counters are named nftables counter objects; Stats and the
// gwlbproxy_steer_packets_total / _bytes_total metrics read them at scrape.
//
// # Outer GENEVE and conntrack (notrack_geneve)
//
// Every inner packet crosses netfilter three times: the outer GENEVE
// packet in, the inner packet forwarded, the outer packet out. Tracking
// the outer packets buys nothing (the daemon keeps its own flow table) and
// costs one conntrack entry per GWLB flow, because GWLB varies the outer
// source port per inner flow: a busy appliance fills nf_conntrack_max
// twice as fast. (Per-packet CPU: no difference measured, bench tunnel
// -notrack.) With notrack_geneve (default on) raw prerouting exempts UDP
// to the GENEVE port (tunnel.port) from GWLB's subnets
// (tunnel.allowed_sources) that does not come from a tunnel, and raw
// output exempts UDP to that port on GWLB's subnets (the daemon's replies).
// This is what gwlbtun operators do by hand with "iptables -t raw ... -j
// NOTRACK", narrowed on purpose:
//   - not from a tunnel: client VPCs may use GWLB's addresses too (they
//     overlap freely), and an inner flow to the GENEVE port must stay
//     tracked to be marked and masqueraded;
//   - only GWLB's subnets: in nat mode masquerade keeps a forwarded flow's
//     source port when it is free, and with the outer packets untracked the
//     GENEVE port is free; the replies of such a flow (UDP from an internet
//     server to the appliance's GENEVE port) must stay tracked to be
//     de-NATed (TestNotrackGeneveMasqueradedPort). With allowed_sources
//     0.0.0.0/0 that guarantee is gone: turn notrack_geneve off there.
//
// For operators: other rulesets on the host see these packets as "ct
// state untracked". A host firewall that accepts UDP 6081 by "ct state
// new,established" drops them; accept the port explicitly instead ("udp
// dport 6081 accept"), or turn notrack_geneve off. conntrack -L no longer
// lists GENEVE flows.
//
// # Self-repair
//
// Steering can be taken away from outside at any time (`nft flush
// ruleset`, a config-management run rewriting rules, a firewall service
// restart). Every sysctl_interval, and at once when Health finds a
// difference, the kernel is compared with what was installed: the table,
// its chains and their rule counts, the counter objects, every set and map
// (the tunnel elements from the live pairs), every ip rule and route of the
// base and of the live pairs. Missing rules and routes are added back; any
// nftables difference reinstalls the whole table with the live pairs'
// elements in one atomic transaction (its counters restart from zero).
// Each repair is logged once and counted (Stats nft_repairs,
// routing_repairs, repair_failures; gwlbproxy_steer_repairs_total{what}).
// Health is red from the moment a difference is found until it is gone.
//
// # sysctls
//
// net.ipv4.ip_forward=1, net.ipv6.conf.all.forwarding=1 (with ipv6),
// rp_filter=0 on all, default and each gwi-/gwo-; written at Start and
// PairUp, re-asserted every sysctl_interval (resets are counted). Not set,
// on purpose: accept_local (no routed packet has one of our addresses as
// source), route_localnet (see above), src_valid_mark (only rp_filter uses
// it), tcp_fwmark_accept (our marked listeners ignore it). Close restores nothing: forwarding
// may be relied on by others once on. Note that IPv6 forwarding=1 stops
// router advertisements being accepted on interfaces with accept_ra=1; an
// instance that gets its IPv6 default route from RA needs accept_ra=2 on
// its NIC (not changed here: it is not our interface).
//
// net.netfilter.nf_conntrack_checksum follows conntrack_checksum (default
// true = 1, the kernel's default). Decapsulated packets enter the stack
// with no verified checksum (CHECKSUM_NONE: the tun device and the eBPF
// redirect carry none), so with 1 conntrack sums every tracked packet in
// software before it may change a connection's state: measured (issue 20,
// perf) about 0.8 us per 8500-byte packet, the largest single cost of
// large packets on the eBPF datapath. 0 skips that. What it gives up: a
// packet with a bad checksum is tracked like a good one, so a forged
// bad-checksum RST or FIN closes (or a bad-checksum packet opens) a
// conntrack entry that the endpoints never saw change. Consequences here:
// the flow record of that connection ends early; the next packet of a
// forwarded flow is a new flow that the network policy decides again (with
// the rule in force) and marks again, so nothing is allowed that the policy
// would not allow; intercepted connections are verified by the local TCP
// stack (TPROXY delivers to a socket) and destinations drop bad packets
// either way. A checksum authenticates nothing: whoever can inject a
// bad-checksum RST in the window can inject a good one. So 0 is a
// performance choice with an accounting (flow record) cost, not a policy
// bypass; the default stays 1 because it is namespace-wide (other
// connections of a host running the appliance in its own namespace) and
// because flow records should not be splittable by garbage packets.
//
// # Source/destination check
//
// disable_source_dest_check calls EC2 ModifyInstanceAttribute with
// SourceDestCheck=false (the check OFF: the instance may send and receive
// packets that are neither from nor to its own addresses) on the instance
// id from IMDSv2 (no v1 fallback), both taken from the appliance's one AWS
// environment (SetAWS: aws.endpoints.ec2, aws.imds_endpoint). Neither mode needs it: GENEVE is
// addressed to the instance, one-arm returns everything inside GENEVE, and
// nat masquerades, so what leaves the NIC has the instance's source. Only
// an operator forwarding tunnel traffic un-NATed out of the instance's own
// NIC needs it off. (The seed's script had the two CLI flags swapped.)
//
// # Tests
//
// The tests build real namespaces: an appliance with tun devices gwi-X and
// gwo-X, and per tunnel a "GWLB" namespace whose tun devices are joined to
// the appliance's by a relay goroutine that plays the GENEVE tunnel (what
// the kernel sends into GWLB's tun enters gwi-X; what the appliance sends
// out gwo-X or gwi-X enters GWLB's other tun), a client and a server behind
// it; plus an egress namespace that also answers as the server, so a test
// sees which way a connection went and which source address the server
// saw. Tun rather than veth because the real daemon uses tun (L3, no
// MACs): the kernel path is the one production takes.
package steer
