/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * file_open and connect through the security hooks, in three variants:
 * BPF-LSM (`lsm/file_open`, `lsm/socket_connect`: the only one that can
 * refuse the call), fentry and kprobe on `security_file_open` and
 * `security_socket_connect`. The loader enables exactly one variant.
 *
 * The hook sees the struct file (or the socket and the kernel's copy of
 * the address) before the syscall completes: it evaluates the policy,
 * kills (sigkill) or refuses (deny, LSM) right there, and remembers the
 * verdict of a selected call by thread. The result (fd or -errno, the
 * local address) exists only when the syscall returns, so each variant
 * also hooks the return of the syscall-level function, the cheapest
 * place that sees it:
 *  - lsm and fentry: fexit on do_sys_openat2 and __sys_connect. A
 *    trampoline costs about as much as the fentry itself, and fexit also
 *    sees the function's arguments, so no entry hook is needed: the open
 *    flags and mode come from `struct open_how` (the syscall's own values;
 *    the struct file has O_CLOEXEC stripped) and the name asked for from
 *    `filename`, for opens that fail before the security hook runs.
 *  - kprobe: kretprobe on the same functions, plus a kprobe at the entry
 *    of do_sys_openat2 for those arguments (a kretprobe cannot see them).
 * The syscall exit tracepoints would see the result too, but enabling
 * them moves every task onto the slow syscall-exit path for every
 * syscall; these fire only for opens and connects.
 *
 * open, openat, openat2 and creat all go through do_sys_openat2, also
 * when made through the 32-bit entry. The security hooks also fire for
 * opens and connects the kernel makes on its own account (an exec opening
 * the binary): those never reach the exit program, so the hooks act only
 * inside the matching syscalls of either entry, or for a request of the
 * program's io_uring (origin.bpf.h). io_uring opens with io_openat2, not
 * do_sys_openat2: its entry and exit are hooked too, and the result is
 * the request's. io_uring connects go through __sys_connect_file as the
 * syscall does, so its exit serves both.
 */
#ifndef TRACER_HOOKS_BPF_H
#define TRACER_HOOKS_BPF_H

#include "net.bpf.h"
#include "origin.bpf.h"

#define TR_EPERM 1
#define TR_EAGAIN 11
#define TR_EISCONN 106
#define TR_EALREADY 114

/*
 * True inside a stacking filesystem's open of its backing file. Overlayfs
 * (the root file system of most containers) opens the real file in a
 * layer from inside the open of the file the program named, under the
 * mounter's credentials (override_creds), and that open passes the
 * security hook too, with the layer's path. The policy must judge the
 * path the program used: rules with `not_path` selected every open on an
 * overlay because the second call's path matched none of their values.
 * Outside such kernel-internal overrides a task's credentials and its
 * real credentials are the same object.
 */
static __always_inline bool tr_backing_open(void)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return TR_RD(struct task_struct, task, cred) != TR_RD(struct task_struct, task, real_cred);
}

/* Policy on the file being opened; returns the action taken. */
static __always_inline __u8 tr_file_hook(struct file *file, __u16 hook)
{
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_FILE, &gen);

	if (!cfg)
		return TR_ACT_NONE;
	int origin = tr_open_origin();

	if (origin < 0)
		return TR_ACT_NONE;
	__u64 id = bpf_get_current_pid_tgid();
	struct tr_open_args *a = NULL;

	if (origin == TR_HOOK_IO_URING)
		a = bpf_map_lookup_elem(&tr_open_inflight, &id);
	if (a) {
		/* A request runs under the credentials of the personality it
		 * names, so the credential test cannot tell a stacking
		 * filesystem's backing open here; that open comes second
		 * within one io_openat2 (tr_io_open_enter reset `seen`). */
		if (a->seen)
			return TR_ACT_NONE;
		a->seen = 1;
	} else if (tr_backing_open()) {
		return TR_ACT_NONE;
	}
	hook |= origin;
	struct tr_file_scratch *s = bpf_map_lookup_elem(&tr_file_heap, &zero);

	if (!s)
		return TR_ACT_NONE;
	bool cut = false;
	/* O_CREAT and O_TRUNC are still in f_flags here; the kernel strips
	 * them only after the open succeeded. */
	bool is_write = tr_open_writes(TR_RD(struct file, file, f_flags));

	tr_walk_collect(&s->walk, s->ev.path, TR_RD(struct file, file, f_path.mnt),
			TR_RD(struct file, file, f_path.dentry));
	if (tr_path_unselected(gen, is_write))
		return TR_ACT_NONE;
	__u32 len = tr_walk_emit(&s->walk, s->ev.path, 0, TR_PATH_MAX, &cut);

	if (len > TR_PATH_MAX)
		len = TR_PATH_MAX;
	struct tr_policy_input *in = tr_policy_request(
		s->ev.path, len, TR_F_PATH, bpf_get_current_uid_gid() & 0xFFFFFFFF, is_write);
	struct tr_verdict v = {};

	tr_policy_binary(in, bpf_get_current_pid_tgid() >> 32);
	tr_policy_eval(TR_PK_FILE, gen, in, &v);
	if (v.action == TR_ACT_NONE || v.action == TR_ACT_IGNORE)
		return TR_ACT_NONE;
	/* The exit resolves the path again from the new fd (or reports the
	 * name asked for when the open failed): only for selected opens, and
	 * it spares every in-flight entry a 4 KiB path. */
	a = bpf_map_lookup_elem(&tr_open_inflight, &id);
	if (a) {
		a->hook = hook;
		a->verdict = v;
		a->selected = 1;
		if (origin == TR_HOOK_IO_URING)
			a->file = file;
	} else if (origin != TR_HOOK_IO_URING) {
		/* (An io_uring open without its entry record has no exit to
		 * report it: a record left here would be taken by the thread's
		 * next open syscall.) */
		struct tr_open_args n = { .hook = hook, .selected = 1, .verdict = v };

		bpf_map_update_elem(&tr_open_inflight, &id, &n, BPF_ANY);
	}
	return v.action;
}

/* Move this thread's in-flight open record (the entry's arguments, the
 * security hook's verdict) into `a` and free its slot, so that the
 * thread's next open starts clean; false, `a` untouched, when there is
 * none. */
static __always_inline bool tr_open_take(struct tr_open_args *a)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tr_open_args *pending = bpf_map_lookup_elem(&tr_open_inflight, &id);

	if (!pending)
		return false;
	*a = *pending;
	bpf_map_delete_elem(&tr_open_inflight, &id);
	return true;
}

SEC("lsm/file_open")
int BPF_PROG(tr_lsm_file_open, struct file *file, int ret)
{
	if (ret)
		return ret; /* another LSM refused already */
	return tr_file_hook(file, TR_HOOK_LSM_FILE_OPEN) == TR_ACT_DENY ? -TR_EPERM : 0;
}

SEC("fentry/security_file_open")
int BPF_PROG(tr_fentry_file_open, struct file *file)
{
	tr_file_hook(file, TR_HOOK_FENTRY_FILE_OPEN);
	return 0;
}

SEC("kprobe/security_file_open")
int BPF_KPROBE(tr_kprobe_file_open, struct file *file)
{
	tr_file_hook(file, TR_HOOK_KPROBE_FILE_OPEN);
	return 0;
}

/* lsm and fentry: the end of every open, with its arguments. */
SEC("fexit/do_sys_openat2")
int BPF_PROG(tr_fexit_openat2, int dfd, const char *filename, struct open_how *how, long ret)
{
	struct tr_open_args a = { .hook = TR_HOOK_FEXIT_OPENAT2 };

	if (tr_in_ia32())
		a.hook |= TR_HOOK_IA32;
	if (!tr_open_take(&a) && ret >= 0)
		return 0; /* opened, and the security hook selected nothing */
	/* Unselected failures are evaluated on the name asked for, as the
	 * tracepoint variant does: the hook never saw most of them. */
	a.upath = filename;
	a.open_flags = BPF_CORE_READ(how, flags) & ~TR_O_LARGEFILE;
	a.mode = BPF_CORE_READ(how, mode);
	return tr_open_finish(ret, &a);
}

/* kprobe: the arguments at the entry, the result at the return. */
static __always_inline int tr_kprobe_open_enter(const char *upath, __u32 flags, __u32 mode,
						__u16 hook)
{
	__u32 gen;

	if (!tr_policy_cfg_of(TR_PK_FILE, &gen))
		return 0; /* no file rules: nothing to capture */
	__u64 id = bpf_get_current_pid_tgid();
	struct tr_open_args a = { .upath = upath, .open_flags = flags, .mode = mode, .hook = hook };

	if (tr_in_ia32())
		a.hook |= TR_HOOK_IA32;
	bpf_map_update_elem(&tr_open_inflight, &id, &a, BPF_ANY);
	return 0;
}

/* Exit side of the kprobe variant, which keeps the arguments from the
 * entry: its security hook evaluated every open that reached the file,
 * so a success it did not select is done. */
static __always_inline int tr_kprobe_open_exit(long ret)
{
	struct tr_open_args a;

	if (!tr_open_take(&a))
		return 0;
	if (!a.selected && ret >= 0)
		return 0;
	return tr_open_finish(ret, &a);
}

SEC("kprobe/do_sys_openat2")
int BPF_KPROBE(tr_kprobe_openat2, int dfd, const char *filename, struct open_how *how)
{
	return tr_kprobe_open_enter(filename, BPF_CORE_READ(how, flags) & ~TR_O_LARGEFILE,
				    BPF_CORE_READ(how, mode), TR_HOOK_KRETPROBE_OPENAT2);
}

SEC("kretprobe/do_sys_openat2")
int BPF_KRETPROBE(tr_kret_openat2, long ret)
{
	return tr_kprobe_open_exit(ret);
}

/* A TCP socket a connect or a fast open can start a connection on. */
static __always_inline bool tr_tcp_closed(struct socket *sock, struct sock *sk)
{
	return BPF_CORE_READ(sock, state) == TR_SS_UNCONNECTED &&
	       BPF_CORE_READ(sk, __sk_common.skc_state) == TR_TCP_CLOSE;
}

/*
 * A connect on a TCP socket that is already connecting or connected, to
 * the peer it already has: the kernel answers EALREADY or EISCONN and
 * starts nothing. Programs poll a non-blocking connect that way, and
 * io_uring retries its own once the socket is writable; the first call
 * was judged and reported. Any other address is judged: the security
 * hook runs before the socket is locked, so a second thread's connect
 * can find the socket connecting and still start a connection of its own
 * once the first one has failed. A skipped call can do that too, to the
 * same peer: tr_retry_end judges it at its end.
 */
static __always_inline bool tr_tcp_retry(struct socket *sock, const struct sockaddr *address)
{
	struct sock *sk = BPF_CORE_READ(sock, sk);

	if (!sk || !tr_is_tcp(sk) || tr_tcp_closed(sock, sk))
		return false;
	struct sockaddr_in6 in = {}; /* the sockaddr_in fields sit at the same offsets */

	bpf_probe_read_kernel(&in, sizeof(in), address);
	if (in.sin6_port != BPF_CORE_READ(sk, __sk_common.skc_dport))
		return false;
	if (in.sin6_family == TR_AF_INET)
		return ((struct sockaddr_in *)&in)->sin_addr.s_addr ==
		       BPF_CORE_READ(sk, __sk_common.skc_daddr);
	if (in.sin6_family != TR_AF_INET6)
		return false;
	__u64 asked[2], peer[2] = {};

	__builtin_memcpy(asked, &in.sin6_addr, sizeof(asked));
	BPF_CORE_READ_INTO(&peer, sk, __sk_common.skc_v6_daddr);
	return asked[0] == peer[0] && asked[1] == peer[1];
}

/*
 * A call on a connecting or connected TCP socket that may go unreported
 * (a connect retry; a fast open whose peer this socket already sent to),
 * by thread, until the call returns: the peer asked for (copied: a send's
 * kernel copy of the address is gone by then), the socket, the hook, and
 * the socket's send sequence at the hook. LRU: a thread killed in the
 * call leaves an entry that ages out.
 */
struct tr_conn_retry {
	struct socket *sock;
	struct tr_peer peer;
	__u32 write_seq;
	__u16 hook;
	__u8 via;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tr_conn_retry);
} tr_conn_retry SEC(".maps");

static __always_inline __u32 tr_write_seq(struct socket *sock)
{
	struct tcp_sock *tp = (struct tcp_sock *)BPF_CORE_READ(sock, sk);

	return BPF_CORE_READ(tp, write_seq);
}

/* Remember a call for tr_retry_end; `addr` is the kernel's copy. */
static __always_inline void tr_retry_note(struct socket *sock, const void *addr, __u16 hook,
					  __u8 via)
{
	__u32 zero = 0;
	struct tr_conn_inflight *c = bpf_map_lookup_elem(&tr_conn_heap, &zero);

	if (!c || !tr_peer_from_sockaddr(c, addr, false))
		return;
	struct tr_conn_retry r = {
		.sock = sock,
		.write_seq = tr_write_seq(sock),
		.hook = hook,
		.via = via,
	};
	__u64 id = bpf_get_current_pid_tgid();

	tr_peer_get(&r.peer, c);
	bpf_map_update_elem(&tr_conn_retry, &id, &r, BPF_ANY);
}

static __always_inline __u8 tr_connect_hook(struct socket *sock, struct sockaddr *address,
					    __u16 hook)
{
	int origin = tr_connect_origin();

	if (origin < 0)
		return TR_ACT_NONE;
	if (tr_tcp_retry(sock, address)) {
		tr_retry_note(sock, address, hook | origin, TR_VIA_CONNECT);
		return TR_ACT_NONE;
	}
	return tr_connect_eval(address, false, -1, sock, hook | origin);
}

/*
 * The end of a call noted by tr_retry_note. Its hook ran before the call
 * locked the socket: another thread may have disconnected it since
 * (connect with AF_UNSPEC), and the call then started a connection of
 * its own. A disconnect moves the send sequence on, so a moved sequence
 * and an answer other than "already connecting" or "connected" is such a
 * connection: it is judged here, on the peer noted, and reported with its
 * result. A sigkill still lands before the program sees the result; a
 * deny comes too late to refuse, but the peer was allowed for the
 * connection the socket had at the hook. A call the hook judged and a
 * rule selected is reported already (tr_conn_inflight). A fast open that
 * only waited for another call's connection and sent on it moves the
 * sequence too, and is reported once more: a report too many, never one
 * too few.
 */
static __always_inline void tr_retry_end(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tr_conn_retry *pending = bpf_map_lookup_elem(&tr_conn_retry, &id);

	if (!pending)
		return;
	struct tr_conn_retry r = *pending;

	bpf_map_delete_elem(&tr_conn_retry, &id);
	if (ret == -TR_EALREADY || ret == -TR_EISCONN || tr_write_seq(r.sock) == r.write_seq ||
	    bpf_map_lookup_elem(&tr_conn_inflight, &id))
		return;
	tr_peer_eval(&r.peer, r.sock, r.hook, r.via);
}

SEC("lsm/socket_connect")
int BPF_PROG(tr_lsm_connect, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	if (ret)
		return ret;
	return tr_connect_hook(sock, address, TR_HOOK_LSM_CONNECT) == TR_ACT_DENY ? -TR_EPERM : 0;
}

SEC("fentry/security_socket_connect")
int BPF_PROG(tr_fentry_connect, struct socket *sock, struct sockaddr *address, int addrlen)
{
	tr_connect_hook(sock, address, TR_HOOK_FENTRY_CONNECT);
	return 0;
}

SEC("kprobe/security_socket_connect")
int BPF_KPROBE(tr_kprobe_connect, struct socket *sock, struct sockaddr *address, int addrlen)
{
	tr_connect_hook(sock, address, TR_HOOK_KPROBE_CONNECT);
	return 0;
}

/* The return value through the helper: the function's arguments are
 * not the same on every kernel. */
SEC("fexit/__sys_connect_file")
int tr_fexit_connect(__u64 *ctx)
{
	__u64 ret = 0;

	bpf_get_func_ret(ctx, &ret);
	tr_retry_end((int)ret);
	return tr_connect_finish((int)ret);
}

SEC("kretprobe/__sys_connect_file")
int BPF_KRETPROBE(tr_kret_connect, int ret)
{
	tr_retry_end(ret);
	return tr_connect_finish(ret);
}

/*
 * A send to an address without connect(): a datagram on a socket (to the
 * address given), or TCP Fast Open (MSG_FASTOPEN: the SYN carries data,
 * no connect call). `msg->msg_name` is the kernel's copy of the address.
 */
static __always_inline __u8 tr_sendmsg_hook(struct socket *sock, struct msghdr *msg, __u16 hook)
{
	long nr = tr_syscall_nr();

	if (nr != TR_NR_SENDTO && nr != TR_NR_SENDMSG)
		return TR_ACT_NONE;
	void *name = BPF_CORE_READ(msg, msg_name);
	struct sock *sk = BPF_CORE_READ(sock, sk);

	if (!name || !sk)
		return TR_ACT_NONE;
	if (BPF_CORE_READ(sk, sk_type) == TR_SOCK_DGRAM)
		return tr_send_eval(name, false, sock, hook,
				    nr == TR_NR_SENDTO ? TR_VIA_SENDTO : TR_VIA_SENDMSG, false);
	if (!tr_is_tcp(sk) || !(BPF_CORE_READ(msg, msg_flags) & TR_MSG_FASTOPEN))
		return TR_ACT_NONE; /* a connected stream ignores the address */
	/* On a closed socket a fast open is a new connection: judged every
	 * time. On a connecting or connected one it fails (EALREADY, EISCONN)
	 * and is judged once per peer, unless a disconnect lets it through. */
	if (tr_tcp_closed(sock, sk))
		return tr_send_eval(name, false, sock, hook, TR_VIA_FASTOPEN, true);
	tr_retry_note(sock, name, hook, TR_VIA_FASTOPEN);
	return tr_send_eval(name, false, sock, hook, TR_VIA_FASTOPEN, false);
}

SEC("lsm/socket_sendmsg")
int BPF_PROG(tr_lsm_sendmsg, struct socket *sock, struct msghdr *msg, int size, int ret)
{
	if (ret)
		return ret;
	return tr_sendmsg_hook(sock, msg, TR_HOOK_LSM_SENDMSG) == TR_ACT_DENY ? -TR_EPERM : 0;
}

SEC("fentry/security_socket_sendmsg")
int BPF_PROG(tr_fentry_sendmsg, struct socket *sock, struct msghdr *msg, int size)
{
	tr_sendmsg_hook(sock, msg, TR_HOOK_FENTRY_SENDMSG);
	return 0;
}

SEC("kprobe/security_socket_sendmsg")
int BPF_KPROBE(tr_kprobe_sendmsg, struct socket *sock, struct msghdr *msg, int size)
{
	tr_sendmsg_hook(sock, msg, TR_HOOK_KPROBE_SENDMSG);
	return 0;
}

/* The result of a selected send: 0 when it went out, else -errno. */
static __always_inline int tr_send_finish(long ret)
{
	tr_retry_end(ret);
	return tr_connect_finish(ret < 0 ? ret : 0);
}

SEC("fexit/__sys_sendto")
int BPF_PROG(tr_fexit_sendto, int fd, void *buff, size_t len, unsigned int flags,
	     struct sockaddr *addr, int addr_len, int ret)
{
	return tr_send_finish(ret);
}

SEC("fexit/__sys_sendmsg")
int BPF_PROG(tr_fexit_sendmsg, int fd, struct user_msghdr *msg, unsigned int flags,
	     bool forbid_cmsg_compat, long ret)
{
	return tr_send_finish(ret);
}

SEC("kretprobe/__sys_sendto")
int BPF_KRETPROBE(tr_kret_sendto, int ret)
{
	return tr_send_finish(ret);
}

SEC("kretprobe/__sys_sendmsg")
int BPF_KRETPROBE(tr_kret_sendmsg, long ret)
{
	return tr_send_finish(ret);
}

/*
 * rename, link, symlink through the path security hooks: the kernel has
 * looked both names up, so the new name is resolved from its parent's
 * struct path and its dentry (mount points crossed, `..` and symlinks of
 * the directories resolved), as is the old one. The record is emitted
 * here, before the call completes: `result` is 0, or -EPERM when the
 * LSM variant denies it (then no new name is made).
 */
static __always_inline __u8 tr_new_name_hook(const struct path *dir, struct dentry *dentry,
					     const struct path *old_dir, struct dentry *old_dentry,
					     const char *target, __u16 op, __u16 hook)
{
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_FILE, &gen);
	struct tr_file_scratch *s = bpf_map_lookup_elem(&tr_file_heap, &zero);

	if (!cfg || !s || tr_backing_open())
		return TR_ACT_NONE;
	struct tr_file_open *ev = &s->ev;
	bool cut = false;
	__u32 len = tr_write_path(ev->path, 0, TR_PATH_MAX, &s->walk, BPF_CORE_READ(dir, mnt),
				  dentry, &cut);

	if (len > TR_PATH_MAX)
		len = TR_PATH_MAX;
	struct tr_policy_input *in = tr_policy_request(
		ev->path, len, TR_F_PATH, bpf_get_current_uid_gid() & 0xFFFFFFFF, true);

	tr_policy_binary(in, bpf_get_current_pid_tgid() >> 32);
	tr_policy_eval(TR_PK_FILE, gen, in, &ev->verdict);
	if (ev->verdict.action == TR_ACT_NONE || ev->verdict.action == TR_ACT_IGNORE)
		return TR_ACT_NONE;
	__u32 src = 0;

	if (target) {
		long n = bpf_probe_read_kernel_str(&ev->path[tr_bound(len, 2 * TR_PATH_MAX - 1)],
						   TR_PATH_MAX / 2, target);

		src = n > 0 ? n - 1 : 0;
	} else {
		struct vfsmount *mnt = old_dir ? BPF_CORE_READ(old_dir, mnt) : BPF_CORE_READ(dir, mnt);

		src = tr_write_path(ev->path, len, TR_PATH_MAX, &s->walk, mnt, old_dentry, &cut);
		if (src > TR_PATH_MAX)
			src = TR_PATH_MAX;
	}
	ev->hdr.kind = TR_KIND_FILE_OPEN;
	ev->ret = ev->verdict.action == TR_ACT_DENY ? -TR_EPERM : 0;
	ev->open_flags = 0;
	ev->mode = 0;
	ev->hook = hook;
	ev->op = op;
	ev->flags = cut ? TR_FILE_TRUNC_PATH : 0;
	ev->path_len = len;
	ev->source_len = src;
	tr_fill_task(&ev->task, bpf_get_current_task_btf());
	tr_file_emit(ev, len + src);
	return ev->verdict.action;
}

#define TR_NEW_NAME_HOOKS(kind, HOOK)                                                        \
	static __always_inline __u8 tr_##kind##_rename(const struct path *old_dir,           \
						       struct dentry *old_dentry,            \
						       const struct path *new_dir,           \
						       struct dentry *new_dentry)            \
	{                                                                                    \
		return tr_new_name_hook(new_dir, new_dentry, old_dir, old_dentry, NULL,      \
					TR_FILE_OP_RENAME, TR_HOOK_##HOOK##_PATH_RENAME);    \
	}                                                                                    \
	static __always_inline __u8 tr_##kind##_link(struct dentry *old_dentry,              \
						     const struct path *new_dir,             \
						     struct dentry *new_dentry)              \
	{                                                                                    \
		return tr_new_name_hook(new_dir, new_dentry, NULL, old_dentry, NULL,         \
					TR_FILE_OP_LINK, TR_HOOK_##HOOK##_PATH_LINK);        \
	}                                                                                    \
	static __always_inline __u8 tr_##kind##_symlink(const struct path *dir,              \
							struct dentry *dentry,               \
							const char *old_name)                \
	{                                                                                    \
		return tr_new_name_hook(dir, dentry, NULL, NULL, old_name,                   \
					TR_FILE_OP_SYMLINK, TR_HOOK_##HOOK##_PATH_SYMLINK);  \
	}

TR_NEW_NAME_HOOKS(lsm, LSM)
TR_NEW_NAME_HOOKS(fentry, FENTRY)
TR_NEW_NAME_HOOKS(kprobe, KPROBE)

SEC("lsm/path_rename")
int BPF_PROG(tr_lsm_path_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry, unsigned int flags, int ret)
{
	if (ret)
		return ret;
	return tr_lsm_rename(old_dir, old_dentry, new_dir, new_dentry) == TR_ACT_DENY ? -TR_EPERM
										       : 0;
}

SEC("lsm/path_link")
int BPF_PROG(tr_lsm_path_link, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, int ret)
{
	if (ret)
		return ret;
	return tr_lsm_link(old_dentry, new_dir, new_dentry) == TR_ACT_DENY ? -TR_EPERM : 0;
}

SEC("lsm/path_symlink")
int BPF_PROG(tr_lsm_path_symlink, const struct path *dir, struct dentry *dentry,
	     const char *old_name, int ret)
{
	if (ret)
		return ret;
	return tr_lsm_symlink(dir, dentry, old_name) == TR_ACT_DENY ? -TR_EPERM : 0;
}

SEC("fentry/security_path_rename")
int BPF_PROG(tr_fentry_path_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry)
{
	tr_fentry_rename(old_dir, old_dentry, new_dir, new_dentry);
	return 0;
}

SEC("fentry/security_path_link")
int BPF_PROG(tr_fentry_path_link, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry)
{
	tr_fentry_link(old_dentry, new_dir, new_dentry);
	return 0;
}

SEC("fentry/security_path_symlink")
int BPF_PROG(tr_fentry_path_symlink, const struct path *dir, struct dentry *dentry,
	     const char *old_name)
{
	tr_fentry_symlink(dir, dentry, old_name);
	return 0;
}

SEC("kprobe/security_path_rename")
int BPF_KPROBE(tr_kprobe_path_rename, const struct path *old_dir, struct dentry *old_dentry,
	       const struct path *new_dir, struct dentry *new_dentry)
{
	tr_kprobe_rename(old_dir, old_dentry, new_dir, new_dentry);
	return 0;
}

SEC("kprobe/security_path_link")
int BPF_KPROBE(tr_kprobe_path_link, struct dentry *old_dentry, const struct path *new_dir,
	       struct dentry *new_dentry)
{
	tr_kprobe_link(old_dentry, new_dir, new_dentry);
	return 0;
}

SEC("kprobe/security_path_symlink")
int BPF_KPROBE(tr_kprobe_path_symlink, const struct path *dir, struct dentry *dentry,
	       const char *old_name)
{
	tr_kprobe_symlink(dir, dentry, old_name);
	return 0;
}

/*
 * io_uring's open: what the program asked for, kept at the entry (the
 * kernel's copy of the name is freed before the function returns; the
 * program's own buffer is not), then the request's result at the exit.
 * The function runs in io_uring_enter, or again in an io-wq worker when
 * the non-blocking first try returned -EAGAIN.
 */
static __always_inline int tr_io_open_enter(struct io_kiocb *req, __u16 hook)
{
	__u32 gen;

	if (!tr_policy_cfg_of(TR_PK_FILE, &gen))
		return 0;
	struct io_open *o = (void *)req + bpf_core_field_offset(struct io_kiocb, cmd);
	__u64 id = bpf_get_current_pid_tgid();
	struct tr_open_args a = {
		.upath = BPF_CORE_READ(o, filename, uptr),
		.open_flags = BPF_CORE_READ(o, how.flags) & ~TR_O_LARGEFILE,
		.mode = BPF_CORE_READ(o, how.mode),
		.hook = hook | TR_HOOK_IO_URING,
		.req = req,
	};

	bpf_map_update_elem(&tr_open_inflight, &id, &a, BPF_ANY);
	return 0;
}

static __always_inline int tr_io_open_exit(long ret)
{
	struct tr_open_args a;

	if (!tr_open_take(&a))
		return 0;
	/* A local: inside BPF_CORE_READ, a.req would relocate our own struct. */
	struct io_kiocb *req = a.req;

	if (ret == -TR_EAGAIN || !req)
		return 0; /* retried in a worker, which evaluates it again */
	long res = BPF_CORE_READ(req, cqe.res);

	if (!a.selected && res >= 0)
		return 0;
	return tr_open_finish(res, &a);
}

SEC("fentry/io_openat2")
int BPF_PROG(tr_fentry_io_openat2, struct io_kiocb *req)
{
	return tr_io_open_enter(req, TR_HOOK_FEXIT_IO_OPENAT2);
}

SEC("fexit/io_openat2")
int BPF_PROG(tr_fexit_io_openat2, struct io_kiocb *req, unsigned int issue_flags, int ret)
{
	return tr_io_open_exit(ret);
}

SEC("kprobe/io_openat2")
int BPF_KPROBE(tr_kprobe_io_openat2, struct io_kiocb *req)
{
	return tr_io_open_enter(req, TR_HOOK_KRETPROBE_IO_OPENAT2);
}

SEC("kretprobe/io_openat2")
int BPF_KRETPROBE(tr_kret_io_openat2, int ret)
{
	return tr_io_open_exit(ret);
}

#endif /* TRACER_HOOKS_BPF_H */
