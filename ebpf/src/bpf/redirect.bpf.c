// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
//
// NHAM's XDP program: every frame that arrives on an interface the SFF
// serves is redirected to the AF_XDP socket registered for its receive
// queue in `xsks`. When no socket is registered for that queue the frame
// goes on to the kernel stack (XDP_PASS), so nothing is silently dropped
// here.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

SEC("xdp")
int nham_redirect(struct xdp_md *ctx)
{
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
