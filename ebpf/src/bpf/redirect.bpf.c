// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
//
// NHAM's XDP program. Unfiltered (a VNF's port, a sink): every frame that
// arrives is redirected to the AF_XDP socket registered for its receive
// queue in `xsks`. Filtered (a chain's ingress, its egress): only frames
// that may match one of the chain's classifier rules in `rules` are; every
// other frame (ARP, ICMP to the host, management traffic, a rule-less
// egress's every frame) goes on to the kernel stack (XDP_PASS), counted.
// When no socket is registered for a queue the frame goes on to the kernel
// too, so nothing is silently dropped here.
//
// "May match": a frame the SFF's classifier would match is always
// redirected (a frame that bypassed the chain would bypass its firewall).
// Where this program cannot tell (a fragment's or an IPv6 extension
// header's ports, a truncated transport header), it redirects, and the
// classifier decides (a miss there is counted and dropped).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_RULES 64
// A rule whose prefixes are of different families: it matches nothing.
#define FAMILY_NEVER 255
#define HAS_SRC_PORTS 1
#define HAS_DST_PORTS 2

// One classifier rule (crate `nham_ebpf::XdpRule` writes it byte for
// byte). Addresses and masks in network byte order, IPv4 in word 0; ports
// in host byte order.
struct nham_rule {
	__u8 family; // 0: any, 4, 6, FAMILY_NEVER
	__u8 proto;
	__u8 has_proto;
	__u8 has_ports;
	__u16 sport_lo, sport_hi, dport_lo, dport_hi;
	__u32 src[4], src_mask[4], dst[4], dst_mask[4];
};

struct nham_config {
	__u32 filter; // 0: redirect every frame; 1: only those that may match
	__u32 rules;
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nham_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_RULES);
	__type(key, __u32);
	__type(value, struct nham_rule);
} rules SEC(".maps");

// 0: frames redirected; 1: frames passed to the kernel (no rule matched,
// or no socket on their queue).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// What the program could read of a frame.
struct flow {
	__u32 src[4], dst[4];
	__u8 family;
	__u8 proto;
	// The transport protocol is known (not behind IPv6 extension headers).
	__u8 proto_known;
	// 0: ports read; 1: the protocol has none (the classifier's 0, 0);
	// 2: not readable (a fragment, a truncated header): any port may match.
	__u8 ports;
	__u16 sport, dport;
};

// parse()'s answer for a frame it cannot read far enough but the
// classifier might still match: redirect, the classifier decides.
#define MAYBE 2

static __always_inline int is_tag(__u16 type)
{
	return type == bpf_htons(ETH_P_8021Q) || type == bpf_htons(ETH_P_8021AD) ||
	       type == bpf_htons(0x9100);
}

// 1: `f` filled; 0: not IP (the kernel's); MAYBE: the classifier's call.
static __always_inline int parse(void *data, void *end, struct flow *f)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 0;
	__u16 type = eth->h_proto;
	void *l3 = eth + 1;
	// The classifier (etherparse) reads through up to three VLAN tags
	// (802.1Q, 802.1ad, 0x9100) and an unencrypted MACsec header: so
	// does this, and what it cannot follow it leaves to the classifier.
#pragma unroll
	for (int i = 0; i < 3; i++) {
		if (!is_tag(type))
			break;
		__be16 *vlan = l3;
		if ((void *)(vlan + 2) > end)
			return 0;
		type = vlan[1];
		l3 = vlan + 2;
	}
	if (is_tag(type) || type == bpf_htons(0x88E5))
		return MAYBE;
	void *l4 = 0;
	if (type == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return 0;
		f->family = 4;
		f->src[0] = ip->saddr;
		f->dst[0] = ip->daddr;
		f->proto = ip->protocol;
		f->proto_known = 1;
		// RFC 791: "The fragment offset ... indicates where in the
		// datagram this fragment belongs"; only an unfragmented datagram
		// carries its ports here for certain.
		if (ip->frag_off & bpf_htons(0x3FFF))
			f->ports = 2;
		else
			l4 = (void *)ip + ip->ihl * 4;
	} else if (type == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return 0;
		f->family = 6;
#pragma unroll
		for (int w = 0; w < 4; w++) {
			f->src[w] = ip6->saddr.in6_u.u6_addr32[w];
			f->dst[w] = ip6->daddr.in6_u.u6_addr32[w];
		}
		f->proto = ip6->nexthdr;
		if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP || f->proto == IPPROTO_ICMPV6) {
			f->proto_known = 1;
			l4 = ip6 + 1;
		} else {
			// Extension headers (or an unusual payload): the transport
			// protocol and ports are the classifier's to find.
			f->ports = 2;
		}
	} else {
		return 0;
	}
	if (f->ports == 2)
		return 1;
	if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) {
		__be16 *p = l4;
		if (!p || (void *)(p + 2) > end) {
			f->ports = 2;
		} else {
			f->sport = bpf_ntohs(p[0]);
			f->dport = bpf_ntohs(p[1]);
		}
	} else {
		f->ports = 1;
	}
	return 1;
}

static __always_inline int in(__u16 v, __u16 lo, __u16 hi)
{
	return v >= lo && v <= hi;
}

static __always_inline int matches(const struct nham_rule *r, const struct flow *f)
{
	if (r->family == FAMILY_NEVER)
		return 0;
	if (r->family) {
		if (r->family != f->family)
			return 0;
#pragma unroll
		for (int w = 0; w < 4; w++) {
			if ((f->src[w] & r->src_mask[w]) != r->src[w])
				return 0;
			if ((f->dst[w] & r->dst_mask[w]) != r->dst[w])
				return 0;
		}
	}
	if (r->has_proto && f->proto_known && r->proto != f->proto)
		return 0;
	if (f->ports == 2)
		return 1;
	if ((r->has_ports & HAS_SRC_PORTS) && !in(f->sport, r->sport_lo, r->sport_hi))
		return 0;
	if ((r->has_ports & HAS_DST_PORTS) && !in(f->dport, r->dport_lo, r->dport_hi))
		return 0;
	return 1;
}

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1;
}

static __always_inline int may_match(struct xdp_md *ctx, __u32 n)
{
	struct flow f = {};
	int parsed = parse((void *)(long)ctx->data, (void *)(long)ctx->data_end, &f);
	if (parsed != 1)
		return parsed == MAYBE;
	for (__u32 i = 0; i < MAX_RULES; i++) {
		if (i >= n)
			break;
		__u32 key = i;
		struct nham_rule *r = bpf_map_lookup_elem(&rules, &key);
		if (!r)
			break;
		if (matches(r, &f))
			return 1;
	}
	return 0;
}

SEC("xdp")
int nham_redirect(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct nham_config *c = bpf_map_lookup_elem(&config, &zero);
	if (c && c->filter && !may_match(ctx, c->rules)) {
		count(1);
		return XDP_PASS;
	}
	// No socket on this queue (yet): the frame goes on to the kernel, and
	// is counted so.
	__u32 q = ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&xsks, &q)) {
		count(1);
		return XDP_PASS;
	}
	count(0);
	return bpf_redirect_map(&xsks, q, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
