/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Privilege changes and set-id file changes, on syscall tracepoints (the
 * only hooks every kernel offers; the security-hook modes use them too).
 *
 *  - privilege_change: commit_creds() has no tracepoint, so the set*id and
 *    capset syscalls' enter tracepoints save the caller's credentials and
 *    their exit compares them with the ones the kernel left: only a call
 *    that changed something is reported, with both. An exec is compared
 *    at sched_process_exec with what execve's enter saw: a set-id or
 *    file-capability binary changes them there.
 *  - file_attr: chmod and friends that leave S_ISUID or S_ISGID set, and
 *    chown to uid 0 of a file in a world-writable directory, judged at the
 *    syscall's exit on its result; no open happens, so file_open never
 *    sees either. In the hook modes a chown's directory is the one its
 *    path security hook found, in tracepoint mode the fd's, or the one
 *    its name is in, found again in the dentry cache at the exit.
 *  - the same calls through x86's 32-bit entry, which the syscalls:*
 *    tracepoints skip: on the raw sys_enter and sys_exit (end of file).
 *
 * Both kinds are rare (logins, daemons dropping privileges, installs), so
 * every one is reported, on the bulk ring, unless a rule selects it (the
 * selected ring) or ignores it (dropped here).
 */
#ifndef TRACER_PRIV_BPF_H
#define TRACER_PRIV_BPF_H

#include "file.bpf.h"
#include "origin.bpf.h"

#define TR_S_ISUID 04000
#define TR_S_ISGID 02000
#define TR_S_IWOTH 00002
#define TR_AT_EMPTY_PATH 0x1000

/* Credentials as a set*id, capset or exec call found them, in the calling
 * thread's task storage: no hashing and no LRU lock on every exec (an LRU
 * hash update was 1.8 us of it), and a thread that execs keeps its
 * task_struct when it takes over the leader's pid. `armed` is cleared at
 * the exit: a call whose enter was not seen compares nothing. The same
 * slot carries what a chown's security hook found (hook modes) to the
 * chown's exit: `chown_hook` (enum tr_hook; 0: none) and the mode of the
 * directory the kernel found the file in. */
struct tr_cred_slot {
	struct tr_cred cred;
	__u32 armed;
	__u16 chown_hook;
	__u16 chown_dir_mode;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tr_cred_slot);
} tr_cred_before SEC(".maps");

/* The record, assembled off the stack: the 32-bit exit program that
 * calls in here has a large frame of its own. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_priv);
} tr_priv_heap SEC(".maps");

static __always_inline struct tr_priv *tr_priv_record(void)
{
	__u32 zero = 0;
	struct tr_priv *ev = bpf_map_lookup_elem(&tr_priv_heap, &zero);

	if (ev)
		__builtin_memset(ev, 0, sizeof(*ev));
	return ev;
}

/* kernel_cap_t is a u64 from 6.3 and two u32 (low first) before: the same
 * eight bytes either way. */
static __always_inline void tr_read_cred(struct tr_cred *c, const struct cred *cred)
{
	c->uid = BPF_CORE_READ(cred, uid.val);
	c->euid = BPF_CORE_READ(cred, euid.val);
	c->suid = BPF_CORE_READ(cred, suid.val);
	c->fsuid = BPF_CORE_READ(cred, fsuid.val);
	c->gid = BPF_CORE_READ(cred, gid.val);
	c->egid = BPF_CORE_READ(cred, egid.val);
	c->sgid = BPF_CORE_READ(cred, sgid.val);
	c->fsgid = BPF_CORE_READ(cred, fsgid.val);
	bpf_probe_read_kernel(&c->cap_inheritable, 8, __builtin_preserve_access_index(&cred->cap_inheritable));
	bpf_probe_read_kernel(&c->cap_permitted, 8, __builtin_preserve_access_index(&cred->cap_permitted));
	bpf_probe_read_kernel(&c->cap_effective, 8, __builtin_preserve_access_index(&cred->cap_effective));
	bpf_probe_read_kernel(&c->cap_ambient, 8, __builtin_preserve_access_index(&cred->cap_ambient));
}

static __always_inline bool tr_cred_same(const struct tr_cred *a, const struct tr_cred *b)
{
	return a->uid == b->uid && a->euid == b->euid && a->suid == b->suid &&
	       a->fsuid == b->fsuid && a->gid == b->gid && a->egid == b->egid &&
	       a->sgid == b->sgid && a->fsgid == b->fsgid &&
	       a->cap_inheritable == b->cap_inheritable && a->cap_permitted == b->cap_permitted &&
	       a->cap_effective == b->cap_effective && a->cap_ambient == b->cap_ambient;
}

/* Some uid is root: a saved or fs uid 0 can make the others 0 at will. */
static __always_inline bool tr_has_root(const struct tr_cred *c)
{
	return !c->uid || !c->euid || !c->suid || !c->fsuid;
}

static __always_inline int tr_cred_save(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct tr_cred_slot *slot = bpf_task_storage_get(&tr_cred_before, task, 0,
							 BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!slot)
		return 0;
	tr_read_cred(&slot->cred, BPF_CORE_READ(task, cred));
	slot->armed = 1;
	return 0;
}

/* Judge and emit a change whose old and new credentials `ev` holds. */
static __always_inline int tr_priv_emit(struct tr_priv *ev, __u16 op, __u16 hook, long ret)
{
	__u32 gen;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_PRIVILEGE_CHANGE, &gen);
	bool to_root = !tr_has_root(&ev->old) && tr_has_root(&ev->new);

	ev->hdr.kind = TR_KIND_PRIVILEGE_CHANGE;
	ev->hdr.size = sizeof(*ev);
	ev->ret = ret;
	ev->op = op;
	ev->hook = hook;
	if (to_root)
		ev->flags |= TR_PRIV_TO_ROOT;
	ev->verdict.action = TR_ACT_NONE;
	if (cfg) {
		/* no string of its own: the binary is the process's */
		struct tr_policy_input *in = tr_policy_request(
			NULL, 0, TR_F_PATH, bpf_get_current_uid_gid() & 0xFFFFFFFF, to_root);

		tr_policy_binary(in, bpf_get_current_pid_tgid() >> 32);
		tr_policy_eval(TR_PK_PRIVILEGE_CHANGE, gen, in, &ev->verdict);
	}
	if (ev->verdict.action == TR_ACT_IGNORE)
		return 0;
	tr_fill_task(&ev->task, bpf_get_current_task_btf());
	if (ev->verdict.action == TR_ACT_NONE)
		tr_emit_bulk(TR_KIND_PRIVILEGE_CHANGE, ev, sizeof(*ev), ev->task.uid);
	else
		tr_emit(TR_KIND_PRIVILEGE_CHANGE, ev, sizeof(*ev));
	return 0;
}

/* The end of a call whose enter saved the credentials. */
static __always_inline int tr_cred_check(__u16 op, __u16 hook, long ret)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct tr_cred_slot *slot = bpf_task_storage_get(&tr_cred_before, task, 0, 0);
	struct tr_priv *ev;

	if (!slot || !slot->armed)
		return 0;
	slot->armed = 0;
	ev = tr_priv_record();
	if (!ev)
		return 0;
	ev->old = slot->cred;
	tr_read_cred(&ev->new, BPF_CORE_READ(task, cred));
	if (tr_cred_same(&ev->old, &ev->new))
		return 0;
	return tr_priv_emit(ev, op, hook, ret);
}

/*
 * One program for the entries of the set*id and capset calls and one for
 * their exits, each attached to every call's tracepoint (loader.py
 * SYSCALL_FAMILIES): the verifier checks each once, not once per call.
 * The exit tells the calls apart by the syscall's number.
 */
SEC("tp/syscalls/sys_enter_setuid")
int tr_cred_enter(void *ctx)
{
	return tr_cred_save();
}

static __always_inline __u16 tr_cred_op(long nr)
{
	switch (nr) {
	case TR_NR_SETUID: return TR_PRIV_SETUID;
	case TR_NR_SETGID: return TR_PRIV_SETGID;
	case TR_NR_SETREUID: return TR_PRIV_SETREUID;
	case TR_NR_SETREGID: return TR_PRIV_SETREGID;
	case TR_NR_SETRESUID: return TR_PRIV_SETRESUID;
	case TR_NR_SETRESGID: return TR_PRIV_SETRESGID;
	case TR_NR_SETFSUID: return TR_PRIV_SETFSUID;
	case TR_NR_SETFSGID: return TR_PRIV_SETFSGID;
	case TR_NR_CAPSET: return TR_PRIV_CAPSET;
	default: return 0;
	}
}

SEC("tp/syscalls/sys_exit_setuid")
int tr_cred_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u16 op = tr_cred_op((int)ctx->id);

	return op ? tr_cred_check(op, TR_HOOK_TP_SYSCALL, ctx->ret) : 0;
}

static __always_inline __u64 tr_cap_bset(const struct cred *cred)
{
	__u64 v = 0;

	bpf_probe_read_kernel(&v, 8, __builtin_preserve_access_index(&cred->cap_bset));
	return v;
}

/*
 * Credentials "plain" for an exec: every uid the same, every gid the same,
 * no inherited or ambient capability, and the capabilities exec gives a
 * process of that uid anyway (none; root: the bounding set). Nearly every
 * exec starts plain, and then what they were follows from the ids exec
 * keeps (the real ones) and the bounding set: nothing needs saving. Saving
 * (a task storage made for each new process) was 1.5 us of every exec.
 */
static __always_inline bool tr_cred_plain(const struct tr_cred *c, __u64 bset)
{
	__u64 caps = c->uid ? 0 : bset;

	return c->euid == c->uid && c->suid == c->uid && c->fsuid == c->uid &&
	       c->egid == c->gid && c->sgid == c->gid && c->fsgid == c->gid &&
	       !c->cap_inheritable && !c->cap_ambient && c->cap_permitted == caps &&
	       c->cap_effective == caps;
}

/* The plain credentials of a process whose real ids are new's. */
static __always_inline void tr_cred_make_plain(struct tr_cred *c, const struct tr_cred *new,
					       __u64 bset)
{
	__u64 caps = new->uid ? 0 : bset;

	c->uid = c->euid = c->suid = c->fsuid = new->uid;
	c->gid = c->egid = c->sgid = c->fsgid = new->gid;
	c->cap_inheritable = c->cap_ambient = 0;
	c->cap_permitted = c->cap_effective = caps;
}

/* An exec: saved only when the credentials are not plain. */
static __always_inline int tr_exec_save(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	const struct cred *cred = BPF_CORE_READ(task, cred);
	struct tr_cred_slot *slot;
	struct tr_cred c;

	tr_read_cred(&c, cred);
	if (tr_cred_plain(&c, tr_cap_bset(cred))) {
		slot = bpf_task_storage_get(&tr_cred_before, task, 0, 0);
		if (slot)
			slot->armed = 0; /* of an earlier call that failed */
		return 0;
	}
	slot = bpf_task_storage_get(&tr_cred_before, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (slot) {
		slot->cred = c;
		slot->armed = 1;
	}
	return 0;
}

SEC("tp/syscalls/sys_enter_execve")
int tr_execve_enter(void *ctx)
{
	return tr_exec_save();
}

SEC("tp/syscalls/sys_enter_execveat")
int tr_execveat_enter(void *ctx)
{
	return tr_exec_save();
}

/* After the exec: commit_creds() ran in begin_new_exec(). Against what
 * execve's enter (or the raw sys_enter's, for a 32-bit one) saved, or else
 * the plain credentials, which the enter saves nothing for. */
static __always_inline int tr_priv_exec(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	const struct cred *cred = BPF_CORE_READ(task, cred);
	struct tr_cred_slot *slot = bpf_task_storage_get(&tr_cred_before, task, 0, 0);
	struct tr_priv *ev = tr_priv_record();

	if (!ev)
		return 0;
	tr_read_cred(&ev->new, cred);
	if (slot && slot->armed) {
		ev->old = slot->cred;
		slot->armed = 0;
	} else {
		tr_cred_make_plain(&ev->old, &ev->new, tr_cap_bset(cred));
	}
	if (tr_cred_same(&ev->old, &ev->new))
		return 0;
	return tr_priv_emit(ev, TR_PRIV_EXEC, TR_HOOK_TP_EXEC, 0);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tr_priv_exec_btf, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	return tr_priv_exec();
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(tr_priv_exec_btf_raw, struct task_struct *task, pid_t old_pid,
	     struct linux_binprm *bprm)
{
	return tr_priv_exec();
}

/* ---- file_attr ---- */

/* Tracepoint mode: the walk that finds the directory a chown's name is in
 * (tr_name_dir), in map memory for its bpf_loop callbacks. */
struct tr_dir_walk {
	/* The name, and after a symlink the link's target joined to what
	 * was left of it: the two halves of the swap. */
	char path[2][TR_PATH_MAX];
	__u64 comp[(TR_NAME_MAX + 1) / 8]; /* the component being looked up */
	__u64 cand[(TR_NAME_MAX + 1) / 8]; /* a child's name, to compare */
	struct mount *mnt;   /* where the walk is */
	struct dentry *dentry;
	struct mount *root_mnt; /* the process's root, which ".." stops at */
	struct dentry *root;
	void *node;          /* child list scans */
	struct dentry *found;
	__u32 cur;           /* which path[] holds the name */
	__u32 len;
	__u32 pos;
	__u32 clen;          /* bytes in comp */
	__u32 pending;       /* comp is complete and another component follows */
	__u32 links;         /* symlinks followed */
	__u32 budget;        /* child dentries and mounts left to look at */
	__u32 state;         /* TR_DIR_* */
};

enum {
	TR_DIR_WALKING = 0,
	TR_DIR_FOUND = 1,
	TR_DIR_LOST = 2, /* not found: the walk could not follow the name */
};

struct tr_attr_scratch {
	struct tr_file_attr ev;
	/* tr_name_at writes at masked offsets up to 2 * TR_PATH_MAX plus
	 * half a path; tr_write_path up to TR_DATA_MASK plus a name. */
	char slack[TR_DATA_MASK + 1 + TR_NAME_MAX + 1 - TR_PATH_MAX];
	struct tr_walk walk;
	struct tr_dir_walk dir;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_attr_scratch);
} tr_attr_heap SEC(".maps");

struct tr_attr_args {
	long ret;
	long dfd;          /* TR_AT_FDCWD, or a directory's fd */
	const char *uname; /* the name passed; NULL for an fd call */
	long fd;           /* the file's fd (fchmod, fchown, AT_EMPTY_PATH); -1 if none */
	__u32 mode;
	__u32 uid;
	__u32 gid;
	__u16 call;        /* enum tr_attr_call */
	__u16 hook;
};

#ifndef TR_S_IFMT
#define TR_S_IFMT 00170000
#endif
#define TR_S_IFDIR 0040000
#define TR_S_IFLNK 0120000
/* Symlinks one name may pass through (the kernel's MAXSYMLINKS). */
#define TR_DIR_LINKS 40
/* Child dentries and mounts one walk may look at: a directory holds its
 * negative dentries too, which anyone can add by looking names up. */
#define TR_DIR_BUDGET 65536

/* Before 6.8 a dentry's children were a list_head (d_subdirs, linked by
 * d_child); 6.8 made them an hlist (d_children, d_sib). */
struct dentry___old {
	struct list_head d_child;
	struct list_head d_subdirs;
} __attribute__((preserve_access_index));

/* DCACHE_MOUNTED: BIT(16) until 6.15's enum dentry_flags made it BIT(15). */
static __always_inline __u32 tr_dcache_mounted(void)
{
	if (bpf_core_enum_value_exists(enum dentry_flags, DCACHE_MOUNTED))
		return bpf_core_enum_value(enum dentry_flags, DCACHE_MOUNTED);
	return 0x10000;
}

static __always_inline struct mount *tr_real_mount(struct vfsmount *vfsmnt)
{
	return (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
}

static __always_inline struct tr_dir_walk *tr_dir_of(void *arg)
{
	return &(*(struct tr_attr_scratch **)arg)->dir;
}

/* One child of w->dentry: the positive, hashed one named w->comp. */
static long tr_dir_child_step(__u32 i, void *arg)
{
	struct tr_dir_walk *w = tr_dir_of(arg);
	void *node = w->node;
	struct dentry *child;
	bool old = !bpf_core_field_exists(struct dentry, d_children);

	if (!node || !w->budget)
		return 1;
	w->budget--;
	if (old) {
		if (node == (void *)w->dentry + bpf_core_field_offset(struct dentry___old, d_subdirs))
			return 1;
		child = node - bpf_core_field_offset(struct dentry___old, d_child);
		w->node = TR_RD(struct list_head, node, next);
	} else {
		child = node - bpf_core_field_offset(struct dentry, d_sib);
		w->node = TR_RD(struct hlist_node, node, next);
	}
	__u32 clen = w->clen;

	/* Most children differ in length: two loads each (tr_direct). */
	if (TR_RD(struct dentry, child, d_name.len) != clen ||
	    !TR_RD(struct dentry, child, d_hash.pprev) || !TR_RD(struct dentry, child, d_inode))
		return 0;
	bpf_probe_read_kernel(w->cand, tr_bound(clen, TR_NAME_MAX), BPF_CORE_READ(child, d_name.name));
	for (__u32 k = 0; k < (TR_NAME_MAX + 1) / 8; k++) {
		__u32 left = clen - k * 8;
		__u64 mask = left >= 8 ? ~0ULL : (1ULL << (left * 8)) - 1;

		if (k * 8 >= clen)
			break;
		if ((w->comp[k] ^ w->cand[k]) & mask)
			return 0;
	}
	w->found = child;
	return 1;
}

/* The mount on w->dentry, if any, and the one on that mount's root...:
 * where a lookup that found w->dentry goes on. */
static long tr_dir_mount_step(__u32 i, void *arg)
{
	struct tr_dir_walk *w = tr_dir_of(arg);
	struct mount *mnt = w->mnt;
	void *head = (void *)mnt + bpf_core_field_offset(struct mount, mnt_mounts);
	void *node = w->node;

	if (!w->budget)
		return 1;
	w->budget--;
	if (!node || node == head)
		return 1; /* no mount on it */
	struct mount *child = node - bpf_core_field_offset(struct mount, mnt_child);

	w->node = BPF_CORE_READ((struct list_head *)node, next);
	if (BPF_CORE_READ(child, mnt_mountpoint) != w->dentry)
		return 0;
	struct dentry *root = BPF_CORE_READ(child, mnt.mnt_root);

	w->mnt = child;
	w->dentry = root;
	if (!(BPF_CORE_READ(root, d_flags) & tr_dcache_mounted()))
		return 1;
	w->node = BPF_CORE_READ(child, mnt_mounts.next); /* a mount on top */
	return 0;
}

/* "..": the parent, across mount points upwards, never above the root. */
static __always_inline void tr_dir_dotdot(struct tr_dir_walk *w)
{
	for (int k = 0; k < 16; k++) {
		struct mount *mnt = w->mnt;
		struct dentry *d = w->dentry;

		if (d == w->root && mnt == w->root_mnt)
			return;
		if (d != BPF_CORE_READ(mnt, mnt.mnt_root)) {
			w->dentry = BPF_CORE_READ(d, d_parent);
			return;
		}
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

		if (up == mnt)
			return;
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = up;
	}
}

static __always_inline bool tr_dir_is(const __u64 *comp, __u32 clen, const char *what)
{
	return clen == (what[1] ? 2 : 1) && ((const char *)comp)[0] == what[0] &&
	       (clen == 1 || ((const char *)comp)[1] == what[1]);
}

/* Go on from a symlink: its target, then '/' and the rest of the name,
 * into the other half of w->path; NULL target: a link whose target is
 * not in the inode (a long one), which the walk cannot read. */
static __always_inline bool tr_dir_follow(struct tr_attr_scratch *s, struct dentry *link)
{
	struct tr_dir_walk *w = &s->dir;
	const char *target = BPF_CORE_READ(link, d_inode, i_link);
	__u32 to = (w->cur + 1) & 1, from = w->cur & 1;

	if (!target || ++w->links > TR_DIR_LINKS)
		return false;
	long n = bpf_probe_read_kernel_str(w->path[to], TR_PATH_MAX / 2, target);

	if (n <= 1)
		return false;
	__u32 tlen = n - 1, rest = w->len - w->pos;

	if (tlen + 1 + rest >= TR_PATH_MAX)
		return false;
	w->path[to][tr_bound(tlen, TR_PATH_MAX - 1)] = '/';
	if (rest)
		bpf_probe_read_kernel(&w->path[to][tr_bound(tlen + 1, TR_PATH_MAX / 2 - 1)],
				      tr_bound(rest, TR_PATH_MAX / 2 - 1),
				      &w->path[from][tr_bound(w->pos, TR_PATH_MAX - 1)]);
	w->len = tlen + 1 + rest;
	w->cur = to;
	w->pos = 0;
	if (w->path[to][0] == '/') {
		w->mnt = w->root_mnt;
		w->dentry = w->root;
	}
	return true;
}

/* Step into the component in w->comp, which another one follows. */
static __always_inline bool tr_dir_enter(struct tr_attr_scratch *s, void *arg)
{
	struct tr_dir_walk *w = &s->dir;

	if (tr_dir_is(w->comp, w->clen, "."))
		return true;
	if (tr_dir_is(w->comp, w->clen, "..")) {
		tr_dir_dotdot(w);
		return true;
	}
	struct dentry *dir = w->dentry;
	struct mount *mnt = w->mnt;

	w->found = NULL;
	if (bpf_core_field_exists(struct dentry, d_children))
		w->node = BPF_CORE_READ(dir, d_children.first);
	else
		w->node = BPF_CORE_READ((struct dentry___old *)dir, d_subdirs.next);
	bpf_loop(TR_DIR_BUDGET, tr_dir_child_step, arg, 0);
	struct dentry *child = w->found;

	if (!child)
		return false;
	__u32 mode = BPF_CORE_READ(child, d_inode, i_mode) & TR_S_IFMT;

	if (mode == TR_S_IFLNK)
		return tr_dir_follow(s, child);
	if (mode != TR_S_IFDIR)
		return false;
	w->dentry = child;
	if (BPF_CORE_READ(child, d_flags) & tr_dcache_mounted()) {
		w->node = BPF_CORE_READ(mnt, mnt_mounts.next);
		bpf_loop(TR_DIR_BUDGET, tr_dir_mount_step, arg, 0);
	}
	return true;
}

/* One byte of the name: components are collected, and each is looked up
 * once the next one starts; the last one is the file's. */
static long tr_dir_step(__u32 i, void *arg)
{
	struct tr_attr_scratch *s = *(struct tr_attr_scratch **)arg;
	struct tr_dir_walk *w = &s->dir;
	__u32 pos = w->pos;

	if (pos >= w->len) {
		/* A last "." or ".." names a directory, whose own directory
		 * is its parent: the file is that directory. */
		bool dot = tr_dir_is(w->comp, w->clen, ".");

		if (tr_dir_is(w->comp, w->clen, ".."))
			tr_dir_dotdot(w);
		if (dot || tr_dir_is(w->comp, w->clen, "..")) {
			struct dentry *d = w->dentry;

			w->dentry = BPF_CORE_READ(d, d_parent);
		}
		w->state = TR_DIR_FOUND;
		return 1;
	}
	char c = w->path[w->cur & 1][tr_bound(pos, TR_PATH_MAX - 1)];

	if (c == '/') {
		if (w->clen)
			w->pending = 1;
		w->pos = pos + 1;
		return 0;
	}
	if (w->pending) {
		w->pending = 0;
		if (!tr_dir_enter(s, arg)) {
			w->state = TR_DIR_LOST;
			return 1;
		}
		w->clen = 0;
		return 0; /* pos is unchanged, or the start of a link's target */
	}
	__u32 clen = w->clen;

	if (clen >= TR_NAME_MAX) {
		w->state = TR_DIR_LOST;
		return 1;
	}
	if (!clen)
		__builtin_memset(w->comp, 0, sizeof(w->comp));
	((char *)w->comp)[tr_bound(clen, TR_NAME_MAX)] = c;
	w->clen = clen + 1;
	w->pos = pos + 1;
	return 0;
}

/*
 * Tracepoint mode: the directory a chown's name is in, found again at the
 * call's exit by looking the name's directories up in the dentry cache
 * the call's own lookup filled: from the root (an absolute name), dfd's
 * directory or the cwd, through ".", "..", mount points and symlinks whose
 * target the inode holds. NULL when the name cannot be read or the walk
 * cannot follow it: a long symlink, a name no longer cached, a directory
 * with more than TR_DIR_BUDGET dentries before the one sought.
 */
static __always_inline struct dentry *tr_name_dir(struct tr_attr_scratch *s,
						  const struct tr_attr_args *a)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct tr_dir_walk *w = &s->dir;
	struct tr_attr_scratch *sp = s;
	long n = bpf_probe_read_user_str(w->path[0], TR_PATH_MAX, a->uname);
	struct fs_struct *fs = BPF_CORE_READ(task, fs);

	if (n <= 1)
		return NULL;
	w->cur = 0;
	w->len = n - 1;
	w->pos = 0;
	w->clen = 0;
	w->pending = 0;
	w->links = 0;
	w->budget = TR_DIR_BUDGET;
	w->state = TR_DIR_WALKING;
	w->root_mnt = tr_real_mount(BPF_CORE_READ(fs, root.mnt));
	w->root = BPF_CORE_READ(fs, root.dentry);
	if (w->path[0][0] == '/') {
		w->mnt = w->root_mnt;
		w->dentry = w->root;
	} else if (a->dfd == TR_AT_FDCWD) {
		w->mnt = tr_real_mount(BPF_CORE_READ(fs, pwd.mnt));
		w->dentry = BPF_CORE_READ(fs, pwd.dentry);
	} else {
		struct file *f = tr_fd_file(task, a->dfd);

		if (!f)
			return NULL;
		w->mnt = tr_real_mount(BPF_CORE_READ(f, f_path.mnt));
		w->dentry = BPF_CORE_READ(f, f_path.dentry);
	}
	bpf_loop(TR_PATH_MAX + TR_DIR_LINKS * TR_PATH_MAX / 2, tr_dir_step, &sp, 0);
	return w->state == TR_DIR_FOUND ? w->dentry : NULL;
}

/*
 * Hook modes: the path security hook of every chown (chown_common(), after
 * the kernel's own lookup and before the change) keeps the mode of the
 * directory the file is in, as the dentry says, not as a name a racing
 * thread can rewrite; the call's exit takes it.
 */
static __always_inline void tr_chown_seen(const struct path *path, __u16 hook)
{
	struct tr_cred_slot *slot = bpf_task_storage_get(&tr_cred_before,
							 bpf_get_current_task_btf(), 0,
							 BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!slot)
		return;
	slot->chown_dir_mode = BPF_CORE_READ(path, dentry, d_parent, d_inode, i_mode);
	slot->chown_hook = hook;
}

SEC("lsm/path_chown")
int BPF_PROG(tr_lsm_path_chown, const struct path *path, __u64 uid, __u64 gid, int ret)
{
	if (!ret)
		tr_chown_seen(path, TR_HOOK_LSM_PATH_CHOWN);
	return ret;
}

SEC("fentry/security_path_chown")
int BPF_PROG(tr_fentry_path_chown, const struct path *path)
{
	tr_chown_seen(path, TR_HOOK_FENTRY_PATH_CHOWN);
	return 0;
}

SEC("kprobe/security_path_chown")
int BPF_KPROBE(tr_kprobe_path_chown, const struct path *path)
{
	tr_chown_seen(path, TR_HOOK_KPROBE_PATH_CHOWN);
	return 0;
}

/* What this thread's last chown hook saw, taken at the call's exit so that
 * no later call can judge by it: its hook (0: none) and directory mode. */
static __always_inline __u16 tr_chown_taken(__u16 *dir_mode)
{
	struct tr_cred_slot *slot = bpf_task_storage_get(&tr_cred_before,
							 bpf_get_current_task_btf(), 0, 0);
	__u16 hook;

	if (!slot)
		return 0;
	hook = slot->chown_hook;
	*dir_mode = slot->chown_dir_mode;
	slot->chown_hook = 0;
	return hook;
}

static __always_inline int tr_attr_finish(const struct tr_attr_args *a)
{
	bool chmod = a->call <= TR_CALL_FCHMODAT2;
	__u16 dir_mode = 0, dir_hook = chmod ? 0 : tr_chown_taken(&dir_mode);

	if (a->ret != 0)
		return 0;
	if (chmod ? !(a->mode & (TR_S_ISUID | TR_S_ISGID)) : a->uid != 0)
		return 0;
	__u32 gen, zero = 0;
	struct tr_attr_scratch *s = bpf_map_lookup_elem(&tr_attr_heap, &zero);

	if (!s)
		return 0;
	struct tr_file_attr *ev = &s->ev;
	struct task_struct *task = bpf_get_current_task_btf();
	bool cut = false, lost = false;
	__u32 len;

	ev->flags = 0;
	ev->file_mode = 0;
	if (a->fd >= 0) {
		struct file *f = tr_fd_file(task, a->fd);

		if (!f)
			return 0;
		struct dentry *d = BPF_CORE_READ(f, f_path.dentry);

		ev->file_mode = BPF_CORE_READ(d, d_inode, i_mode);
		/* The kernel drops S_ISGID for a caller outside the group. */
		if (chmod && !(ev->file_mode & (TR_S_ISUID | TR_S_ISGID)))
			return 0;
		if (!dir_hook)
			dir_mode = BPF_CORE_READ(d, d_parent, d_inode, i_mode);
		len = tr_write_path(ev->path, 0, TR_PATH_MAX, &s->walk,
				    BPF_CORE_READ(f, f_path.mnt), d, &cut);
	} else {
		if (!chmod && !dir_hook) {
			struct dentry *dir = tr_name_dir(s, a);

			/* Not found: reported unjudged rather than missed, since
			 * an attacker can make the walk fail (a long symlink). */
			if (dir)
				dir_mode = BPF_CORE_READ(dir, d_inode, i_mode);
			else
				lost = true;
		}
		len = tr_name_at(ev->path, &s->walk, 0, a->dfd, a->uname, &cut);
		ev->flags |= TR_ATTR_UNRESOLVED;
	}
	if (!chmod && !lost) {
		if (!(dir_mode & TR_S_IWOTH))
			return 0;
		ev->flags |= TR_ATTR_WORLD_WRITABLE_DIR;
	}
	if (len > TR_PATH_MAX) {
		len = TR_PATH_MAX;
		cut = true;
	}
	if (cut)
		ev->flags |= TR_ATTR_TRUNC_PATH;
	ev->path_len = len;

	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_FILE_ATTR, &gen);

	ev->verdict.action = TR_ACT_NONE;
	if (cfg) {
		struct tr_policy_input *in = tr_policy_request(
			ev->path, len, TR_F_PATH, bpf_get_current_uid_gid() & 0xFFFFFFFF, false);

		tr_policy_binary(in, bpf_get_current_pid_tgid() >> 32);
		tr_policy_eval(TR_PK_FILE_ATTR, gen, in, &ev->verdict);
	}
	if (ev->verdict.action == TR_ACT_IGNORE)
		return 0;
	ev->hdr.kind = TR_KIND_FILE_ATTR;
	ev->ret = a->ret;
	ev->mode = a->mode;
	ev->uid = a->uid;
	ev->gid = a->gid;
	ev->op = chmod ? TR_ATTR_CHMOD : TR_ATTR_CHOWN;
	ev->call = a->call;
	/* the path hook's name, with how the call was made (ia32) */
	ev->hook = dir_hook ? dir_hook | (a->hook & TR_HOOK_IA32) : a->hook;
	tr_fill_task(&ev->task, task);

	__u64 size = offsetof(struct tr_file_attr, path) + tr_bound((__u64)len, 0x1FFF);

	if (size > sizeof(struct tr_file_attr))
		size = sizeof(struct tr_file_attr);
	ev->hdr.size = size;
	if (ev->verdict.action == TR_ACT_NONE)
		tr_emit_bulk(TR_KIND_FILE_ATTR, ev, size, ev->task.uid);
	else
		tr_emit(TR_KIND_FILE_ATTR, ev, size);
	return 0;
}

/* An *at call on "" with AT_EMPTY_PATH acts on dfd itself. */
static __always_inline void tr_attr_empty_path(struct tr_attr_args *a, __u32 at_flags)
{
	char first = 1;

	if (!(at_flags & TR_AT_EMPTY_PATH))
		return;
	bpf_probe_read_user(&first, 1, a->uname);
	if (!first) {
		a->fd = a->dfd;
		a->uname = NULL;
	}
}

/* One program for chmod and chown in all their forms, attached to each
 * call's exit (loader.py SYSCALL_FAMILIES), as for opens (file.bpf.h). */
SEC("tp/syscalls/sys_exit_fchmodat")
int tr_attr_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *r = tr_user_regs();
	struct tr_attr_args a = {
		.ret = ctx->ret, .dfd = TR_AT_FDCWD, .fd = -1, .hook = TR_HOOK_TP_SYSCALL,
	};

	switch ((int)ctx->id) {
	case TR_NR_FCHMOD:
		a.fd = (int)TR_ARG(r, 1);
		a.mode = TR_ARG(r, 2);
		a.call = TR_CALL_FCHMOD;
		break;
	case TR_NR_FCHMODAT:
	case TR_NR_FCHMODAT2:
		a.dfd = (int)TR_ARG(r, 1);
		a.uname = (const char *)TR_ARG(r, 2);
		a.mode = TR_ARG(r, 3);
		if ((int)ctx->id == TR_NR_FCHMODAT) {
			a.call = TR_CALL_FCHMODAT;
		} else {
			a.call = TR_CALL_FCHMODAT2;
			tr_attr_empty_path(&a, TR_ARG(r, 4));
		}
		break;
	case TR_NR_FCHOWN:
		a.fd = (int)TR_ARG(r, 1);
		a.uid = TR_ARG(r, 2);
		a.gid = TR_ARG(r, 3);
		a.call = TR_CALL_FCHOWN;
		break;
	case TR_NR_FCHOWNAT:
		a.dfd = (int)TR_ARG(r, 1);
		a.uname = (const char *)TR_ARG(r, 2);
		a.uid = TR_ARG(r, 3);
		a.gid = TR_ARG(r, 4);
		a.call = TR_CALL_FCHOWNAT;
		tr_attr_empty_path(&a, TR_ARG(r, 5));
		break;
#if TR_HAVE_LEGACY_NAMES
	case TR_NR_CHMOD:
		a.uname = (const char *)TR_ARG(r, 1);
		a.mode = TR_ARG(r, 2);
		a.call = TR_CALL_CHMOD;
		break;
	case TR_NR_CHOWN:
	case TR_NR_LCHOWN:
		a.uname = (const char *)TR_ARG(r, 1);
		a.uid = TR_ARG(r, 2);
		a.gid = TR_ARG(r, 3);
		a.call = (int)ctx->id == TR_NR_CHOWN ? TR_CALL_CHOWN : TR_CALL_LCHOWN;
		break;
#endif
	default:
		return 0;
	}
	return tr_attr_finish(&a);
}

/*
 * ---- 32-bit syscalls (x86's ia32 entry) ----
 *
 * x86's syscall tracepoints skip them, so the raw sys_enter and sys_exit
 * tracepoints watch them, in every capture mode (the security hooks see no
 * set*id, chmod or chown either): the entry of a set*id or capset saves the
 * credentials as tr_cred_enter does, the exit judges the call as the 64-bit
 * exits do. Both programs run at every syscall of every process, so each
 * first tests the number against a bitmap, a load, then the task.
 */
#if TR_HAVE_IA32
/* Bit n set: ia32 syscall n is one tr_ia32_priv() judges (the numbers of
 * tr_ia32_priv_op() and of its switch). */
static const volatile __u64 tr_ia32_priv_nrs[8] = { 0x400000818000ULL, 0xc00000c0ULL, 0x240041000000c00ULL, 0x1f59840ULL, 0x4040000000000ULL, 0x0ULL, 0x0ULL, 0x10ULL };
/* The calls whose entry saves the credentials: of those, the set*id and
 * capset calls (tr_ia32_priv_op()'s), and execve and execveat, for the
 * exec's compare (tr_priv_exec). */
static const volatile __u64 tr_ia32_cred_nrs[8] = { 0x400000800800ULL, 0xc0ULL, 0x200041000000c00ULL, 0x1e51800ULL, 0x0ULL, 0x4000000000ULL, 0x0ULL, 0x0ULL };

static __always_inline bool tr_ia32_nr_in(const volatile __u64 *nrs, long nr)
{
	return nr >= 0 && nr < 512 && ((nrs[(nr >> 6) & 7] >> (nr & 63)) & 1);
}

static __always_inline bool tr_ia32_priv_nr(long nr)
{
	return tr_ia32_nr_in(tr_ia32_priv_nrs, nr);
}

/* The ia32 table: the 16-bit-id calls and their 32-bit twins. */
static __always_inline __u16 tr_ia32_priv_op(long nr)
{
	switch (nr) {
	case 23: case 213: return TR_PRIV_SETUID;
	case 46: case 214: return TR_PRIV_SETGID;
	case 70: case 203: return TR_PRIV_SETREUID;
	case 71: case 204: return TR_PRIV_SETREGID;
	case 164: case 208: return TR_PRIV_SETRESUID;
	case 170: case 210: return TR_PRIV_SETRESGID;
	case 138: case 215: return TR_PRIV_SETFSUID;
	case 139: case 216: return TR_PRIV_SETFSGID;
	case 185: return TR_PRIV_CAPSET;
	default: return 0;
	}
}

/* 16-bit ids: 0xFFFF means "unchanged", as (u32)-1 does for the others. */
static __always_inline __u32 tr_ia32_id(__u32 v, bool wide)
{
	return wide || (__u16)v != 0xFFFF ? v : (__u32)-1;
}

/* A set*id, capset, chmod or chown through the 32-bit entry, at its exit
 * (tracepoint mode: from evasion.bpf.h's sys_exit program, which also
 * takes 32-bit opens and connects; the hook modes see those in their
 * security hooks and run tr_tp_ia32_priv_exit below). */
static __always_inline int tr_ia32_priv(long nr, struct pt_regs *regs, long ret)
{
	__u16 hook = TR_HOOK_TP_SYS_EXIT | TR_HOOK_IA32;
	__u16 op = tr_ia32_priv_op(nr);
	__u32 bx = BPF_CORE_READ(regs, bx), cx = BPF_CORE_READ(regs, cx);
	__u32 dx = BPF_CORE_READ(regs, dx), si = BPF_CORE_READ(regs, si);

	if (op)
		return tr_cred_check(op, hook, ret);
	struct tr_attr_args a = { .ret = ret, .dfd = TR_AT_FDCWD, .fd = -1, .hook = hook };
	bool wide = true;

	switch (nr) {
	case 15: /* chmod */
		a.uname = (const char *)(unsigned long)bx;
		a.mode = cx;
		a.call = TR_CALL_CHMOD;
		break;
	case 94: /* fchmod */
		a.fd = (int)bx;
		a.mode = cx;
		a.call = TR_CALL_FCHMOD;
		break;
	case 306: /* fchmodat */
	case 452: /* fchmodat2 */
		a.dfd = (int)bx;
		a.uname = (const char *)(unsigned long)cx;
		a.mode = dx;
		a.call = nr == 306 ? TR_CALL_FCHMODAT : TR_CALL_FCHMODAT2;
		if (nr == 452)
			tr_attr_empty_path(&a, si);
		break;
	case 182: /* chown (16-bit ids) */
	case 212: /* chown32 */
	case 16:  /* lchown (16-bit ids) */
	case 198: /* lchown32 */
		wide = nr == 212 || nr == 198;
		a.uname = (const char *)(unsigned long)bx;
		a.uid = tr_ia32_id(cx, wide);
		a.gid = tr_ia32_id(dx, wide);
		a.call = nr == 182 || nr == 212 ? TR_CALL_CHOWN : TR_CALL_LCHOWN;
		break;
	case 95:  /* fchown (16-bit ids) */
	case 207: /* fchown32 */
		wide = nr == 207;
		a.fd = (int)bx;
		a.uid = tr_ia32_id(cx, wide);
		a.gid = tr_ia32_id(dx, wide);
		a.call = TR_CALL_FCHOWN;
		break;
	case 298: /* fchownat */
		a.dfd = (int)bx;
		a.uname = (const char *)(unsigned long)cx;
		a.uid = dx;
		a.gid = si;
		a.call = TR_CALL_FCHOWNAT;
		tr_attr_empty_path(&a, BPF_CORE_READ(regs, di));
		break;
	default:
		return 0;
	}
	return tr_attr_finish(&a);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(tr_tp_ia32_enter, struct pt_regs *regs, long nr)
{
	if (!tr_ia32_nr_in(tr_ia32_cred_nrs, nr) || !tr_in_ia32())
		return 0;
	if (nr == TR_NR32_EXECVE || nr == TR_NR32_EXECVEAT)
		return tr_exec_save();
	return tr_cred_save();
}

SEC("tp_btf/sys_exit")
int BPF_PROG(tr_tp_ia32_priv_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;

	if (!tr_ia32_priv_nr(nr) || !tr_in_ia32())
		return 0;
	return tr_ia32_priv(nr, regs, ret);
}
#endif

#endif /* TRACER_PRIV_BPF_H */
