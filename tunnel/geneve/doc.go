// Package geneve parses and builds the GENEVE encapsulation (RFC 8926) as
// used by AWS Gateway Load Balancer.
//
// GWLB sends outer IPv4/UDP to port 6081 carrying a GENEVE header with three
// options of class 0x0108: the GWLB endpoint id (type 1, 8 bytes), the
// attachment id (type 2, 8 bytes) and the flow cookie (type 3, 4 bytes).
// Return traffic must carry the same header and options, byte for byte, as
// the newest packet GWLB sent for the flow, so Parse exposes the received
// header verbatim in Header.Raw rather than asking callers to rebuild it.
//
// Parse is on the per-packet hot path: it allocates nothing and never
// panics on hostile input (see FuzzParse).
package geneve
