// Package flow classifies inner packets into bidirectional flows and keeps
// the table that lets the tunnel send return traffic back to GWLB with the
// GENEVE header of the packet that opened (or last refreshed) the flow.
//
// A Key is symmetric: the packet A->B and its reply B->A give the same Key,
// so one table lookup serves both directions. ICMP errors are keyed by the
// packet they quote, so "fragmentation needed" and "port unreachable" follow
// the flow they belong to, and non-first fragments, which carry no ports,
// are mapped to their flow through a fragment key learned from the first
// fragment.
//
// The Table is sharded, bounded and expires idle flows incrementally (per
// shard LRU lists per timeout class), so no lookup ever waits behind a full
// scan. ParsePacket, Learn (refresh) and Lookup allocate nothing.
package flow
