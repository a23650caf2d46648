// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
//
// NHAM's exit watch: reports the exit of a watched process (a VNF or MR-AA
// member, by its thread-group id) the moment its last thread runs
// `do_exit`'s `sched_process_exit` tracepoint. That tracepoint comes before
// `exit_files`: a VNF's packet socket is released (which waits for an RCU
// grace period, 10 to 15 ms on a quiet host) only after it, and the pidfd
// becomes readable only after that. The pidfd stays the authority; this is
// the early word.
//
// Attached as tp_btf (BTF-typed raw tracepoint): no tracefs needed.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

// The fields read, relocated against the running kernel's BTF (CO-RE).
struct signal_struct {
	struct {
		int counter;
	} live;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

// Thread-group ids to report (value unused).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} watched SEC(".maps");

struct exit_event {
	__u32 tgid;
	__u32 pid;
	__u64 ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} exits SEC(".maps");

SEC("tp_btf/sched_process_exit")
int nham_exit(__u64 *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx[0];
	__u32 tgid = BPF_CORE_READ(p, tgid);
	if (!bpf_map_lookup_elem(&watched, &tgid))
		return 0;
	// Only the group's last thread: `signal->live` reached 0 in do_exit
	// just before this tracepoint.
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	struct exit_event *e = bpf_ringbuf_reserve(&exits, sizeof(*e), 0);
	if (!e)
		return 0;
	e->tgid = tgid;
	e->pid = BPF_CORE_READ(p, pid);
	e->ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
