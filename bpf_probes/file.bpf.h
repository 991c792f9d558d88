/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * file_open capture through the syscall exit tracepoints (the variant
 * every kernel has), and the end-of-open logic every variant shares: it
 * resolves the path of the file actually opened (from the new fd's
 * struct file, so relative paths, dirfds, `..` and symlinks all come out
 * as the real path), evaluates the policy (unless a security hook did,
 * hooks.bpf.h), and emits or kills.
 */
#ifndef TRACER_FILE_BPF_H
#define TRACER_FILE_BPF_H

#include "policy.bpf.h"

#define TR_O_WRONLY 01
#define TR_O_RDWR 02
#define TR_O_CREAT 0100
#define TR_O_TRUNC 01000

struct tr_open_args {
	const char *upath;
	__u32 open_flags;
	__u32 mode;
	__u16 hook;
	/* Set by a security hook (hooks.bpf.h) that evaluated the policy on
	 * the struct file and selected the open: the exit reuses `verdict`. */
	__u16 selected;
	struct tr_verdict verdict;
	__u16 seen;  /* io_uring: the security hook ran in this open */
	__u16 kname; /* upath is the kernel's copy of the name */
	/* io_uring: the file the security hook saw (a fixed-file open has no
	 * fd to find it by), and the request whose result ends the open. */
	struct file *file;
	struct io_kiocb *req;
};

/* Opens in flight, by thread: the syscall's arguments (kprobe variant)
 * and the verdict of a security hook. LRU: a thread killed between enter
 * and exit leaves an entry that ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tr_open_args);
} tr_open_inflight SEC(".maps");

struct tr_file_scratch {
	struct tr_file_open ev;
	/* tr_write_path masks offsets with TR_DATA_MASK: room behind path. */
	char slack[TR_DATA_MASK + 1 + TR_NAME_MAX + 1 - TR_PATH_MAX];
	struct tr_walk walk;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_file_scratch);
} tr_file_heap SEC(".maps");

static __always_inline bool tr_open_writes(__u32 flags)
{
	return (flags & (TR_O_WRONLY | TR_O_RDWR | TR_O_CREAT | TR_O_TRUNC)) != 0;
}

static __always_inline struct file *tr_fd_file(struct task_struct *task, long fd)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline void tr_policy_binary(struct tr_policy_input *in, __u32 tgid)
{
	struct tr_binary *b = bpf_map_lookup_elem(&tr_proc_binary, &tgid);

	if (!b)
		return;
	in->binary = b->s;
	in->binary_len = b->len;
	in->binary_tail = tr_binary_tail_of(b, tgid);
}

/*
 * True when the collected walk shows that no rule can select the file:
 * the top component's first byte is admitted by no exact or prefix path
 * value, the leaf's last byte ends no suffix value, and each rule that
 * needs no path hit (binary or uid only, `not_path`) fails on the
 * process's binary or uid. Copying the names and the lookups were ~160 ns
 * of an unselected open's ~440. Counted as evaluated, which it was.
 */
static __always_inline bool tr_path_unselected(struct tr_kind_cfg *cfg, __u32 gen,
					       struct tr_walk *w, bool is_write)
{
	__u64 mask = tr_rules_for(cfg, is_write);
	__u64 loose = mask & cfg->free[TR_F_PATH];
	__u32 n = w->n;
	unsigned char top = 0, last = 0;

	if (!w->complete || w->pseudo || n == 0 || n > TR_PATH_DEPTH)
		return false;
	__u32 leaf_len = w->name_len[0] & TR_NAME_MAX;

	if (!leaf_len)
		return false;
	bpf_probe_read_kernel(&top, 1, w->name[(n - 1) & (TR_PATH_DEPTH - 1)]);
	bpf_probe_read_kernel(&last, 1, w->name[0] + leaf_len - 1);
	if ((cfg->suffix_fields & (1 << TR_F_PATH)) &&
	    tr_bit(cfg->suffix_ends[TR_F_PATH & 3], last))
		return false;
	if (mask & cfg->path_heads[top])
		return false;
	if (loose) {
		__u32 zero = 0;
		struct tr_policy_scratch *ps = bpf_map_lookup_elem(&tr_policy_heap, &zero);
		struct tr_policy_input in = {
			.str_field = TR_F_PATH,
			.uid = bpf_get_current_uid_gid() & 0xFFFFFFFF,
		};

		if (!ps)
			return false;
		tr_policy_binary(&in, bpf_get_current_pid_tgid() >> 32);
		if (tr_eval_who(ps, cfg, gen, TR_PK_FILE, &in, loose))
			return false;
	}
	tr_count(TR_KIND_FILE_OPEN, TR_STAT_EVALUATED);
	tr_count(TR_KIND_FILE_OPEN, TR_STAT_PREFILTERED);
	return true;
}

/* The end of an open: resolve the path (from the new fd, else the name
 * asked for), evaluate the policy unless a security hook already did, and
 * emit. `a` is a copy: the caller has deleted the in-flight entry. */
static __always_inline int tr_open_finish(long ret, const struct tr_open_args *a)
{
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_FILE, &gen);
	struct tr_file_scratch *s = bpf_map_lookup_elem(&tr_file_heap, &zero);

	if (!cfg || !s)
		return 0;
	struct tr_file_open *ev = &s->ev;
	struct task_struct *task = bpf_get_current_task_btf();
	bool is_write = tr_open_writes(a->open_flags);
	bool cut = false;
	__u32 len = 0;

	ev->hdr.kind = TR_KIND_FILE_OPEN;
	ev->ret = ret;
	ev->open_flags = a->open_flags;
	ev->mode = a->mode;
	ev->hook = a->hook;
	ev->flags = 0;
	if (ret >= 0) {
		struct file *f = a->file ? a->file : tr_fd_file(task, ret);

		if (!f)
			return 0;
		tr_walk_collect(&s->walk, ev->path, BPF_CORE_READ(f, f_path.mnt),
				BPF_CORE_READ(f, f_path.dentry));
		if (!a->selected && tr_path_unselected(cfg, gen, &s->walk, is_write))
			return 0;
		len = tr_walk_emit(&s->walk, ev->path, 0, TR_PATH_MAX, &cut);
	} else {
		/* Nothing was opened: report the name asked for, anchored at
		 * the cwd when relative, without resolving `..` or links. */
		char first = 0;

		ev->flags |= TR_FILE_UNRESOLVED;
		if (a->kname)
			bpf_probe_read_kernel(&first, 1, a->upath);
		else
			bpf_probe_read_user(&first, 1, a->upath);
		if (first != '/') {
			struct fs_struct *fs = BPF_CORE_READ(task, fs);

			len = tr_write_path(ev->path, 0, TR_PATH_MAX / 2, &s->walk,
					    BPF_CORE_READ(fs, pwd.mnt), BPF_CORE_READ(fs, pwd.dentry), &cut);
			if (len > 1)
				ev->path[len++ & TR_DATA_MASK] = '/';
			else
				len = 1; /* cwd is "/" */
		}
		char *dst = &ev->path[tr_bound(len, TR_PATH_MAX - 1)];
		long n = a->kname ? bpf_probe_read_kernel_str(dst, TR_PATH_MAX / 2, a->upath)
				  : bpf_probe_read_user_str(dst, TR_PATH_MAX / 2, a->upath);

		if (n > 0)
			len += n - 1;
	}
	if (len > TR_PATH_MAX) {
		len = TR_PATH_MAX;
		cut = true;
	}
	if (cut)
		ev->flags |= TR_FILE_TRUNC_PATH;
	ev->path_len = len;

	/* The policy first, from what the helpers give cheaply: most opens
	 * are selected by no rule and need none of the task's fields. */
	struct tr_policy_input in = {
		.str = ev->path,
		.str_len = len,
		.str_field = TR_F_PATH,
		.uid = bpf_get_current_uid_gid() & 0xFFFFFFFF,
		.is_write = is_write,
	};

	if (a->selected) {
		ev->verdict = a->verdict;
	} else {
		tr_policy_binary(&in, bpf_get_current_pid_tgid() >> 32);
		tr_policy_eval(TR_PK_FILE, cfg, gen, &in, &ev->verdict);
	}
	if (ev->verdict.action == TR_ACT_NONE || ev->verdict.action == TR_ACT_IGNORE)
		return 0;
	tr_fill_task(&ev->task, task);

	__u64 size = offsetof(struct tr_file_open, path) + len;

	if (size > sizeof(struct tr_file_open))
		size = sizeof(struct tr_file_open);
	ev->hdr.size = size;
	tr_emit(TR_KIND_FILE_OPEN, ev, size);
	return 0;
}

/*
 * The tracepoint variant hooks only the syscall exits. The arguments are
 * still in the task's saved user registers there (the return value has
 * its own slot), so an open needs no in-flight entry: the enter programs
 * and their map update had cost 270 ns of the ~950 ns per open.
 */
static __always_inline struct pt_regs *tr_user_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

SEC("tp/syscalls/sys_exit_openat")
int tr_openat_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = tr_user_regs();
	struct tr_open_args a = {
		.upath = (const char *)PT_REGS_PARM2_CORE_SYSCALL(regs),
		.open_flags = PT_REGS_PARM3_CORE_SYSCALL(regs),
		.mode = PT_REGS_PARM4_CORE_SYSCALL(regs),
		.hook = TR_HOOK_TP_OPENAT,
	};

	return tr_open_finish(ctx->ret, &a);
}

SEC("tp/syscalls/sys_exit_open")
int tr_open_exit_tp(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = tr_user_regs();
	struct tr_open_args a = {
		.upath = (const char *)PT_REGS_PARM1_CORE_SYSCALL(regs),
		.open_flags = PT_REGS_PARM2_CORE_SYSCALL(regs),
		.mode = PT_REGS_PARM3_CORE_SYSCALL(regs),
		.hook = TR_HOOK_TP_OPEN,
	};

	return tr_open_finish(ctx->ret, &a);
}

SEC("tp/syscalls/sys_exit_creat")
int tr_creat_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = tr_user_regs();
	struct tr_open_args a = {
		.upath = (const char *)PT_REGS_PARM1_CORE_SYSCALL(regs),
		.open_flags = TR_O_CREAT | TR_O_WRONLY | TR_O_TRUNC,
		.mode = PT_REGS_PARM2_CORE_SYSCALL(regs),
		.hook = TR_HOOK_TP_CREAT,
	};

	return tr_open_finish(ctx->ret, &a);
}

SEC("tp/syscalls/sys_exit_openat2")
int tr_openat2_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = tr_user_regs();
	struct open_how how = {};
	struct tr_open_args a = {
		.upath = (const char *)PT_REGS_PARM2_CORE_SYSCALL(regs),
		.hook = TR_HOOK_TP_OPENAT2,
	};

	bpf_probe_read_user(&how, sizeof(how), (void *)PT_REGS_PARM3_CORE_SYSCALL(regs));
	a.open_flags = how.flags;
	a.mode = how.mode;
	return tr_open_finish(ctx->ret, &a);
}

#endif /* TRACER_FILE_BPF_H */
