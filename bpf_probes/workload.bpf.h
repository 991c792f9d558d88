/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Workload selectors (namespace, pod_labels, container, in_container).
 * The kernel cannot see pods, so the daemon decides every rule's workload
 * selectors once per cgroup, from its pod watch and cgroup resolution,
 * and writes the verdicts here by cgroup id (policy/workload_map.py). A
 * cgroup without an entry (one the daemon has not read about yet, or one
 * that found the map full) satisfies no workload selector: not even
 * `in_container: false`.
 */
#ifndef TRACER_WORKLOAD_BPF_H
#define TRACER_WORKLOAD_BPF_H

#include "common.bpf.h"

/* cgroup v2 id -> the rules its processes satisfy. Sized at load
 * (--workload-cgroups); the daemon counts the cgroups that find it full. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TR_WORKLOAD_CGROUPS);
	__type(key, __u64);
	__type(value, struct tr_workload);
} tr_workload SEC(".maps");

/* Per generation and kind: the rules that have workload selectors. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TR_GENS * TR_PK_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tr_workload_rules SEC(".maps");

/* The rules of `mask` that the current task's cgroup leaves in. */
static __always_inline __u64 tr_eval_workload(__u32 gen, __u32 kind, __u64 mask)
{
	__u32 slot = gen * TR_PK_MAX + kind;
	__u64 *constrained = bpf_map_lookup_elem(&tr_workload_rules, &slot);

	if (!constrained || !(mask & *constrained))
		return mask;
	__u64 cgroup = bpf_get_current_cgroup_id();
	struct tr_workload *w = bpf_map_lookup_elem(&tr_workload, &cgroup);
	__u64 pass = w ? w->rules[gen & 1][kind < TR_PK_MAX ? kind : 0] : 0;

	return mask & (~*constrained | pass);
}

#endif /* TRACER_WORKLOAD_BPF_H */
