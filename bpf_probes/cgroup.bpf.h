/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * cgroup v2 directories made and removed, with their path: user space
 * learns which container a cgroup id belongs to as the cgroup appears,
 * rather than asking the kernel when the id is first seen (by then a
 * short-lived container's cgroup may be gone). Only the default (v2)
 * hierarchy: its ids are the ones tr_task.cgroup_id carries. The record
 * (a path of up to 4 KiB) is built in a per-CPU slot, as exec's is, and
 * emitted at its used size.
 */
#ifndef TRACER_CGROUP_BPF_H
#define TRACER_CGROUP_BPF_H

#include "common.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_cgroup);
} tr_cgroup_heap SEC(".maps");

static __always_inline int on_cgroup(struct cgroup *cgrp, const char *path, __u32 op)
{
	/* /proc/<pid>/cgroup's "0::": the default hierarchy has id 0. */
	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;

	__u32 zero = 0;
	struct tr_cgroup *ev = bpf_map_lookup_elem(&tr_cgroup_heap, &zero);

	if (!ev)
		return 0;
	ev->hdr.kind = TR_KIND_CGROUP;
	ev->ktime = bpf_ktime_get_boot_ns();
	ev->id = BPF_CORE_READ(cgrp, kn, id);
	ev->op = op;
	ev->pad = 0;
	long n = bpf_probe_read_kernel_str(ev->path, sizeof(ev->path), path);
	__u32 len = n > 0 ? n - 1 : 0; /* without the NUL */

	ev->path_len = len;
	__u64 size = offsetof(struct tr_cgroup, path) + tr_bound(len, TR_PATH_MAX - 1);

	ev->hdr.size = size;
	tr_emit_bulk(TR_KIND_CGROUP, ev, size, bpf_get_current_uid_gid() & 0xFFFFFFFF);
	return 0;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(tr_cgroup_mkdir_btf, struct cgroup *cgrp, const char *path)
{
	return on_cgroup(cgrp, path, TR_CGROUP_MKDIR);
}

SEC("raw_tp/cgroup_mkdir")
int BPF_PROG(tr_cgroup_mkdir_raw, struct cgroup *cgrp, const char *path)
{
	return on_cgroup(cgrp, path, TR_CGROUP_MKDIR);
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(tr_cgroup_rmdir_btf, struct cgroup *cgrp, const char *path)
{
	return on_cgroup(cgrp, path, TR_CGROUP_RMDIR);
}

SEC("raw_tp/cgroup_rmdir")
int BPF_PROG(tr_cgroup_rmdir_raw, struct cgroup *cgrp, const char *path)
{
	return on_cgroup(cgrp, path, TR_CGROUP_RMDIR);
}

#endif /* TRACER_CGROUP_BPF_H */
