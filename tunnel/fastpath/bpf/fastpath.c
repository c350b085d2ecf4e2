// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// GENEVE fast path for gwlbproxy's tunnel (see ../doc.go).
//
// geneve_ingress (tc ingress on the underlay): IPv4 + UDP to the GENEVE
// port from an allowed source, GENEVE validated as tunnel/geneve does, a
// known endpoint: learn the flow, strip the outer headers and redirect into
// gwi-<X>'s ingress. Anything else it does not decide goes up the stack to
// the userspace datapath unchanged (TC_ACT_OK).
//
// geneve_egress (tc egress on gwi-<X>/gwo-<X>): look up the flow, push
// Ethernet + IPv4 + UDP + the flow's GENEVE header, redirect to the
// underlay device the flow arrived on. No flow, or a packet it does not
// handle: TC_ACT_OK, the userspace datapath reads it from the tun.

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
#define UDP_LEN 8
#define OUTER_LEN (ETH_LEN + IP4_LEN + UDP_LEN)

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
	P_EGRESS_IPV6 = 20,  // egress: IPv6 inner packet
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
	__u32 pad;
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
	__u32 local;       // outer destination of GWLB's packets (network order)
	__u32 gwlb;        // outer source of GWLB's packets
	__u16 gwlb_port;   // network order
	__u16 hdr_len;     // bytes of hdr in use
	__u32 underlay;    // ifindex the flow arrived on
	__u8 mac_local[6]; // destination MAC of GWLB's frames
	__u8 mac_gwlb[6];  // source MAC of GWLB's frames (next hop back)
	__u8 tcp;
	__u8 pad[3];
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
#define PULL_IN (OUTER_LEN + HDR_MAX + 40 + 8)
#define PULL_OUT (40 + 8)

SEC("tc")
int geneve_ingress(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK; // IPv6 underlay: userspace (uncounted, not ours)
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
	if (data + OUTER_LEN > end)
		return TC_ACT_OK;
	__u8 *ip = data + ETH_LEN;
	if (ip[9] != IPPROTO_UDP)
		return TC_ACT_OK;
	__u8 *udp = ip + IP4_LEN;
	if ((ip[0] & 0x0f) != 5) {
		// IP options move the UDP header; leave it to the kernel and
		// userspace if it is GENEVE at all.
		return pass(P_OUTER);
	}
	if (load16(udp + 2) != geneve_port)
		return TC_ACT_OK;
	if (load16(ip + 6) & 0x3fff)
		return pass(P_OUTER); // fragmented GENEVE: the kernel reassembles
	struct lpm4 src = {.prefixlen = 32};
	__builtin_memcpy(&src.addr, ip + 12, 4);
	if (!bpf_map_lookup_elem(&allowed4, &src))
		return drop(R_FOREIGN_SOURCE);
	if (skb->gso_size)
		return pass(P_OUTER);

	if (len < OUTER_LEN + GENEVE_BASE)
		return drop(R_TRUNCATED);
	if (load16(ip + 2) != len - ETH_LEN || load16(udp + 4) != len - ETH_LEN - IP4_LEN)
		return pass(P_OUTER); // padding or a length the kernel will judge
	__u8 *g = data + OUTER_LEN;
	if ((void *)(g + GENEVE_BASE) > end)
		return drop(R_TRUNCATED);
	if (g[0] >> 6)
		return drop(R_BAD_VERSION);
	__u32 hlen = GENEVE_BASE + (g[0] & 0x3f) * 4;
	if (OUTER_LEN + hlen > len)
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
	__u32 inner_len = len - OUTER_LEN - hlen;
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
	__builtin_memcpy(&f.local, ip + 16, 4);
	__builtin_memcpy(&f.gwlb, ip + 12, 4);
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
	if (bpf_skb_load_bytes(skb, OUTER_LEN, f.hdr, n))
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

	if (bpf_skb_adjust_room(skb, -(int)(IP4_LEN + UDP_LEN + hlen), BPF_ADJ_ROOM_MAC,
				v6 ? ADJ_ROOM_DECAP_L3_IPV6 : ADJ_ROOM_DECAP_L3_IPV4))
		return drop(E_ADJUST);
	return bpf_redirect(ifindex, BPF_F_INGRESS);
}

static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

struct outer {
	__u8 eth[ETH_LEN];
	__u8 ip[IP4_LEN];
	__u8 udp[UDP_LEN];
	__u8 hdr[HDR_MAX];
} __attribute__((packed));

SEC("tc")
int geneve_egress(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return pass(P_EGRESS_IPV6);
	if (skb->sk)
		return pass(P_EGRESS_LOCAL);
	if (skb->gso_size)
		return pass(P_EGRESS_GSO);
	__u32 ifindex = skb->ifindex;
	struct dev *d = bpf_map_lookup_elem(&devs, &ifindex);
	if (!d)
		return pass(P_EGRESS_OTHER);
	// Only packets that entered through a tunnel have a checksum state we
	// know: GWLB's (complete). A packet forwarded from another device (a
	// NAT reply from a veth peer) may be CHECKSUM_PARTIAL, its inner
	// checksum left to be filled at an offset the encapsulation would
	// hide; the userspace path completes it.
	__u32 iif = skb->ingress_ifindex;
	if (!bpf_map_lookup_elem(&devs, &iif))
		return pass(P_EGRESS_IIF);
	__u32 len = skb->len;
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	if (end - data < PULL_OUT && end - data < len) {
		if (bpf_skb_pull_data(skb, len < PULL_OUT ? len : PULL_OUT))
			return pass(P_EGRESS_OTHER);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	struct flow_key k = {.endpoint = d->endpoint};
	__u32 slot = d->slot;
	__u8 tcp;
	if (inner_key(&k, data, end, len, 0, &tcp))
		return pass(P_INNER);
	struct flow *f = bpf_map_lookup_elem(&flows, &k);
	if (!f)
		return pass(P_NO_FLOW);
	__u32 hlen = f->hdr_len;
	if (hlen < GENEVE_BASE || hlen > HDR_MAX)
		return pass(P_NO_FLOW);
	__u64 now = bpf_ktime_get_coarse_ns();
	if (now - f->seen > 1000000000ULL / 4)
		f->seen = now;

	struct outer o;
	__builtin_memcpy(o.eth, f->mac_gwlb, 6);
	__builtin_memcpy(o.eth + 6, f->mac_local, 6);
	o.eth[12] = 0x08;
	o.eth[13] = 0x00;
	__u32 ulen = UDP_LEN + hlen + len;
	__u32 tot = IP4_LEN + ulen;
	if (tot > 0xffff)
		return pass(P_EGRESS_OTHER);
	o.ip[0] = 0x45;
	o.ip[1] = 0;
	o.ip[2] = tot >> 8;
	o.ip[3] = tot;
	o.ip[4] = 0; // id 0 with DF, as the userspace datapath sends
	o.ip[5] = 0;
	o.ip[6] = 0x40;
	o.ip[7] = 0;
	o.ip[8] = out_ttl;
	o.ip[9] = IPPROTO_UDP;
	o.ip[10] = 0;
	o.ip[11] = 0;
	__builtin_memcpy(o.ip + 12, &f->local, 4);
	__builtin_memcpy(o.ip + 16, &f->gwlb, 4);
	__u32 s = 0;
#pragma unroll
	for (int i = 0; i < IP4_LEN; i += 2)
		s += (__u32)o.ip[i] << 8 | o.ip[i + 1];
	__u16 c = csum_fold(s);
	o.ip[10] = c >> 8;
	o.ip[11] = c;
	__builtin_memcpy(o.udp, &f->gwlb_port, 2);
	o.udp[2] = geneve_port >> 8;
	o.udp[3] = geneve_port;
	o.udp[4] = ulen >> 8;
	o.udp[5] = ulen;
	o.udp[6] = 0; // no checksum: legal for IPv4, and what GWLB accepts
	o.udp[7] = 0;
	__builtin_memcpy(o.hdr, f->hdr, HDR_MAX);
	__u32 underlay = f->underlay;

	__u64 push = OUTER_LEN + hlen;
	asm volatile("" : "+r"(push));
	if (push > sizeof(o))
		return pass(P_NO_FLOW);
	if (bpf_skb_change_head(skb, push, 0))
		return drop(E_ADJUST);
	if (bpf_skb_store_bytes(skb, 0, &o, push, 0))
		return drop(E_ADJUST);
	account(slot, len, 1, now);
	return bpf_redirect(underlay, 0);
}

char __license[] SEC("license") = "Dual MIT/GPL";
