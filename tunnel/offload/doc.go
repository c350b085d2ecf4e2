// Package offload moves many packets of one flow through the tun device as
// one: generic receive offload (GRO) before a tun write and generic
// segmentation offload (GSO) after a tun read, using the virtio-net header
// that tun devices opened with IFF_VNET_HDR put in front of every packet.
//
// Why: the tunnel's cost is per packet in the kernel (one write, one
// forward, one read), not per byte. wireguard-go showed that coalescing a
// batch into GSO super-packets before the tun write, and splitting what the
// kernel hands back, divides that cost by the number of packets merged.
//
// Coalescer (GRO) merges packets of one TCP or UDP flow within a batch
// under the kernel's own rules: same 5-tuple and IP header fields, every
// segment but the last of the same size, contiguous TCP sequence numbers,
// identical TCP options, ack and window, no flags but ACK (PSH only on the
// last), no IP options or fragments, valid checksums (the kernel recomputes
// them on a merged packet, so a corrupt packet must never be merged). It
// never copies: the result is a head packet whose headers are rewritten in
// place plus the payloads of the merged packets, for one writev.
//
// Splitter (GSO) walks a super-packet read from a tun device and produces
// one segment at a time: headers written into a caller buffer (lengths, IP
// id, TCP sequence and flags, checksums fixed) and the payload as a
// sub-slice of the super-packet, again without copying. It parses headers
// the kernel wrote but trusts none of them: every length and offset is
// checked, and malformed input is an error, never a panic.
//
// A merge followed by a split gives back the original packets byte for
// byte, except the IPv4 identification of DF packets (RFC 6864: meaningless
// for atomic datagrams; segments get consecutive ids) and checksums, which
// are recomputed.
package offload
