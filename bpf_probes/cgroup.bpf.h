/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * cgroup v2 directories made and removed, with their path: user space
 * learns which container a cgroup id belongs to as the cgroup appears,
 * rather than asking the kernel when the id is first seen (by then a
 * short-lived container's cgroup may be gone). Only the default (v2)
 * hierarchy: its ids are the ones tr_task.cgroup_id carries. Rare
 * events, so the record is reserved at full size.
 */
#ifndef TRACER_CGROUP_BPF_H
#define TRACER_CGROUP_BPF_H

#include "common.bpf.h"

static __always_inline int on_cgroup(struct cgroup *cgrp, const char *path, __u32 op)
{
	/* /proc/<pid>/cgroup's "0::": the default hierarchy has id 0. */
	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;

	struct tr_cgroup *ev = bpf_ringbuf_reserve(&tr_events, sizeof(*ev), 0);

	if (!ev) {
		tr_count(TR_KIND_CGROUP, TR_STAT_RB_DROPPED);
		return 0;
	}
	ev->hdr.kind = TR_KIND_CGROUP;
	ev->hdr.size = sizeof(*ev);
	ev->ktime = bpf_ktime_get_boot_ns();
	ev->id = BPF_CORE_READ(cgrp, kn, id);
	ev->op = op;
	ev->pad = 0;
	long n = bpf_probe_read_kernel_str(ev->path, sizeof(ev->path), path);

	ev->path_len = n > 0 ? n - 1 : 0;
	bpf_ringbuf_submit(ev, 0);
	tr_count(TR_KIND_CGROUP, TR_STAT_EMITTED);
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
