// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// GENEVE fast path for gwlbproxy's tunnel (see ../doc.go).
//
// geneve_ingress (tc ingress on the underlay): IPv4 or IPv6 + UDP to the
// GENEVE port from an allowed source, GENEVE validated as tunnel/geneve
// does, a known endpoint: learn the flow, strip the outer headers and
// redirect into gwi-<X>'s ingress. Anything else it does not decide goes up
// the stack to the userspace datapath unchanged (TC_ACT_OK).
//
// geneve_egress (tc egress on gwi-<X>/gwo-<X>): look up the flow, push
// Ethernet + IPv4 or IPv6 (the family GWLB's packets came in) + UDP + the
// flow's GENEVE header, redirect to the underlay device the flow arrived
// on. No flow, or a packet it does not handle: TC_ACT_OK, the userspace
// datapath reads it from the tun.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Not in bookworm's 6.1 UAPI headers; the kernels we load on have them
// (6.3+). Older kernels fail the load and auto falls back to userspace.
#define ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)

// HDR_MAX is the longest GENEVE header (base + options) the fast path
// carries; GWLB's is 40 bytes. Longer headers go to userspace.
#define HDR_MAX 72
#define GENEVE_BASE 8
#define MAX_OPTS (HDR_MAX - GENEVE_BASE) / 4

#define ETH_LEN 14
#define IP4_LEN 20
#define IP6_LEN 40
#define UDP_LEN 8
#define OUTER4_LEN (ETH_LEN + IP4_LEN + UDP_LEN)
#define OUTER6_LEN (ETH_LEN + IP6_LEN + UDP_LEN)

#define CLASS_AWS 0x0108
#define PROTO_IPV4 0x0800
#define PROTO_IPV6 0x86DD

// Drop and pass reasons: index into the per-CPU counters array. The
// GENEVE ones equal tunnel/geneve.Reason.
enum reason {
	R_OK = 0,
	R_TRUNCATED = 1,
	R_BAD_VERSION = 2,
	R_BAD_OPTION_LENGTH = 3,
	R_BAD_PROTOCOL = 4,
	R_CONTROL = 5,
	R_CRITICAL_OPTION = 6,
	R_NO_ENDPOINT = 7,
	R_NO_ATTACHMENT = 8,
	R_NO_COOKIE = 9,
	R_FOREIGN_SOURCE = 10,
	// Passed up (not dropped): counted so the split is visible.
	P_NOT_GENEVE = 11,   // not IPv4/UDP to the GENEVE port (left alone)
	P_OUTER = 12,        // IP options, fragment, GSO, long header
	P_UNKNOWN_EP = 13,   // endpoint has no tunnel in the kernel yet
	P_INNER = 14,        // inner packet the fast path does not key
	P_NO_FLOW = 15,      // egress: no flow in the fast path's table
	P_EGRESS_OTHER = 16, // egress: not a tunnel device, too long, pull failed
	E_ADJUST = 17,       // a helper failed: packet dropped
	P_EGRESS_LOCAL = 18, // egress: from a local socket (checksum offload state unknown)
	P_EGRESS_GSO = 19,   // egress: GSO super-packet
	P_EGRESS_CSUM = 20,  // egress: IPv6 outer needs a UDP checksum the program cannot derive
	P_EGRESS_IIF = 21,   // egress: entered from a device that is not a tunnel's
	NUM_REASONS = 22,
};

volatile const __u16 geneve_port = 6081; // host order, set at load
volatile const __u8 out_ttl = 64;

struct lpm4 {
	__u32 prefixlen;
	__u32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm4);
	__type(value, __u8);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} allowed4 SEC(".maps");

struct lpm6 {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm6);
	__type(value, __u8);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} allowed6 SEC(".maps");

// endpoint id -> tunnel.
struct tunnel {
	__u32 in_ifindex; // gwi-<X>
	__u32 slot;       // index into tstats
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct tunnel);
	__uint(max_entries, 65536);
} endpoints SEC(".maps");

// tun ifindex (gwi-/gwo-) -> endpoint.
struct dev {
	__u64 endpoint;
	__u32 slot;
	// l2 is the link header in front of the IP packet on this device: 0
	// for the tun devices (L3). 14 (Ethernet) lets the program serve an
	// Ethernet device too, which is how BPF_PROG_TEST_RUN (always L2 for
	// tc programs) exercises it.
	__u32 l2;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct dev);
	__uint(max_entries, 131072);
} devs SEC(".maps");

// Symmetric flow key, as tunnel/flow.Key: the lower (address, port) first.
struct flow_key {
	__u8 lo[16];
	__u8 hi[16];
	__u16 lo_port; // host order
	__u16 hi_port;
	__u8 proto;
	__u8 v6;
	__u16 pad;
	__u64 endpoint;
};

struct flow {
	__u64 seen;        // bpf_ktime_get_coarse_ns of the last packet either way
	__u8 local[16];    // outer destination of GWLB's packets (IPv4: first 4 bytes)
	__u8 gwlb[16];     // outer source of GWLB's packets
	__u16 gwlb_port;   // network order
	__u16 hdr_len;     // bytes of hdr in use
	__u32 underlay;    // ifindex the flow arrived on
	__u8 mac_local[6]; // destination MAC of GWLB's frames
	__u8 mac_gwlb[6];  // source MAC of GWLB's frames (next hop back)
	__u8 tcp;
	__u8 v6;           // the outer packets are IPv6
	__u8 pad[2];
	__u8 hdr[HDR_MAX]; // GENEVE header and options, byte for byte
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow);
	__uint(max_entries, 65536); // resized at load: tunnel.flows.max_entries
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, NUM_REASONS);
} reasons SEC(".maps");

// Per-tunnel traffic, indexed by tunnel slot.
struct tstat {
	__u64 in_packets, in_bytes;
	__u64 out_packets, out_bytes;
	__u64 last; // bpf_ktime_get_coarse_ns
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct tstat);
	__uint(max_entries, 65536); // resized at load: max_tunnels + 1
} tstats SEC(".maps");

static __always_inline void count(__u32 r)
{
	__u64 *v = bpf_map_lookup_elem(&reasons, &r);
	if (v)
		*v += 1;
}

static __always_inline int pass(__u32 r)
{
	count(r);
	return TC_ACT_OK;
}

static __always_inline int drop(__u32 r)
{
	count(r);
	return TC_ACT_SHOT;
}

static __always_inline void account(__u32 slot, __u64 bytes, int out, __u64 now)
{
	struct tstat *s = bpf_map_lookup_elem(&tstats, &slot);
	if (!s)
		return;
	if (out) {
		s->out_packets++;
		s->out_bytes += bytes;
	} else {
		s->in_packets++;
		s->in_bytes += bytes;
	}
	s->last = now;
}

static __always_inline __u16 load16(const __u8 *p)
{
	return (__u16)p[0] << 8 | p[1];
}

static __always_inline __u64 load64(const __u8 *p)
{
	__u64 v = 0;
#pragma unroll
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

// set_key fills k in canonical order (tunnel/flow's Key.set).
static __always_inline void set_key(struct flow_key *k, const __u8 *a, const __u8 *b, __u16 ap, __u16 bp, int n)
{
	int swap = 0, decided = 0;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (i < n && !decided && a[i] != b[i]) {
			swap = b[i] < a[i];
			decided = 1;
		}
	}
	if (!decided)
		swap = bp < ap;
	const __u8 *lo = swap ? b : a, *hi = swap ? a : b;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		k->lo[i] = i < n ? lo[i] : 0;
		k->hi[i] = i < n ? hi[i] : 0;
	}
	k->lo_port = swap ? bp : ap;
	k->hi_port = swap ? ap : bp;
}

// inner_key keys the IP packet at p (ending at end), length len, as
// tunnel/flow.ParsePacket would. It returns 0, or -1 for anything it
// leaves to userspace: IPv4 options, fragments, IPv6 extension headers,
// ICMP errors (they belong to the quoted flow), padding, truncation.
static __always_inline int inner_key(struct flow_key *k, __u8 *p, void *end, __u32 len, int v6, __u8 *tcp)
{
	__u8 *l4;
	__u8 proto;
	if (!v6) {
		if ((void *)(p + 20) > end)
			return -1;
		if (p[0] != 0x45)
			return -1;
		if (load16(p + 2) != len)
			return -1;
		if (load16(p + 6) & 0x3fff) // MF or offset
			return -1;
		proto = p[9];
		l4 = p + 20;
	} else {
		if ((void *)(p + 40) > end)
			return -1;
		if ((p[0] >> 4) != 6)
			return -1;
		if (load16(p + 4) + 40 != len)
			return -1;
		proto = p[6];
		l4 = p + 40;
	}
	__u16 sp = 0, dp = 0;
	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
	case IPPROTO_UDPLITE:
		if ((void *)(l4 + 4) > end)
			return -1;
		sp = load16(l4);
		dp = load16(l4 + 2);
		break;
	case IPPROTO_ICMP:
		if (v6)
			break; // keyed on addresses only, as userspace does
		if ((void *)(l4 + 8) > end)
			return -1;
		if (l4[0] == 3 || l4[0] == 11 || l4[0] == 12)
			return -1; // error: userspace keys it by the quoted packet
		if (l4[0] == 0 || l4[0] == 8)
			sp = dp = load16(l4 + 4);
		break;
	case 58: // ICMPv6
		if (!v6)
			break;
		if ((void *)(l4 + 8) > end)
			return -1;
		if (l4[0] >= 1 && l4[0] <= 4)
			return -1;
		if (l4[0] == 128 || l4[0] == 129)
			sp = dp = load16(l4 + 4);
		break;
	case 0:  // hop-by-hop
	case 43: // routing
	case 44: // fragment
	case 51: // AH
	case 60: // destination options
		if (v6)
			return -1;
		break;
	}
	k->proto = proto;
	k->v6 = v6;
	k->pad = 0;
	*tcp = proto == IPPROTO_TCP;
	// Bounds again next to the use: clang may merge the two families'
	// paths in a way the verifier cannot follow.
	if (v6) {
		if ((void *)(p + 40) > end)
			return -1;
		set_key(k, p + 8, p + 24, sp, dp, 16);
	} else {
		if ((void *)(p + 20) > end)
			return -1;
		set_key(k, p + 12, p + 16, sp, dp, 4);
	}
	return 0;
}

static __always_inline int same_flow(const struct flow *a, const struct flow *b)
{
	const __u64 *x = (const void *)a, *y = (const void *)b;
	// Everything but seen (the first word).
#pragma unroll
	for (int i = 1; i < sizeof(struct flow) / 8; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

// How much of a packet the programs need in the linear area.
#define PULL_IN (OUTER6_LEN + HDR_MAX + 40 + 8)
#define PULL_OUT (ETH_LEN + 40 + 8)

// outer6_ext judges an IPv6 packet at ip whose first extension header
// follows the fixed header: passed up either way, counted when it is
// GENEVE (UDP to the GENEVE port right after that header).
static __always_inline int outer6_ext(__u8 *ip, void *end)
{
	__u8 *x = ip + IP6_LEN;
	if ((void *)(x + 8) > end)
		return TC_ACT_OK;
	__u32 xlen = ip[6] == 44 ? 8 : ((__u32)x[1] + 1) * 8;
	if (ip[6] == 44 && (load16(x + 2) & 0xfff8))
		return TC_ACT_OK; // not the first fragment: no UDP header
	if (x[0] != IPPROTO_UDP || xlen > 256)
		return TC_ACT_OK;
	__u8 *u = x + xlen;
	if ((void *)(u + 4) > end)
		return TC_ACT_OK;
	if (load16(u + 2) != geneve_port)
		return TC_ACT_OK;
	return pass(P_OUTER);
}

// ingress handles one outer family: v6o is a constant at each call, so
// the offsets below are constants for the verifier.
static __always_inline int ingress(struct __sk_buff *skb, const int v6o)
{
	const __u32 ipl = v6o ? IP6_LEN : IP4_LEN;
	const __u32 outer = ETH_LEN + ipl + UDP_LEN;
	__u32 len = skb->len;
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	if (end - data < PULL_IN && end - data < len) {
		// Headers outside the linear area (an AF_PACKET sender, some
		// drivers' jumbo frames): bring them in before looking.
		if (bpf_skb_pull_data(skb, len < PULL_IN ? len : PULL_IN))
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	if (data + outer > end)
		return TC_ACT_OK;
	__u8 *ip = data + ETH_LEN;
	__u8 *udp = ip + ipl;
	if (v6o) {
		if ((ip[0] >> 4) != 6)
			return TC_ACT_OK;
		switch (ip[6]) {
		case IPPROTO_UDP:
			break;
		case 0:  // hop-by-hop
		case 43: // routing
		case 44: // fragment: the kernel reassembles
		case 60: // destination options
			// Extension headers move the UDP header: leave it to the
			// kernel and userspace. Counted as passed up only when the
			// first one leads to UDP to the GENEVE port (not, say, an
			// MLD report behind hop-by-hop options).
			return outer6_ext(ip, end);
		default:
			return TC_ACT_OK;
		}
	} else {
		if (ip[9] != IPPROTO_UDP)
			return TC_ACT_OK;
		if ((ip[0] & 0x0f) != 5) {
			// IP options move the UDP header; leave it to the kernel
			// and userspace if it is GENEVE at all.
			return pass(P_OUTER);
		}
	}
	if (load16(udp + 2) != geneve_port)
		return TC_ACT_OK;
	if (v6o) {
		struct lpm6 src = {.prefixlen = 128};
		__builtin_memcpy(src.addr, ip + 8, 16);
		if (!bpf_map_lookup_elem(&allowed6, &src))
			return drop(R_FOREIGN_SOURCE);
	} else {
		if (load16(ip + 6) & 0x3fff)
			return pass(P_OUTER); // fragmented GENEVE: the kernel reassembles
		struct lpm4 src = {.prefixlen = 32};
		__builtin_memcpy(&src.addr, ip + 12, 4);
		if (!bpf_map_lookup_elem(&allowed4, &src))
			return drop(R_FOREIGN_SOURCE);
	}
	if (skb->gso_size)
		return pass(P_OUTER);

	if (len < outer + GENEVE_BASE)
		return drop(R_TRUNCATED);
	// The IP length (IPv6: payload length) must be the frame's, as must
	// the UDP length: padding or a jumbogram is for the kernel to judge.
	if (load16(ip + (v6o ? 4 : 2)) != len - ETH_LEN - (v6o ? IP6_LEN : 0) ||
	    load16(udp + 4) != len - ETH_LEN - ipl)
		return pass(P_OUTER);
	__u8 *g = data + outer;
	if ((void *)(g + GENEVE_BASE) > end)
		return drop(R_TRUNCATED);
	if (g[0] >> 6)
		return drop(R_BAD_VERSION);
	__u32 hlen = GENEVE_BASE + (g[0] & 0x3f) * 4;
	if (outer + hlen > len)
		return drop(R_TRUNCATED);
	if (hlen > HDR_MAX)
		return pass(P_OUTER);
	if (g[1] & 0x80)
		return drop(R_CONTROL);
	__u16 proto = load16(g + 2);
	if (proto != PROTO_IPV4 && proto != PROTO_IPV6)
		return drop(R_BAD_PROTOCOL);

	__u64 endpoint = 0;
	__u32 have = 0;
	__u32 off = GENEVE_BASE;
	for (int i = 0; i < MAX_OPTS; i++) {
		if (off >= hlen)
			break;
		if (off + 4 > hlen)
			return drop(R_BAD_OPTION_LENGTH);
		__u8 *o = g + (off & 0x7f);
		if ((void *)(o + 4) > end)
			return drop(R_TRUNCATED);
		__u16 class = load16(o);
		__u8 type = o[2];
		__u32 dlen = (o[3] & 0x1f) * 4;
		__u32 oend = off + 4 + dlen;
		if (oend > hlen)
			return drop(R_BAD_OPTION_LENGTH);
		int known = 0;
		if (class == CLASS_AWS && type >= 1 && type <= 3) {
			if ((type == 3 && dlen != 4) || (type != 3 && dlen != 8))
				return drop(R_BAD_OPTION_LENGTH);
			if (type == 1) {
				if ((void *)(o + 12) > end)
					return drop(R_TRUNCATED);
				endpoint = load64(o + 4);
			}
			have |= 1 << type;
			known = 1;
		}
		if (!known && (type & 0x80))
			return drop(R_CRITICAL_OPTION);
		off = oend;
	}
	if (off < hlen)
		return pass(P_OUTER); // more options than we walk
	if (!(have & 2))
		return drop(R_NO_ENDPOINT);
	if (!(have & 4))
		return drop(R_NO_ATTACHMENT);
	if (!(have & 8))
		return drop(R_NO_COOKIE);
	__u32 inner_len = len - outer - hlen;
	if (inner_len == 0)
		return drop(R_TRUNCATED);
	__u8 *inner = g + (hlen & 0x7f);
	if ((void *)(inner + 1) > end)
		return drop(R_TRUNCATED);
	int v6 = proto == PROTO_IPV6;
	if ((inner[0] >> 4) != (v6 ? 6 : 4))
		return drop(R_BAD_PROTOCOL);

	struct tunnel *t = bpf_map_lookup_elem(&endpoints, &endpoint);
	if (!t)
		return pass(P_UNKNOWN_EP);
	struct flow_key k = {.endpoint = endpoint};
	__u8 tcp = 0;
	if (inner_key(&k, inner, end, inner_len, v6, &tcp))
		return pass(P_INNER);

	// Learn: the newest header wins (GWLB changes the cookie when a
	// 5-tuple is reused); an unchanged flow only has its time refreshed.
	struct flow f = {};
	__u64 now = bpf_ktime_get_coarse_ns();
	f.seen = now;
	if (v6o) {
		__builtin_memcpy(f.local, ip + 24, 16);
		__builtin_memcpy(f.gwlb, ip + 8, 16);
	} else {
		__builtin_memcpy(f.local, ip + 16, 4);
		__builtin_memcpy(f.gwlb, ip + 12, 4);
	}
	f.v6 = v6o;
	__builtin_memcpy(&f.gwlb_port, udp, 2);
	f.hdr_len = hlen;
	f.underlay = skb->ingress_ifindex;
	__builtin_memcpy(f.mac_local, data, 6);
	__builtin_memcpy(f.mac_gwlb, data + 6, 6);
	f.tcp = tcp;
	__u64 n = hlen;
	asm volatile("" : "+r"(n)); // keep the bound check on this register
	if (n < GENEVE_BASE || n > HDR_MAX)
		return pass(P_OUTER);
	if (bpf_skb_load_bytes(skb, outer, f.hdr, n))
		return pass(P_OUTER);
	struct flow *old = bpf_map_lookup_elem(&flows, &k);
	if (old && same_flow(old, &f)) {
		if (now - old->seen > 1000000000ULL / 4)
			old->seen = now;
	} else {
		bpf_map_update_elem(&flows, &k, &f, BPF_ANY);
	}
	__u32 ifindex = t->in_ifindex, slot = t->slot;
	account(slot, inner_len, 0, now);

	// Keep a checksum the device verified for the inner packet
	// (CHECKSUM_UNNECESSARY with csum_level >= 1) and only that: the
	// level that covered the outer UDP header goes with it.
	if (bpf_skb_adjust_room(skb, -(int)(ipl + UDP_LEN + hlen), BPF_ADJ_ROOM_MAC,
				(v6 ? ADJ_ROOM_DECAP_L3_IPV6 : ADJ_ROOM_DECAP_L3_IPV4) | BPF_F_ADJ_ROOM_NO_CSUM_RESET))
		return drop(E_ADJUST);
	bpf_csum_level(skb, BPF_CSUM_LEVEL_DEC);
	return bpf_redirect(ifindex, BPF_F_INGRESS);
}

SEC("tc")
int geneve_ingress(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return ingress(skb, 0);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return ingress(skb, 1);
	return TC_ACT_OK;
}

// csum_fold_raw folds a 32-bit one's complement sum to 16 bits.
static __always_inline __u16 csum_fold_raw(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return s;
}

static __always_inline __u16 csum_fold(__u32 s)
{
	return ~csum_fold_raw(s);
}

static __always_inline __u32 sum16(const __u8 *p, int words)
{
	__u32 s = 0;
#pragma clang loop unroll(disable)
	for (int i = 0; i < words; i++)
		s += (__u32)p[2 * i] << 8 | p[2 * i + 1];
	return s;
}

// inner_sum returns the one's complement sum of the whole inner packet at
// p (keyed by inner_key, so without IPv4 options or IPv6 extension
// headers) without reading its payload, or -1 when it cannot: local
// checksum offload (the kernel's checksum-offloads.rst). A valid IPv4
// header sums to zero; a TCP, UDP (checksum set) or ICMPv6 segment sums
// to the complement of its pseudo-header; an ICMP message sums to zero.
// A packet whose transport checksum the kernel still has to fill in
// (CHECKSUM_PARTIAL) holds the pseudo-header sum in that field and sums
// the same once it is filled. Anything else (UDP checksum 0, other
// protocols) cannot be summed this way.
static __always_inline __s64 inner_sum(const __u8 *p, void *end, int v6)
{
	if (v6) {
		if ((void *)(p + 48) > end)
			return -1;
		__u8 proto = p[6];
		const __u8 *l4 = p + 40;
		if (proto == IPPROTO_UDP && !l4[6] && !l4[7])
			return -1;
		if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != 58)
			return -1;
		__u32 pseudo = sum16(p + 8, 16) + load16(p + 4) + proto;
		return (__u32)sum16(p, 20) + (__u16)~csum_fold_raw(pseudo);
	}
	if ((void *)(p + 28) > end)
		return -1;
	__u8 proto = p[9];
	const __u8 *l4 = p + 20;
	if (proto == IPPROTO_ICMP)
		return 0;
	if (proto == IPPROTO_UDP && !l4[6] && !l4[7])
		return -1;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return -1;
	__u32 pseudo = sum16(p + 12, 4) + proto + (load16(p + 2) - 20);
	return (__u16)~csum_fold_raw(pseudo);
}

#define OUTER_MAX (ETH_LEN + IP6_LEN + UDP_LEN + HDR_MAX)

// encap pushes the flow's outer headers (family v6o, a constant at each
// call), built in o, in front of the inner packet, which starts l2 bytes
// into the frame, and redirects to the underlay.
static __always_inline int encap(struct __sk_buff *skb, struct flow *f, __u8 *o, __u32 l2, __u32 len, __s64 isum, __u32 slot, __u64 now, const int v6o)
{
	const __u32 ipl = v6o ? IP6_LEN : IP4_LEN;
	__u32 hlen = f->hdr_len;
	if (hlen < GENEVE_BASE || hlen > HDR_MAX)
		return pass(P_NO_FLOW);
	if (v6o && isum < 0)
		return pass(P_EGRESS_CSUM); // IPv6 forbids UDP checksum 0
	__builtin_memcpy(o, f->mac_gwlb, 6);
	__builtin_memcpy(o + 6, f->mac_local, 6);
	o[12] = v6o ? 0x86 : 0x08;
	o[13] = v6o ? 0xdd : 0x00;
	__u8 *ip = o + ETH_LEN, *u = ip + ipl;
	__u32 ulen = UDP_LEN + hlen + len;
	__u32 s;
	if (v6o) {
		if (ulen > 0xffff)
			return pass(P_EGRESS_OTHER);
		ip[0] = 0x60;
		ip[1] = 0;
		ip[2] = 0;
		ip[3] = 0;
		ip[4] = ulen >> 8;
		ip[5] = ulen;
		ip[6] = IPPROTO_UDP;
		ip[7] = out_ttl;
		__builtin_memcpy(ip + 8, f->local, 16);
		__builtin_memcpy(ip + 24, f->gwlb, 16);
		s = sum16(ip + 8, 16);
	} else {
		if (IP4_LEN + ulen > 0xffff)
			return pass(P_EGRESS_OTHER);
		__u32 tot = IP4_LEN + ulen;
		ip[0] = 0x45;
		ip[1] = 0;
		ip[2] = tot >> 8;
		ip[3] = tot;
		ip[4] = 0; // id 0 with DF, as the userspace datapath sends
		ip[5] = 0;
		ip[6] = 0x40;
		ip[7] = 0;
		ip[8] = out_ttl;
		ip[9] = IPPROTO_UDP;
		ip[10] = 0;
		ip[11] = 0;
		__builtin_memcpy(ip + 12, f->local, 4);
		__builtin_memcpy(ip + 16, f->gwlb, 4);
		__u16 c = csum_fold(sum16(ip, IP4_LEN / 2));
		ip[10] = c >> 8;
		ip[11] = c;
		s = sum16(ip + 12, 4);
	}
	__builtin_memcpy(u, &f->gwlb_port, 2);
	u[2] = geneve_port >> 8;
	u[3] = geneve_port;
	u[4] = ulen >> 8;
	u[5] = ulen;
	u[6] = 0;
	u[7] = 0;
	__builtin_memcpy(u + UDP_LEN, f->hdr, HDR_MAX);
	if (isum >= 0) {
		// Pseudo-header, UDP header, GENEVE header: the inner packet's
		// share is isum.
		s += IPPROTO_UDP + ulen + ulen + load16(u) + geneve_port;
#pragma clang loop unroll(disable)
		for (int i = 0; i < HDR_MAX / 2; i++) {
			if (2 * i >= hlen)
				break;
			s += (__u32)f->hdr[2 * i] << 8 | f->hdr[2 * i + 1];
		}
		__u16 c = csum_fold(csum_fold_raw(s) + (__u32)isum);
		if (!c)
			c = 0xffff; // 0 means "no checksum" in UDP
		u[6] = c >> 8;
		u[7] = c;
	} // else IPv4 only: checksum 0, legal and what GWLB accepts
	__u32 underlay = f->underlay;

	__u64 hdr = ETH_LEN + ipl + UDP_LEN + hlen;
	asm volatile("" : "+r"(hdr));
	if (hdr > ETH_LEN + ipl + UDP_LEN + HDR_MAX || hdr < l2)
		return pass(P_NO_FLOW);
	if (bpf_skb_change_head(skb, hdr - l2, 0))
		return drop(E_ADJUST);
	if (bpf_skb_store_bytes(skb, 0, o, hdr, 0))
		return drop(E_ADJUST);
	account(slot, len, 1, now);
	return bpf_redirect(underlay, 0);
}

SEC("tc")
int geneve_egress(struct __sk_buff *skb)
{
	if (skb->gso_size)
		return pass(P_EGRESS_GSO);
	__u32 ifindex = skb->ifindex;
	struct dev *d = bpf_map_lookup_elem(&devs, &ifindex);
	if (!d)
		return pass(P_EGRESS_OTHER);
	// Only packets that entered through a tunnel have a checksum state we
	// know: GWLB's (complete). A packet from a local socket (no input
	// device) or forwarded from another device (a NAT reply from a veth
	// peer) may be CHECKSUM_PARTIAL with its inner checksum left to be
	// filled at an offset the encapsulation would hide; the userspace
	// path completes it.
	__u32 iif = skb->ingress_ifindex;
	if (!iif)
		return pass(P_EGRESS_LOCAL);
	if (!bpf_map_lookup_elem(&devs, &iif))
		return pass(P_EGRESS_IIF);
	int v6;
	if (skb->protocol == bpf_htons(ETH_P_IP))
		v6 = 0;
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		v6 = 1;
	else
		return pass(P_EGRESS_OTHER);
	__u32 l2 = d->l2 ? ETH_LEN : 0;
	__u32 slot = d->slot;
	struct flow_key k = {.endpoint = d->endpoint};
	__u32 len = skb->len;
	if (len <= l2)
		return pass(P_EGRESS_OTHER);
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	if (end - data < PULL_OUT && end - data < len) {
		if (bpf_skb_pull_data(skb, len < PULL_OUT ? len : PULL_OUT))
			return pass(P_EGRESS_OTHER);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	__u8 *p = data + l2;
	len -= l2;
	__u8 tcp;
	if (inner_key(&k, p, end, len, v6, &tcp))
		return pass(P_INNER);
	__s64 isum = inner_sum(p, end, v6);
	struct flow *f = bpf_map_lookup_elem(&flows, &k);
	if (!f)
		return pass(P_NO_FLOW);
	__u64 now = bpf_ktime_get_coarse_ns();
	if (now - f->seen > 1000000000ULL / 4)
		f->seen = now;
	__u8 o[OUTER_MAX] __attribute__((aligned(8)));
	if (f->v6)
		return encap(skb, f, o, l2, len, isum, slot, now, 1);
	return encap(skb, f, o, l2, len, isum, slot, now, 0);
}

char __license[] SEC("license") = "Dual MIT/GPL";
