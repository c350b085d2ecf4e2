//go:build linux

// Package fastpath is the tunnel's in-kernel GENEVE datapath: two tc BPF
// programs (bpf/fastpath.c) and the Go that loads, attaches and reads them.
//
// Why in the kernel: the userspace datapath pays four kernel crossings per
// packet (UDP receive, tun write, tun read, raw send) and, flooded, pays
// for packets it then drops at its socket. The programs keep the common
// case — an IPv4 or IPv6 underlay, a GENEVE header of at most 72 bytes, an
// endpoint whose tunnel pair exists, an inner packet with a plain flow key —
// inside the kernel's packet path:
//
//   - geneve_ingress on the underlay validates the packet as tunnel/geneve
//     does (drops counted by the same reasons), learns the flow (symmetric
//     5-tuple + endpoint -> the GENEVE header byte for byte, outer
//     addresses, GWLB's source port, the MACs and underlay device) in an
//     LRU hash, strips the outer headers and redirects into gwi-<X>'s
//     ingress, where steering sees the packet exactly as before.
//   - geneve_egress on gwi-<X> and gwo-<X> looks the flow up, pushes
//     Ethernet/IPv4 or IPv6 (the family GWLB used)/UDP/GENEVE and
//     redirects to the underlay device toward the MAC GWLB's packets came
//     from. The UDP checksum is valid and costs no pass over the payload:
//     the inner packet's own checksums already sum it (local checksum
//     offload), so the packet is byte for byte the userspace datapath's.
//     Only an inner UDP datagram without a checksum (or another transport)
//     leaves nothing to derive it from: over IPv4 the checksum is 0, over
//     IPv6, where 0 is not allowed, the packet goes to userspace.
//
// Everything else (fragments, ICMP errors that need their quoted flow,
// packets from local sockets or GSO super-packets, unknown endpoints,
// unknown flows, IPv4 options and IPv6 extension headers on the outer
// packet) is left to the userspace datapath unchanged, which stays the
// judge of what it cannot handle either. The userspace return path falls back to this package's
// flow map (Lookup) for flows learned here.
package fastpath
