/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Helpers shared by the capture programs: the ring buffer, the per-kind
 * counters, task identity and the bounded path walk. Everything reads
 * the kernel through CO-RE, so one object runs on every BTF kernel.
 */
#ifndef TRACER_COMMON_BPF_H
#define TRACER_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "tracer.h"

/* Offsets into the scratch data area are masked with TR_DATA_MASK so the
 * verifier can prove every write stays inside the map value; the slack
 * behind the record absorbs the largest single write past the mask. */
#define TR_DATA_MASK (TR_PATH_MAX + TR_PATH_MAX + TR_ARGS_MAX - 1)

/* v & mask, in a form clang cannot drop: when clang can prove the mask
 * redundant it removes it, yet the verifier may lack that proof. */
#define tr_bound(v, mask)                                   \
	({                                                  \
		__typeof__(v) __tr_v = (v);                 \
		asm volatile("" : "+r"(__tr_v));            \
		__tr_v & (mask);                            \
	})

/*
 * Reading the kernel's structs. The loader sets tr_direct when the kernel
 * has bpf_rdonly_cast (6.2 on): a pointer then becomes a typed one the
 * program reads with plain loads, each of which the JIT turns into one
 * guarded instruction, where a bpf_probe_read_kernel call costs ~10 ns;
 * an open no rule selects makes ~25 of them. tr_direct is read-only data
 * fixed at load, so the verifier drops the branch not taken, and an older
 * kernel never sees the kfunc.
 */
const volatile __u32 tr_direct SEC(".rodata.tr_kernel") = 0;

/* Key 0 of the per-CPU scratch arrays, for global functions: before 6.2 a
 * map helper takes a key from the stack or a map only, and the stack of a
 * global function comes on top of its callers'. */
const volatile __u32 tr_zero_key SEC(".rodata.tr_zero_key") = 0;

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* The field `field` (a path of members) of the `type` at p. */
#define TR_RD(type, p, field)                                                              \
	(tr_direct ? ((type *)bpf_rdonly_cast((const void *)(p),                            \
					      bpf_core_type_id_kernel(type)))->field         \
		   : BPF_CORE_READ((type *)(p), field))

/* Bytes at p, for plain loads at constant offsets below 65 (tr_direct
 * only): any kernel struct that starts with a char array will do to type
 * the pointer, and new_utsname's is 65 bytes. */
#define TR_BYTES(p)                                                                          \
	((struct new_utsname *)bpf_rdonly_cast((const void *)(p),                          \
					       bpf_core_type_id_kernel(struct new_utsname)))  \
		->sysname

/* Two channels to user space. tr_events carries the bulk (exec, fork,
 * exit, cgroup records: every process makes them, any user can make
 * thousands a second); tr_selected carries what a policy rule selected
 * and every enforcement (file_open, connect, an exec a rule acted on),
 * so that a storm of bulk records cannot crowd them out. Both are sized
 * by the loader (--ringbuf-size for the bulk ring). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} tr_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} tr_selected SEC(".maps");

/* Per kind: records emitted, records lost because the ring buffer was
 * full. Read (and summed over CPUs) by the daemon for `lost` reports. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TR_KIND_MAX * TR_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} tr_stats SEC(".maps");

static __always_inline void tr_count(__u32 kind, __u32 stat)
{
	__u32 key = kind * TR_STAT_COUNT + stat;
	__u64 *val = bpf_map_lookup_elem(&tr_stats, &key);

	if (val)
		*val += 1; /* per-CPU slot: no atomics needed */
}

/* Settings user space writes after load (slot 0). */
struct tr_config {
	__u32 uid_budget; /* bulk records per uid per second; 0: no limit */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_config);
} tr_config SEC(".maps");

/* Records each uid made in the current second while a ring was behind,
 * one map per ring (a bulk storm does not spend a uid's share of the
 * selected ring). LRU: a uid that went quiet ages out, and a fresh one
 * starts with a whole budget. */
struct tr_uid_budget {
	__u64 second;
	__u64 used;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct tr_uid_budget);
} tr_uid_budget SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct tr_uid_budget);
} tr_uid_selected_budget SEC(".maps");

/* True when `uid` has used up this second's budget in `budgets`. The
 * reset at a new second races with other CPUs, which may let a few more
 * through; every record refused is counted (TR_STAT_LIMITED). */
static __always_inline bool tr_uid_over_budget(void *budgets, __u32 uid)
{
	__u32 zero = 0;
	struct tr_config *cfg = bpf_map_lookup_elem(&tr_config, &zero);

	if (!cfg || !cfg->uid_budget)
		return false;
	__u64 second = bpf_ktime_get_boot_ns() / 1000000000;
	struct tr_uid_budget *b = bpf_map_lookup_elem(budgets, &uid);

	if (!b) {
		struct tr_uid_budget fresh = { .second = second, .used = 1 };

		bpf_map_update_elem(budgets, &uid, &fresh, BPF_NOEXIST);
		return false;
	}
	if (b->second != second) {
		b->second = second;
		b->used = 0;
	}
	return __sync_fetch_and_add(&b->used, 1) >= cfg->uid_budget;
}

/* Whether more than 1/`part` of `ring` is written and not read. */
#define tr_filled(ring, part)                                                    \
	(bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >=                            \
	 bpf_ringbuf_query(ring, BPF_RB_RING_SIZE) / (part))
/* The reader is behind: woken, and bulk records are held to budgets. */
#define tr_behind(ring) tr_filled(ring, 8)

/* Whether this record should wake the reader. A wake-up per record
 * (flags 0: whenever the reader has caught up) costs the traced task an
 * irq_work and the reader a context switch per event, which made an exec
 * storm 24% slower. So records are added silently; the reader drains on
 * a short timer, and is woken early only once an eighth of the ring is
 * full, which leaves a burst seven eighths of the ring to land in. */
#define tr_wakeup(ring) (tr_behind(ring) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP)

/* What every record of the selected ring begins with. */
struct tr_selected_head {
	struct tr_hdr hdr;
	struct tr_task task;
	struct tr_verdict verdict;
};

/* tr_emit reads the uid and the action through it: each kind it emits
 * must keep them where the head has them. */
#define tr_selected_layout(type)                                                  \
	_Static_assert(__builtin_offsetof(struct type, task) ==                       \
				       __builtin_offsetof(struct tr_selected_head, task) &&      \
			       __builtin_offsetof(struct type, verdict) ==                       \
				       __builtin_offsetof(struct tr_selected_head, verdict),     \
		       #type " does not begin like struct tr_selected_head")
tr_selected_layout(tr_exec);
tr_selected_layout(tr_file_open);
tr_selected_layout(tr_connect);
tr_selected_layout(tr_priv);
tr_selected_layout(tr_file_attr);

/* Emit `size` bytes of `rec` (a struct tr_selected_head first, its task
 * filled) into the selected ring and count the outcome, so no loss is
 * silent. While the ring is more than half full, a record that only
 * reports (post) counts against its uid's budget, as bulk records do:
 * one user's flood of opens that a rule posts cannot fill the ring for
 * everyone. Half, not an eighth: what a rule selects is what the user
 * asked for, and one busy source (a backup reading what a rule posts) has
 * half the ring to wait in for the reader before anything is held back.
 * A sigkill or deny record never is. */
static __always_inline void tr_emit(__u32 kind, void *rec, __u64 size)
{
	const struct tr_selected_head *head = rec;

	if (head->verdict.action == TR_ACT_POST && tr_filled(&tr_selected, 2) &&
	    tr_uid_over_budget(&tr_uid_selected_budget, head->task.uid))
		tr_count(kind, TR_STAT_LIMITED);
	else if (bpf_ringbuf_output(&tr_selected, rec, size, tr_wakeup(&tr_selected)))
		tr_count(kind, TR_STAT_RB_DROPPED);
	else
		tr_count(kind, TR_STAT_EMITTED);
}

/* The same into the bulk ring. While it is behind, each uid may add only
 * its budget of records per second, so that one user's storm cannot fill
 * it for everyone; below that nothing is limited, and the check costs
 * nothing. */
static __always_inline void tr_emit_bulk(__u32 kind, void *rec, __u64 size, __u32 uid)
{
	bool behind = tr_behind(&tr_events);

	if (behind && tr_uid_over_budget(&tr_uid_budget, uid))
		tr_count(kind, TR_STAT_LIMITED);
	else if (bpf_ringbuf_output(&tr_events, rec, size,
				    behind ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP))
		tr_count(kind, TR_STAT_RB_DROPPED);
	else
		tr_count(kind, TR_STAT_EMITTED);
}

/* The executable of a task: whether its file was unlinked since it was
 * opened (a pseudo file, such as a memfd, never had a name to unlink). */
static __always_inline bool tr_file_deleted(struct file *file)
{
	struct dentry *d = TR_RD(struct file, file, f_path.dentry);

	return d && !TR_RD(struct dentry, d, d_hash.pprev) && TR_RD(struct dentry, d, d_parent) != d;
}

static __always_inline void tr_fill_task(struct tr_task *t, struct task_struct *task)
{
	const struct cred *cred = TR_RD(struct task_struct, task, cred);
	struct mm_struct *mm = TR_RD(struct task_struct, task, mm);
	struct file *exe = mm ? TR_RD(struct mm_struct, mm, exe_file) : NULL;
	struct task_struct *leader = TR_RD(struct task_struct, task, group_leader);
	struct css_set *cgroups = TR_RD(struct task_struct, task, cgroups);
	struct cgroup *cgrp = TR_RD(struct css_set, cgroups, dfl_cgrp);
	struct kernfs_node *kn = TR_RD(struct cgroup, cgrp, kn);
	struct task_struct *parent = TR_RD(struct task_struct, task, real_parent);

	t->ktime = bpf_ktime_get_boot_ns();
	/* The leader's: the last thread out of a group may be another one. */
	t->start_boottime = TR_RD(struct task_struct, leader, start_boottime);
	t->cgroup_id = TR_RD(struct kernfs_node, kn, id);
	t->tgid = TR_RD(struct task_struct, task, tgid);
	t->tid = TR_RD(struct task_struct, task, pid);
	t->ppid = TR_RD(struct task_struct, parent, tgid);
	t->uid = TR_RD(struct cred, cred, uid.val);
	t->euid = TR_RD(struct cred, cred, euid.val);
	t->gid = TR_RD(struct cred, cred, gid.val);
	t->egid = TR_RD(struct cred, cred, egid.val);
	if (bpf_core_field_exists(task->loginuid))
		t->auid = TR_RD(struct task_struct, task, loginuid.val);
	else
		t->auid = (__u32)-1; /* kernel built without CONFIG_AUDIT */
	BPF_CORE_READ_STR_INTO(&t->comm, task, comm);
	/* No mm at exit (exit_mm ran before the tracepoint): no answer then. */
	t->flags = exe && tr_file_deleted(exe) ? TR_TASK_EXE_DELETED : 0;
	t->pad = 0;
}

/*
 * State of one path walk. It lives in map memory, not on the stack: the
 * verifier treats values loaded from a map as unknown, so the bpf_loop()
 * callbacks below converge after one pass instead of being re-verified
 * for every distinct counter value.
 *
 * Components are collected leaf first. A path deeper than TR_PATH_DEPTH
 * keeps its TR_PATH_LEAF leaf-side components and, in a ring over the
 * other slots, the root-most ones seen last: the root side is what
 * prefix rules (/tmp/...) need, the leaf what an analyst reads.
 */
struct tr_walk {
	struct mount *mnt;
	struct dentry *dentry;
	struct dentry *mnt_root;
	__u32 off; /* where in buf the path starts */
	__u32 max; /* longest path to write */
	__u32 n;   /* components collected (may exceed TR_PATH_DEPTH) */
	__u32 len; /* bytes written */
	__u32 complete;
	__u32 truncated;
	/* The walk ended at a dentry that is its own parent without being a
	 * mount's root: a pseudo file (memfd, anonymous shmem), named
	 * without a leading '/' as the kernel names it. */
	__u32 pseudo;
	__u32 bytes; /* the whole path's length, as far as collected */
	/* Component names by tr_walk_slot(); written out root first. */
	const unsigned char *name[TR_PATH_DEPTH];
	__u32 name_len[TR_PATH_DEPTH];
	__u64 words[8]; /* a name's first bytes, for the path sieve (policy.bpf.h) */
};

/* Where component c (0: the leaf) is kept. */
static __always_inline __u32 tr_walk_slot(__u32 c)
{
	__u32 slot = c < TR_PATH_LEAF ? c : TR_PATH_LEAF + (c - TR_PATH_LEAF) % TR_PATH_RING;

	return tr_bound(slot, TR_PATH_DEPTH - 1); /* for the verifier, which cannot see it */
}

/* bpf_loop() takes a stack context: it only carries the two pointers. */
struct tr_walk_ctx {
	struct tr_walk *w;
	char *buf;
};

/* One step up: cross a mount point, or record a component and go to the
 * parent. */
static long tr_walk_up(__u32 i, void *arg)
{
	struct tr_walk *w = ((struct tr_walk_ctx *)arg)->w;
	/* Locals, not w->...: BPF_CORE_READ would relocate our own struct. */
	struct mount *mnt = w->mnt;
	struct dentry *dentry = w->dentry;

	if (dentry == w->mnt_root) {
		struct mount *parent = TR_RD(struct mount, mnt, mnt_parent);

		if (parent == mnt) {
			w->complete = 1;
			return 1;
		}
		w->dentry = TR_RD(struct mount, mnt, mnt_mountpoint);
		w->mnt = parent;
		w->mnt_root = TR_RD(struct mount, parent, mnt.mnt_root);
		return 0;
	}
	struct dentry *up = TR_RD(struct dentry, dentry, d_parent);
	__u32 n = w->n;
	__u32 slot = tr_walk_slot(n);
	__u32 len = TR_RD(struct dentry, dentry, d_name.len);

	w->name[slot] = TR_RD(struct dentry, dentry, d_name.name);
	w->name_len[slot] = len;
	w->bytes += len + 1;
	w->n = n + 1;
	if (up == dentry) { /* root of a pseudo or disconnected tree */
		w->pseudo = 1;
		w->complete = 1;
		return 1;
	}
	w->dentry = up;
	return 0;
}

/* Append the i-th component of the output, root first, leaf last; a
 * path with a gap gets the marker component before its leaf side. */
static long tr_walk_write(__u32 i, void *arg)
{
	struct tr_walk_ctx *ctx = arg;
	struct tr_walk *w = ctx->w;
	__u32 n = w->n, len = w->len, off = w->off;
	bool gap = n > TR_PATH_DEPTH;

	if (i >= n || i >= TR_PATH_DEPTH)
		return 1;
	if (gap && i == TR_PATH_RING) {
		if (len + 1 + TR_GAP_LEN > w->max) {
			w->truncated = 1;
			return 1;
		}
		ctx->buf[(off + len) & TR_DATA_MASK] = '/';
		ctx->buf[(off + len + 1) & TR_DATA_MASK] = TR_GAP_0;
		ctx->buf[(off + len + 2) & TR_DATA_MASK] = TR_GAP_1;
		ctx->buf[(off + len + 3) & TR_DATA_MASK] = TR_GAP_2;
		len += 1 + TR_GAP_LEN;
	}
	__u32 c = gap && i >= TR_PATH_RING ? TR_PATH_DEPTH - 1 - i : n - 1 - i;
	__u32 slot = tr_walk_slot(c);
	__u32 part = w->name_len[slot] & TR_NAME_MAX; /* d_name.len <= NAME_MAX */
	/* A pseudo file's name stands alone: "memfd:x", not "/memfd:x". */
	__u32 sep = w->pseudo && i == 0 ? 0 : 1;

	if (len + sep + part > w->max) {
		w->truncated = 1;
		w->len = len;
		return 1;
	}
	if (sep)
		ctx->buf[(off + len) & TR_DATA_MASK] = '/';
	bpf_probe_read_kernel(&ctx->buf[(off + len + sep) & TR_DATA_MASK], part,
			      w->name[slot]);
	w->len = len + sep + part;
	return 0;
}

/*
 * First half of a path walk: collect the components of (vfsmnt, dentry)
 * up to the root of the mount namespace, crossing mount points through
 * struct mount, without copying a name. With w->n <= TR_PATH_DEPTH,
 * w->name[w->n - 1] is then the top component and w->name[0] the leaf;
 * w->complete says the root was reached within TR_WALK_STEPS steps.
 */
static __always_inline void tr_walk_collect(struct tr_walk *w, char *buf,
					    struct vfsmount *vfsmnt, struct dentry *dentry)
{
	struct tr_walk_ctx ctx = { .w = w, .buf = buf };

	w->mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
	w->dentry = dentry;
	w->mnt_root = TR_RD(struct vfsmount, vfsmnt, mnt_root);
	w->n = 0;
	w->bytes = 0;
	w->complete = 0;
	w->pseudo = 0;
	/* Only as many steps as the path has components (and mounts) are
	 * taken: the bound costs nothing to paths of ordinary depth. */
	bpf_loop(TR_WALK_STEPS, tr_walk_up, &ctx, 0);
}

/*
 * Second half: write the collected path into buf at offset `off` (masked)
 * and return its length, at most `max` bytes; sets *truncated when the
 * walk did not reach the root, left a gap, or the path is longer than
 * `max` (then the root side is what is kept).
 */
static __always_inline __u32 tr_walk_emit(struct tr_walk *w, char *buf, __u32 off, __u32 max,
					  bool *truncated)
{
	struct tr_walk_ctx ctx = { .w = w, .buf = buf };

	w->off = off;
	w->max = max;
	w->len = 0;
	w->truncated = 0;
	if (!w->complete || w->n > TR_PATH_DEPTH)
		*truncated = true;
	if (w->n == 0) {
		buf[tr_bound(off, TR_DATA_MASK)] = '/';
		return 1;
	}
	if (!w->complete) {
		/* The root was not found: the path starts with the gap marker,
		 * so that no prefix rule takes its top for the root's. */
		buf[tr_bound(off, TR_DATA_MASK)] = '/';
		buf[tr_bound(off + 1, TR_DATA_MASK)] = TR_GAP_0;
		buf[tr_bound(off + 2, TR_DATA_MASK)] = TR_GAP_1;
		buf[tr_bound(off + 3, TR_DATA_MASK)] = TR_GAP_2;
		w->len = 1 + TR_GAP_LEN;
	}
	bpf_loop(TR_PATH_DEPTH, tr_walk_write, &ctx, 0);
	if (w->truncated)
		*truncated = true;
	return w->len;
}

/* The absolute path of (vfsmnt, dentry): both halves of the walk. */
static __always_inline __u32 tr_write_path(char *buf, __u32 off, __u32 max,
					   struct tr_walk *w,
					   struct vfsmount *vfsmnt,
					   struct dentry *dentry, bool *truncated)
{
	tr_walk_collect(w, buf, vfsmnt, dentry);
	return tr_walk_emit(w, buf, off, max, truncated);
}

#endif /* TRACER_COMMON_BPF_H */
