/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Process lifecycle capture: exec, fork (new thread groups only) and exit
 * (only when the whole thread group is gone). Each hook has a tp_btf
 * program and a raw_tp fallback with the same body; the loader keeps one
 * per hook and disables the other before load. Exec also runs the exec
 * policy (a sigkill here stops the new program before its first
 * instruction) and keeps tr_proc_binary current for the other kinds.
 */
#ifndef TRACER_PROCESS_BPF_H
#define TRACER_PROCESS_BPF_H

#include "policy.bpf.h"

/* The exec record is too large for the BPF stack: it is assembled in a
 * per-CPU slot (sched tracepoints run with preemption disabled, so a slot
 * is never shared by two programs at once) and copied to the ring buffer
 * at its used size. `slack` keeps masked writes past the end in bounds. */
struct tr_exec_scratch {
	struct tr_exec ev;
	char slack[TR_ARGS_MAX];
	struct tr_walk walk;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_exec_scratch);
} tr_exec_heap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_binary);
} tr_binary_heap SEC(".maps");

static __always_inline int on_exec(struct task_struct *task, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	struct tr_exec_scratch *s = bpf_map_lookup_elem(&tr_exec_heap, &zero);
	bool cut = false;

	if (!s)
		return 0;
	struct tr_exec *ev = &s->ev;

	ev->hdr.kind = TR_KIND_EXEC;
	ev->flags = 0;
	tr_fill_task(&ev->task, task);

	struct file *file = TR_RD(struct linux_binprm, bprm, file);
	__u32 off = tr_write_path(ev->data, 0, TR_PATH_MAX, &s->walk,
				  TR_RD(struct file, file, f_path.mnt),
				  TR_RD(struct file, file, f_path.dentry), &cut);
	if (cut)
		ev->flags |= TR_EXEC_TRUNC_PATH;
	ev->path_len = off;
	/* memfd_create() names its file "memfd:NAME" (mm/memfd.c) */
	if (s->walk.pseudo && off >= 6 && ev->data[0] == 'm' && ev->data[1] == 'e' &&
	    ev->data[2] == 'm' && ev->data[3] == 'f' && ev->data[4] == 'd' && ev->data[5] == ':')
		ev->flags |= TR_EXEC_MEMFD;
	else if (tr_file_deleted(file))
		ev->flags |= TR_EXEC_DELETED;

	/* The file's identity, which a path does not give: the same path
	 * can name another file in another mount namespace, or under a
	 * mount over it. st_dev is new_encode_dev() of the sb's s_dev. */
	struct inode *inode = TR_RD(struct file, file, f_inode);
	struct super_block *sb = TR_RD(struct inode, inode, i_sb);
	__u32 dev = TR_RD(struct super_block, sb, s_dev);
	__u32 major = dev >> 20, minor = dev & 0xfffff;

	ev->binary_dev = (minor & 0xff) | (major << 8) | ((minor & ~0xffU) << 12);
	struct nsproxy *nsp = TR_RD(struct task_struct, task, nsproxy);
	struct mnt_namespace *mnt_ns = TR_RD(struct nsproxy, nsp, mnt_ns);

	ev->binary_ino = TR_RD(struct inode, inode, i_ino);
	ev->mnt_ns = TR_RD(struct mnt_namespace, mnt_ns, ns.inum);
	ev->pad = 0;

	struct fs_struct *fs = TR_RD(struct task_struct, task, fs);
	cut = false;
	__u32 cwd_len = tr_write_path(ev->data, off, TR_PATH_MAX, &s->walk,
				      TR_RD(struct fs_struct, fs, pwd.mnt),
				      TR_RD(struct fs_struct, fs, pwd.dentry), &cut);
	if (cut)
		ev->flags |= TR_EXEC_TRUNC_CWD;
	ev->cwd_len = cwd_len;
	off += cwd_len;

	/* argv lives in the new mm, just copied in by exec, so it is resident. */
	struct mm_struct *mm = TR_RD(struct task_struct, task, mm);
	__u64 args_len = 0;

	if (mm) {
		unsigned long start = TR_RD(struct mm_struct, mm, arg_start);
		unsigned long end = TR_RD(struct mm_struct, mm, arg_end);

		args_len = end > start ? end - start : 0;
		if (args_len > TR_ARGS_MAX) {
			args_len = TR_ARGS_MAX;
			ev->flags |= TR_EXEC_TRUNC_ARGS;
		}
		if (bpf_probe_read_user(&ev->data[off & TR_DATA_MASK], args_len,
					(void *)start))
			args_len = 0;
	} else {
		ev->flags |= TR_EXEC_NO_MM;
	}
	ev->args_len = args_len;

	struct tr_binary *bin = bpf_map_lookup_elem(&tr_binary_heap, &zero);

	if (bin) {
		__u32 head = ev->path_len < TR_POLICY_STR ? ev->path_len : TR_POLICY_STR;

		__builtin_memset(bin, 0, sizeof(*bin));
		bin->len = ev->path_len;
		bpf_probe_read_kernel(bin->s, tr_bound(head, 255), ev->data);
		bpf_map_update_elem(&tr_proc_binary, &ev->task.tgid, bin, BPF_ANY);
		if (ev->path_len > TR_POLICY_STR) {
			/* bin is scratch: its first bytes now carry the tail */
			bpf_probe_read_kernel(bin->s, TR_POLICY_STR,
					      &ev->data[(ev->path_len - TR_POLICY_STR) & TR_DATA_MASK]);
			bpf_map_update_elem(&tr_proc_binary_tail, &ev->task.tgid, bin->s, BPF_ANY);
		}
	}
	__u32 gen;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_EXEC, &gen);

	ev->verdict.action = TR_ACT_NONE;
	if (cfg) {
		struct tr_policy_input *in = tr_policy_request(ev->data, ev->path_len, TR_F_BINARY,
							       ev->task.uid, false);

		tr_policy_eval(TR_PK_EXEC, gen, in, &ev->verdict);
	}

	__u64 size = offsetof(struct tr_exec, data) + off + args_len;

	if (size > sizeof(struct tr_exec))
		size = sizeof(struct tr_exec);
	ev->hdr.size = size;
	/* An exec a rule posted or enforced is the policy's, like an open. */
	if (ev->verdict.action == TR_ACT_NONE || ev->verdict.action == TR_ACT_IGNORE)
		tr_emit_bulk(TR_KIND_EXEC, ev, size, ev->task.uid);
	else
		tr_emit(TR_KIND_EXEC, ev, size);
	return 0;
}

static __always_inline int on_fork(struct task_struct *child)
{
	/* A clone that shares the thread group is a thread, not a process. */
	__u32 ctgid = TR_RD(struct task_struct, child, tgid);

	if (TR_RD(struct task_struct, child, pid) != ctgid)
		return 0;

	struct tr_fork ev = {};
	struct task_struct *parent = TR_RD(struct task_struct, child, real_parent);
	__u32 ptgid = TR_RD(struct task_struct, parent, tgid);
	struct tr_binary *bin = bpf_map_lookup_elem(&tr_proc_binary, &ptgid);

	if (bin) {
		bpf_map_update_elem(&tr_proc_binary, &ctgid, bin, BPF_ANY);
		if (bin->len > TR_POLICY_STR) {
			struct tr_binary_tail *t = bpf_map_lookup_elem(&tr_proc_binary_tail, &ptgid);

			if (t)
				bpf_map_update_elem(&tr_proc_binary_tail, &ctgid, t, BPF_ANY);
		}
	}

	ev.hdr.kind = TR_KIND_FORK;
	ev.hdr.size = sizeof(ev);
	tr_fill_task(&ev.task, child);
	tr_emit_bulk(TR_KIND_FORK, &ev, sizeof(ev), ev.task.uid);
	return 0;
}

static __always_inline int on_exit(struct task_struct *task)
{
	/* do_exit() has already decremented `live`: zero means this was the
	 * last thread. Works on kernels whose tracepoint has no group_dead. */
	struct signal_struct *sig = TR_RD(struct task_struct, task, signal);

	if (TR_RD(struct signal_struct, sig, live.counter) != 0)
		return 0;

	struct tr_exit ev = {};

	ev.hdr.kind = TR_KIND_EXIT;
	ev.hdr.size = sizeof(ev);
	tr_fill_task(&ev.task, task);
	ev.exit_code = TR_RD(struct task_struct, task, exit_code);
	bpf_map_delete_elem(&tr_proc_binary, &ev.task.tgid);
	tr_emit_bulk(TR_KIND_EXIT, &ev, sizeof(ev), ev.task.uid);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tr_exec_btf, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	return on_exec(task, bprm);
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(tr_exec_raw, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	return on_exec(task, bprm);
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tr_fork_btf, struct task_struct *parent, struct task_struct *child)
{
	return on_fork(child);
}

SEC("raw_tp/sched_process_fork")
int BPF_PROG(tr_fork_raw, struct task_struct *parent, struct task_struct *child)
{
	return on_fork(child);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tr_exit_btf, struct task_struct *task)
{
	return on_exit(task);
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(tr_exit_raw, struct task_struct *task)
{
	return on_exit(task);
}

#endif /* TRACER_PROCESS_BPF_H */
