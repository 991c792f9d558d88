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
#include "origin.bpf.h"

#define TR_O_WRONLY 01
#define TR_O_RDWR 02
#define TR_O_CREAT 0100
#define TR_O_TRUNC 01000
#define TR_O_EXCL 0200
#define TR_O_CLOEXEC 02000000
#define TR_FMODE_WRITE 0x2
#define TR_FMODE_CREATED (1 << 20)

struct tr_open_args {
	const char *upath;
	__u32 open_flags;
	__u32 mode;
	__u16 hook;
	/* Set by a security hook (hooks.bpf.h) that evaluated the policy on
	 * the struct file and selected the open: the exit reuses `verdict`. */
	__u8 selected;
	/* open_flags are in user memory (openat2's struct open_how): a
	 * successful open takes them from the file instead. */
	__u8 flags_from_file;
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
	struct tr_open_args args; /* tr_open_report's request */
	struct tr_file_open ev;
	/* tr_write_path masks offsets with TR_DATA_MASK: room behind path. */
	char slack[TR_DATA_MASK + 1 + TR_NAME_MAX + 1 - 2 * TR_PATH_MAX];
	struct tr_walk walk;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_file_scratch);
} tr_file_heap SEC(".maps");

/* Emit a file record whose path (and source) take `used` bytes. The
 * mask keeps the size provably inside the scratch value. */
static __always_inline void tr_file_emit(struct tr_file_open *ev, __u32 used)
{
	__u64 size = offsetof(struct tr_file_open, path) + tr_bound((__u64)used, 0x3FFF);

	if (size > sizeof(struct tr_file_open))
		size = sizeof(struct tr_file_open);
	ev->hdr.size = size;
	tr_emit(TR_KIND_FILE_OPEN, ev, size);
}

static __always_inline bool tr_open_writes(__u32 flags)
{
	return (flags & (TR_O_WRONLY | TR_O_RDWR | TR_O_CREAT | TR_O_TRUNC)) != 0;
}

static __always_inline struct file *tr_fd_file(struct task_struct *task, long fd)
{
	struct files_struct *files = TR_RD(struct task_struct, task, files);
	struct fdtable *fdt = TR_RD(struct files_struct, files, fdt);
	struct file **fds = TR_RD(struct fdtable, fdt, fd);
	struct file *f = NULL;

	if (fd < 0 || fd >= TR_RD(struct fdtable, fdt, max_fds))
		return NULL;
	if (tr_direct)
		return *(struct file *const *)TR_BYTES(&fds[fd]);
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/*
 * The flags of an open as the kernel applied them, from the opened file:
 * f_flags, the fd's close-on-exec bit, O_CREAT when this open created
 * the file. The kernel clears O_CREAT, O_EXCL and O_TRUNC from f_flags,
 * so `asked`'s O_TRUNC and O_EXCL are kept: they come from user memory
 * and a racing thread could only hide them, not add a write the kernel
 * did not do, since the file's mode decides.
 */
static __always_inline __u32 tr_file_open_flags(struct task_struct *task, struct file *f,
						long fd, __u32 asked)
{
	__u32 flags = BPF_CORE_READ(f, f_flags) & ~TR_O_LARGEFILE;
	__u32 mode = BPF_CORE_READ(f, f_mode);
	unsigned long *cloexec = BPF_CORE_READ(task, files, fdt, close_on_exec);
	unsigned long word = 0;

	bpf_probe_read_kernel(&word, sizeof(word), &cloexec[fd / 64]);
	if ((word >> (fd % 64)) & 1)
		flags |= TR_O_CLOEXEC;
	if (mode & TR_FMODE_CREATED)
		flags |= TR_O_CREAT;
	return flags | (asked & (TR_O_TRUNC | TR_O_EXCL));
}

static __always_inline void tr_policy_binary(struct tr_policy_input *in, __u32 tgid)
{
	struct tr_binary *b = in ? bpf_map_lookup_elem(&tr_proc_binary, &tgid) : NULL;

	if (!b)
		return;
	in->binary = b->s;
	in->binary_len = b->len;
	in->binary_tail = tr_binary_tail_of(b, tgid);
}

/*
 * True when the collected walk shows that no rule can select the file:
 * the path sieve admits no rule with a positive path value, and each rule
 * that needs no path hit (binary or uid only, `not_path`) fails on the
 * process's binary or uid. Copying the names out and looking the path up
 * cost more than the rest of such an open. Counted as evaluated, which it
 * was. The walk is the file scratch's. A global function, like
 * tr_policy_decide: the sieve and the binary's lookups are checked once
 * per program, and their registers spill to a frame of their own.
 */
__noinline int tr_path_unselected(__u64 gen, __u64 is_write)
{
	gen &= 1; /* as in tr_policy_decide */
	barrier_var(gen);
	__u32 slot = gen * TR_PK_MAX + TR_PK_FILE;
	struct tr_file_scratch *s =
		bpf_map_lookup_elem(&tr_file_heap, (const void *)&tr_zero_key);
	struct tr_kind_cfg *cfg = bpf_map_lookup_elem(&tr_policy_cfg, &slot);

	if (!s || !cfg)
		return 0;
	struct tr_walk *w = &s->walk;
	__u64 mask = tr_rules_for(cfg, is_write);
	__u64 loose = mask & cfg->free[TR_F_PATH];

	/* A path cut short is matched on what was kept: the full evaluation's. */
	if (!w->complete || w->pseudo || w->n == 0 || w->n > TR_PATH_DEPTH ||
	    w->bytes > TR_PATH_MAX)
		return 0;
	if ((mask & ~loose) && (tr_sieve(w, gen) & mask & ~loose))
		return 0;
	if (loose) {
		__u32 zero = 0;
		struct tr_policy_scratch *ps = bpf_map_lookup_elem(&tr_policy_heap, &zero);
		struct tr_policy_input *in = tr_policy_request(
			NULL, 0, TR_F_PATH, bpf_get_current_uid_gid() & 0xFFFFFFFF, false);

		if (!ps || !in)
			return 0;
		tr_policy_binary(in, bpf_get_current_pid_tgid() >> 32);
		if (tr_eval_who(ps, cfg, gen, TR_PK_FILE, in, loose))
			return 0;
	}
	tr_count(TR_KIND_FILE_OPEN, TR_STAT_EVALUATED);
	tr_count(TR_KIND_FILE_OPEN, TR_STAT_PREFILTERED);
	return 1;
}

/* The end of an open: resolve the path (from the new fd, else the name
 * asked for), evaluate the policy unless a security hook already did, and
 * emit; the open's arguments are in the scratch (tr_open_finish). A
 * global function: the verifier checks it once per program, not once for
 * each state in which the program's syscalls and hooks reach it. */
__noinline int tr_open_report(long ret)
{
	__u32 gen;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_FILE, &gen);
	struct tr_file_scratch *s =
		bpf_map_lookup_elem(&tr_file_heap, (const void *)&tr_zero_key);

	if (!cfg || !s)
		return 0;
	const struct tr_open_args *a = &s->args;
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
	ev->op = TR_FILE_OP_OPEN;
	ev->source_len = 0;
	if (ret >= 0) {
		struct file *f = a->file ? a->file : tr_fd_file(task, ret);

		if (!f)
			return 0;
		if (a->flags_from_file) {
			ev->open_flags = tr_file_open_flags(task, f, ret, a->open_flags);
			is_write = (BPF_CORE_READ(f, f_mode) & (TR_FMODE_WRITE | TR_FMODE_CREATED)) ||
				   (ev->open_flags & TR_O_TRUNC);
		}
		tr_walk_collect(&s->walk, ev->path, TR_RD(struct file, f, f_path.mnt),
				TR_RD(struct file, f, f_path.dentry));
		if (!a->selected && tr_path_unselected(gen, is_write))
			return 0;
		len = tr_walk_emit(&s->walk, ev->path, 0, TR_PATH_MAX, &cut);
	} else {
		/* Nothing was opened: report the name asked for, anchored at
		 * the cwd when relative, without resolving `..` or links. */
		char first = 0;

		/* The kernel's copy of the name (getname's struct filename) is
		 * freed before any hook that sees the result runs, unless the
		 * caller kept one (kname). */
		ev->flags |= TR_FILE_UNRESOLVED;
		if (a->kname) {
			bpf_probe_read_kernel(&first, 1, a->upath);
		} else {
			ev->flags |= TR_FILE_USER_MEMORY;
			bpf_probe_read_user(&first, 1, a->upath);
		}
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
	if (a->selected) {
		ev->verdict = a->verdict;
	} else {
		struct tr_policy_input *in = tr_policy_request(
			ev->path, len, TR_F_PATH, bpf_get_current_uid_gid() & 0xFFFFFFFF, is_write);

		tr_policy_binary(in, bpf_get_current_pid_tgid() >> 32);
		tr_policy_eval(TR_PK_FILE, gen, in, &ev->verdict);
	}
	if (ev->verdict.action == TR_ACT_NONE || ev->verdict.action == TR_ACT_IGNORE)
		return 0;
	tr_fill_task(&ev->task, task);

	tr_file_emit(ev, len);
	return 0;
}

/* `a` is a copy: the caller has deleted the in-flight entry. Returns 0,
 * as fentry and fexit programs must. */
static __always_inline int tr_open_finish(long ret, const struct tr_open_args *a)
{
	struct tr_file_scratch *s =
		bpf_map_lookup_elem(&tr_file_heap, (const void *)&tr_zero_key);

	if (!s)
		return 0;
	s->args = *a;
	tr_open_report(ret);
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

/* Argument n of the syscall, from its saved user registers. */
#define TR_ARG(regs, n) \
	(tr_direct ? PT_REGS_PARM##n##_SYSCALL(regs) : PT_REGS_PARM##n##_CORE_SYSCALL(regs))

/*
 * One program for the whole open family, attached to the exit of each
 * call (loader.py SYSCALL_FAMILIES): the verifier checks the shared body
 * once per distinct set of arguments, not once per syscall. The exit
 * tracepoint's record holds the syscall's number (an int: the bytes after
 * it are padding), always the 64-bit table's: 32-bit calls skip these
 * tracepoints (evasion.bpf.h has them).
 */
SEC("tp/syscalls/sys_exit_openat")
int tr_open_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = tr_user_regs();
	struct tr_open_args a = {};

	switch ((int)ctx->id) {
	case TR_NR_OPENAT:
		a.upath = (const char *)TR_ARG(regs, 2);
		a.open_flags = TR_ARG(regs, 3);
		a.mode = TR_ARG(regs, 4);
		a.hook = TR_HOOK_TP_OPENAT;
		break;
	case TR_NR_OPENAT2: {
		struct open_how how = {};

		a.upath = (const char *)TR_ARG(regs, 2);
		a.hook = TR_HOOK_TP_OPENAT2;
		a.flags_from_file = 1;
		bpf_probe_read_user(&how, sizeof(how), (void *)TR_ARG(regs, 3));
		a.open_flags = how.flags;
		a.mode = how.mode;
		break;
	}
#if TR_HAVE_LEGACY_NAMES
	case TR_NR_OPEN:
		a.upath = (const char *)TR_ARG(regs, 1);
		a.open_flags = TR_ARG(regs, 2);
		a.mode = TR_ARG(regs, 3);
		a.hook = TR_HOOK_TP_OPEN;
		break;
	case TR_NR_CREAT:
		a.upath = (const char *)TR_ARG(regs, 1);
		a.open_flags = TR_O_CREAT | TR_O_WRONLY | TR_O_TRUNC;
		a.mode = TR_ARG(regs, 2);
		a.hook = TR_HOOK_TP_CREAT;
		break;
#endif
	default:
		return 0;
	}
	return tr_open_finish(ctx->ret, &a);
}

/*
 * A new name for a file: rename, link, symlink. The file exists already,
 * so no open of it happens at the new name: `mv /etc/.x /etc/cron.d/x`
 * or `ln` into a watched directory would otherwise pass unseen. They are
 * file_open events (op rename, link or symlink) selected by the same
 * rules, as writes to the new name.
 *
 * At the syscall's exit the kernel has dropped its copies of both names
 * and there is no tracepoint inside the rename that sees the dentries,
 * so the new name is the string the program passed, read back from its
 * memory, joined to the directory of its dirfd or to its cwd (resolved
 * from the kernel's struct path): `..`, `.` and symlinks inside the
 * string are not resolved, and a racing thread can change it. Flagged
 * user_memory and not resolved.
 */
#define TR_AT_FDCWD -100

/* dfd's directory (or the cwd) joined with the user string `uname`, at
 * `off` in `buf` (a scratch path area with room for 2 * TR_PATH_MAX +
 * TR_PATH_MAX / 2 bytes); returns its length. */
static __always_inline __u32 tr_name_at(char *buf, struct tr_walk *walk, __u32 off, long dfd,
					const char *uname, bool *cut)
{
	struct task_struct *task = bpf_get_current_task_btf();
	char first = 0;
	__u32 len = 0;

	bpf_probe_read_user(&first, 1, uname);
	if (first != '/') {
		struct vfsmount *mnt = NULL;
		struct dentry *dentry = NULL;

		if (dfd == TR_AT_FDCWD) {
			struct fs_struct *fs = BPF_CORE_READ(task, fs);

			mnt = BPF_CORE_READ(fs, pwd.mnt);
			dentry = BPF_CORE_READ(fs, pwd.dentry);
		} else {
			struct file *f = tr_fd_file(task, dfd);

			if (f) {
				mnt = BPF_CORE_READ(f, f_path.mnt);
				dentry = BPF_CORE_READ(f, f_path.dentry);
			}
		}
		if (dentry) {
			len = tr_write_path(buf, off, TR_PATH_MAX / 2, walk, mnt, dentry, cut);
			if (len > 1)
				buf[tr_bound(off + len++, TR_DATA_MASK)] = '/';
			else
				len = 1; /* the directory is "/" */
		}
	}
	long n = bpf_probe_read_user_str(&buf[tr_bound(off + len, 2 * TR_PATH_MAX - 1)],
					 TR_PATH_MAX / 2, uname);

	if (n > 0)
		len += n - 1;
	if (len > TR_PATH_MAX) {
		len = TR_PATH_MAX;
		*cut = true;
	}
	return len;
}

/* `target` is the symlink's content: a string, not a file. */
static __always_inline int tr_new_name(long ret, __u16 op, __u16 hook, long olddfd,
				       const char *oldname, long newdfd, const char *newname)
{
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_FILE, &gen);
	struct tr_file_scratch *s = bpf_map_lookup_elem(&tr_file_heap, &zero);

	if (!cfg || !s)
		return 0;
	struct tr_file_open *ev = &s->ev;
	bool cut = false;
	__u32 len = tr_name_at(ev->path, &s->walk, 0, newdfd, newname, &cut);
	struct tr_policy_input *in = tr_policy_request(
		ev->path, len, TR_F_PATH, bpf_get_current_uid_gid() & 0xFFFFFFFF, true);

	tr_policy_binary(in, bpf_get_current_pid_tgid() >> 32);
	tr_policy_eval(TR_PK_FILE, gen, in, &ev->verdict);
	if (ev->verdict.action == TR_ACT_NONE || ev->verdict.action == TR_ACT_IGNORE)
		return 0;
	__u32 src = 0;

	if (op == TR_FILE_OP_SYMLINK) {
		long n = bpf_probe_read_user_str(&ev->path[tr_bound(len, 2 * TR_PATH_MAX - 1)],
						 TR_PATH_MAX / 2, oldname);

		src = n > 0 ? n - 1 : 0;
	} else {
		src = tr_name_at(ev->path, &s->walk, len, olddfd, oldname, &cut);
	}
	ev->hdr.kind = TR_KIND_FILE_OPEN;
	ev->ret = ret;
	ev->open_flags = 0;
	ev->mode = 0;
	ev->hook = hook;
	ev->op = op;
	ev->flags = TR_FILE_UNRESOLVED | TR_FILE_USER_MEMORY | (cut ? TR_FILE_TRUNC_PATH : 0);
	ev->path_len = len;
	ev->source_len = src;
	tr_fill_task(&ev->task, bpf_get_current_task_btf());
	tr_file_emit(ev, len + src);
	return 0;
}

/* One program for rename, link and symlink in all their forms, as for opens. */
SEC("tp/syscalls/sys_exit_renameat2")
int tr_new_name_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *r = tr_user_regs();
	/* (oldname, newname) from the cwd, unless the call says otherwise */
	long olddfd = TR_AT_FDCWD, newdfd = TR_AT_FDCWD;
	const char *oldname = (const char *)TR_ARG(r, 1), *newname = (const char *)TR_ARG(r, 2);
	__u16 op, hook;

	switch ((int)ctx->id) {
	case TR_NR_RENAMEAT:
		op = TR_FILE_OP_RENAME, hook = TR_HOOK_TP_RENAMEAT;
		goto at;
	case TR_NR_RENAMEAT2:
		op = TR_FILE_OP_RENAME, hook = TR_HOOK_TP_RENAMEAT2;
		goto at;
	case TR_NR_LINKAT:
		op = TR_FILE_OP_LINK, hook = TR_HOOK_TP_LINKAT;
at: /* (olddfd, oldname, newdfd, newname) */
		olddfd = (int)TR_ARG(r, 1);
		oldname = (const char *)TR_ARG(r, 2);
		newdfd = (int)TR_ARG(r, 3);
		newname = (const char *)TR_ARG(r, 4);
		break;
	case TR_NR_SYMLINKAT: /* (target, newdfd, linkpath) */
		op = TR_FILE_OP_SYMLINK, hook = TR_HOOK_TP_SYMLINKAT;
		newdfd = (int)TR_ARG(r, 2);
		newname = (const char *)TR_ARG(r, 3);
		break;
#if TR_HAVE_LEGACY_NAMES
	case TR_NR_RENAME:
		op = TR_FILE_OP_RENAME, hook = TR_HOOK_TP_RENAME;
		break;
	case TR_NR_LINK:
		op = TR_FILE_OP_LINK, hook = TR_HOOK_TP_LINK;
		break;
	case TR_NR_SYMLINK:
		op = TR_FILE_OP_SYMLINK, hook = TR_HOOK_TP_SYMLINK;
		break;
#endif
	default:
		return 0;
	}
	return tr_new_name(ctx->ret, op, hook, olddfd, oldname, newdfd, newname);
}

#endif /* TRACER_FILE_BPF_H */
