/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * connect capture: the policy evaluation and the end-of-syscall record
 * shared by every variant, and the syscall-tracepoint programs. The
 * policy runs before the connection is made, so a sigkill lands before
 * it carries any data; the exit side adds the result and the local
 * address the kernel chose.
 */
#ifndef TRACER_NET_BPF_H
#define TRACER_NET_BPF_H

#include "file.bpf.h"

#define TR_AF_UNIX 1
#define TR_AF_INET 2
#define TR_AF_INET6 10
#define TR_SOCK_STREAM 1
#define TR_SOCK_DGRAM 2
#define TR_IPPROTO_TCP 6
#define TR_TCP_SYN_SENT 2
#define TR_TCP_CLOSE 7
#define TR_SS_UNCONNECTED 1
#define TR_MSG_FASTOPEN 0x20000000
#define TR_S_IFMT 00170000
#define TR_S_IFSOCK 0140000

struct tr_conn_inflight {
	struct tr_verdict verdict;
	struct socket *sock; /* held by the syscall's fd reference until it returns */
	__u16 family;
	__u16 dport;
	__u16 path_len;
	__u16 hook;
	__u8 via;   /* enum tr_conn_via */
	__u8 flags; /* enum tr_conn_flags */
	__u8 pad[6];
	__u8 daddr[16];
	char unix_path[108];
};

/* Selected connects in flight, by thread (only those: the exit of an
 * unselected connect is one failed lookup). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tr_conn_inflight);
} tr_conn_inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_conn_inflight);
} tr_conn_heap SEC(".maps");

/* A peer as the policy sees it (IPv4 as ::ffff:a.b.c.d), kept past the
 * call that named it. */
struct tr_peer {
	__u16 family;
	__u16 dport;
	__u32 pad;
	__u8 daddr[16];
};

/*
 * Peers a socket has sent to without connect() (a datagram to an
 * address, TCP Fast Open), and what the policy said: the first send to a
 * peer is evaluated and reported, the next ones are not, so a DNS client
 * or a server answering many clients does not flood the ring. Keyed by
 * the socket's inode number (never reused while the socket lives, unlike
 * its address) and the peer; `word` is the policy generation word, so a
 * new policy set evaluates every peer again.
 */
struct tr_sent_key {
	__u64 ino;
	struct tr_peer peer;
};

struct tr_sent_val {
	__u32 word;
	__u8 action;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tr_sent_key);
	__type(value, struct tr_sent_val);
} tr_sent SEC(".maps");

static __always_inline __u16 tr_ntohs(__u16 v)
{
	return (v >> 8) | (v << 8);
}

/* Reads a sockaddr from user memory (the syscall's argument) or kernel
 * memory (the security hooks' copy); `user` is a constant per caller. */
static __always_inline long tr_read_addr(void *dst, __u32 size, const void *src, bool user)
{
	return user ? bpf_probe_read_user(dst, size, src) : bpf_probe_read_kernel(dst, size, src);
}

static __always_inline void tr_conn_reset(struct tr_conn_inflight *c, __u16 family)
{
	__builtin_memset(c->daddr, 0, sizeof(c->daddr));
	c->path_len = 0;
	c->dport = 0;
	c->family = family;
	c->flags = 0;
}

static __always_inline void tr_peer_get(struct tr_peer *p, const struct tr_conn_inflight *c)
{
	p->family = c->family;
	p->dport = c->dport;
	__builtin_memcpy(p->daddr, c->daddr, sizeof(p->daddr));
}

static __always_inline void tr_peer_set(struct tr_conn_inflight *c, const struct tr_peer *p)
{
	tr_conn_reset(c, p->family);
	c->dport = p->dport;
	__builtin_memcpy(c->daddr, p->daddr, sizeof(c->daddr));
}

/* c's peer from a sockaddr; false for a family that is not reported. */
static __always_inline bool tr_peer_from_sockaddr(struct tr_conn_inflight *c, const void *addr,
						  bool user)
{
	__u16 family = 0;

	tr_read_addr(&family, sizeof(family), addr, user);
	tr_conn_reset(c, family);
	if (family == TR_AF_INET) {
		struct sockaddr_in sin = {};

		tr_read_addr(&sin, sizeof(sin), addr, user);
		c->dport = tr_ntohs(sin.sin_port);
		/* ::ffff:a.b.c.d, the form the CIDR trie holds IPv4 in */
		c->daddr[10] = 0xff;
		c->daddr[11] = 0xff;
		__builtin_memcpy(&c->daddr[12], &sin.sin_addr.s_addr, 4);
	} else if (family == TR_AF_INET6) {
		struct sockaddr_in6 sin6 = {};

		tr_read_addr(&sin6, sizeof(sin6), addr, user);
		c->dport = tr_ntohs(sin6.sin6_port);
		__builtin_memcpy(c->daddr, &sin6.sin6_addr, 16);
	} else if (family == TR_AF_UNIX) {
		const void *path = addr + offsetof(struct sockaddr_un, sun_path);
		long n = user ? bpf_probe_read_user_str(c->unix_path, sizeof(c->unix_path), path)
			      : bpf_probe_read_kernel_str(c->unix_path, sizeof(c->unix_path), path);

		c->path_len = n > 1 ? n - 1 : 0;
	} else {
		return false;
	}
	if (user)
		c->flags |= TR_CONN_USER_MEMORY;
	return true;
}

/* c's peer from the socket's own fields: what the kernel connected to.
 * IPv4 and IPv6 only. */
static __always_inline bool tr_peer_from_sock(struct tr_conn_inflight *c, const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	tr_conn_reset(c, family);
	c->dport = tr_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == TR_AF_INET) {
		__u32 v4 = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		c->daddr[10] = 0xff;
		c->daddr[11] = 0xff;
		__builtin_memcpy(&c->daddr[12], &v4, 4);
		return true;
	}
	if (family == TR_AF_INET6) {
		BPF_CORE_READ_INTO(&c->daddr, sk, __sk_common.skc_v6_daddr);
		return true;
	}
	return false;
}

/* The path of the socket a unix socket is connected to, from the peer's
 * inode (symlinks and relative names resolved); an abstract or unbound
 * peer gives an empty path. */
static __always_inline bool tr_peer_from_unix(struct tr_conn_inflight *c, struct sock *sk)
{
	__u32 zero = 0;
	struct tr_file_scratch *s = bpf_map_lookup_elem(&tr_file_heap, &zero);
	struct unix_sock *peer = (struct unix_sock *)BPF_CORE_READ((struct unix_sock *)sk, peer);

	tr_conn_reset(c, TR_AF_UNIX);
	if (!s || !peer)
		return false;
	struct dentry *dentry = BPF_CORE_READ(peer, path.dentry);

	if (dentry) {
		bool cut = false;
		__u32 len = tr_write_path(s->ev.path, 0, TR_PATH_MAX, &s->walk,
					  BPF_CORE_READ(peer, path.mnt), dentry, &cut);

		len = len < sizeof(c->unix_path) - 1 ? len : sizeof(c->unix_path) - 1;
		bpf_probe_read_kernel(c->unix_path, tr_bound(len, 127), s->ev.path);
		c->unix_path[len & 127] = 0;
		c->path_len = len;
	}
	return true;
}

/* The socket behind fd, or NULL when fd is not a socket. */
static __always_inline struct socket *tr_fd_socket(long fd)
{
	struct file *f = tr_fd_file(bpf_get_current_task_btf(), fd);

	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & TR_S_IFMT) != TR_S_IFSOCK)
		return NULL;
	return BPF_CORE_READ(f, private_data);
}

/*
 * Evaluate the policy on the peer in `c` (hook, via and flags filled).
 * When a rule selects it, remember it for the end of the syscall
 * (tr_connect_finish) and return the action; a sigkill is sent here.
 */
static __always_inline __u8 tr_connect_decide(__u32 gen, struct tr_conn_inflight *c,
					      struct socket *sock)
{
	struct tr_policy_input *in =
		tr_policy_request(NULL, 0, 0, bpf_get_current_uid_gid() & 0xFFFFFFFF, false);

	if (in && c->family == TR_AF_UNIX) {
		in->str = c->unix_path;
		in->str_len = c->path_len;
		in->str_field = TR_F_PATH;
	} else if (in) {
		in->daddr = c->daddr;
		in->dport = c->dport;
	}
	tr_policy_binary(in, bpf_get_current_pid_tgid() >> 32);
	tr_policy_eval(TR_PK_CONNECT, gen, in, &c->verdict);
	if (c->verdict.action == TR_ACT_NONE || c->verdict.action == TR_ACT_IGNORE)
		return TR_ACT_NONE;
	c->sock = sock;
	__u64 id = bpf_get_current_pid_tgid();

	bpf_map_update_elem(&tr_conn_inflight, &id, c, BPF_ANY);
	return c->verdict.action;
}

/*
 * A connect's peer from a sockaddr, evaluated before the connection is
 * made (the security hooks: `addr` is the kernel's copy), so that a
 * sigkill lands before any data. `sock` is NULL when only the fd is known.
 */
static __always_inline __u8 tr_connect_eval(const void *addr, bool user, long fd,
					    struct socket *sock, __u16 hook)
{
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_CONNECT, &gen);
	struct tr_conn_inflight *c = bpf_map_lookup_elem(&tr_conn_heap, &zero);

	if (!cfg || !c || !tr_peer_from_sockaddr(c, addr, user))
		return TR_ACT_NONE;
	c->hook = hook;
	c->via = TR_VIA_CONNECT;
	return tr_connect_decide(gen, c, sock ? sock : tr_fd_socket(fd));
}

/* The end of a selected connect: its result and the local address the
 * kernel chose, read from the socket. A global function: its record is
 * on its own stack, not on the stack of the programs that also evaluate
 * the policy (tr_policy_decide's frame comes on top of theirs), and the
 * verifier checks it once per program. */
__noinline int tr_connect_report(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tr_conn_inflight *c = bpf_map_lookup_elem(&tr_conn_inflight, &id);

	if (!c)
		return 0;
	struct tr_connect ev = {};
	struct task_struct *task = bpf_get_current_task_btf();

	ev.hdr.kind = TR_KIND_CONNECT;
	ev.hdr.size = sizeof(ev);
	ev.verdict = c->verdict;
	ev.ret = ret;
	ev.family = c->family;
	ev.dport = c->dport;
	ev.hook = c->hook;
	ev.via = c->via;
	ev.flags = c->flags;
	ev.path_len = c->path_len;
	__builtin_memcpy(ev.unix_path, c->unix_path, sizeof(ev.unix_path));
	if (c->family == TR_AF_INET)
		__builtin_memcpy(ev.daddr, &c->daddr[12], 4);
	else
		__builtin_memcpy(ev.daddr, c->daddr, 16);
	struct socket *sock = c->sock;
	__u16 family = c->family;

	bpf_map_delete_elem(&tr_conn_inflight, &id);

	struct sock *sk = sock ? BPF_CORE_READ(sock, sk) : NULL;

	if (sk) {
		ev.protocol = BPF_CORE_READ(sk, sk_protocol);
		ev.sock_type = BPF_CORE_READ(sk, sk_type);
		ev.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
		if (family == TR_AF_INET) {
			__u32 v4 = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);

			__builtin_memcpy(ev.saddr, &v4, 4);
		} else if (family == TR_AF_INET6)
			BPF_CORE_READ_INTO(&ev.saddr, sk, __sk_common.skc_v6_rcv_saddr);
	}
	tr_fill_task(&ev.task, task);
	tr_emit(TR_KIND_CONNECT, &ev, sizeof(ev));
	return 0;
}

/* fentry and fexit programs must return 0, which the verifier cannot see
 * in a global function's result. */
static __always_inline int tr_connect_finish(long ret)
{
	tr_connect_report(ret);
	return 0;
}

static __always_inline bool tr_is_tcp(struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	return (family == TR_AF_INET || family == TR_AF_INET6) &&
	       BPF_CORE_READ(sk, sk_protocol) == TR_IPPROTO_TCP;
}

/*
 * A send to an address without connect() (`via`: sendto, sendmsg,
 * fastopen): evaluated and reported once per socket and peer (tr_sent),
 * or every time when `fresh` (a Fast Open that can start a connection,
 * as a connect() would) or when the verdict was a kill; the verdict is
 * remembered either way, for the sends that follow. `addr` as in
 * tr_connect_eval. Returns the action, also for a repeat of a peer a rule
 * denies.
 */
static __always_inline __u8 tr_send_eval(const void *addr, bool user, struct socket *sock,
					 __u16 hook, __u8 via, bool fresh)
{
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_CONNECT, &gen);
	struct tr_conn_inflight *c = bpf_map_lookup_elem(&tr_conn_heap, &zero);
	__u32 *word = bpf_map_lookup_elem(&tr_policy_gen, &zero);

	if (!cfg || !c || !word || !tr_peer_from_sockaddr(c, addr, user) ||
	    c->family == TR_AF_UNIX)
		return TR_ACT_NONE;
	struct tr_sent_key key = { .ino = BPF_CORE_READ(sock, file, f_inode, i_ino) };

	tr_peer_get(&key.peer, c);
	struct tr_sent_val *seen = fresh ? NULL : bpf_map_lookup_elem(&tr_sent, &key);

	/* A kill is never taken as done: the next sender on the socket may
	 * be another process (a fork's child, an fd passed on), which must
	 * die and be reported too. Each dies at its first send, so this
	 * costs one decision per process, not per datagram. */
	if (seen && seen->word == *word && seen->action != TR_ACT_SIGKILL)
		return seen->action == TR_ACT_DENY ? TR_ACT_DENY : TR_ACT_NONE;
	c->hook = hook;
	c->via = via;
	struct tr_sent_val v = { .word = *word, .action = tr_connect_decide(gen, c, sock) };

	bpf_map_update_elem(&tr_sent, &key, &v, BPF_ANY);
	return v.action;
}

/* The policy on a peer remembered earlier (a retry's, tr_retry_end), as
 * tr_connect_decide. */
static __always_inline __u8 tr_peer_eval(const struct tr_peer *p, struct socket *sock, __u16 hook,
					 __u8 via)
{
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_CONNECT, &gen);
	struct tr_conn_inflight *c = bpf_map_lookup_elem(&tr_conn_heap, &zero);

	if (!cfg || !c)
		return TR_ACT_NONE;
	tr_peer_set(c, p);
	c->hook = hook;
	c->via = via;
	return tr_connect_decide(gen, c, sock);
}

/* The syscall-tracepoint variant. */

/* A TCP connect, or a fast open, when the kernel moves the socket to
 * SYN_SENT: the address is the one it copied and will send the SYN to,
 * and the SYN is not out yet. */
static __always_inline int tr_syn_sent(const struct sock *sk, int newstate)
{
	if (newstate != TR_TCP_SYN_SENT)
		return 0;
	long nr = tr_syscall_nr();
	__u8 via;

	if (nr == TR_NR_CONNECT)
		via = TR_VIA_CONNECT;
	else if (nr == TR_NR_SENDTO || nr == TR_NR_SENDMSG)
		via = TR_VIA_FASTOPEN;
	else
		return 0; /* not the task's own connect (io_uring, the kernel's) */
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_CONNECT, &gen);
	struct tr_conn_inflight *c = bpf_map_lookup_elem(&tr_conn_heap, &zero);

	if (!cfg || !c || !tr_peer_from_sock(c, sk))
		return 0;
	c->hook = TR_HOOK_TP_SYN_SENT;
	c->via = via;
	tr_connect_decide(gen, c, BPF_CORE_READ(sk, sk_socket));
	return 0;
}

/* tp_btf, or raw_tp where the process hooks had to fall back to it. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tr_tcp_syn_sent, const struct sock *sk, const int oldstate, const int newstate)
{
	return tr_syn_sent(sk, newstate);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(tr_tcp_syn_sent_raw, const struct sock *sk, const int oldstate, const int newstate)
{
	return tr_syn_sent(sk, newstate);
}

/*
 * The end of connect(). TCP was decided at SYN_SENT. Other sockets are
 * judged here, before the process sees the result, on what the kernel
 * connected them to: the socket's peer address (UDP), the peer socket's
 * path (unix). A connect that failed left no peer in the socket: its
 * address is then read back from the process's memory, and flagged so.
 */
SEC("tp/syscalls/sys_exit_connect")
int tr_connect_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (bpf_map_lookup_elem(&tr_conn_inflight, &id))
		return tr_connect_finish(ctx->ret);
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_CONNECT, &gen);
	struct tr_conn_inflight *c = bpf_map_lookup_elem(&tr_conn_heap, &zero);

	if (!cfg || !c)
		return 0;
	struct pt_regs *regs = tr_user_regs();
	struct socket *sock = tr_fd_socket(PT_REGS_PARM1_CORE_SYSCALL(regs));
	struct sock *sk = sock ? BPF_CORE_READ(sock, sk) : NULL;

	if (!sk || tr_is_tcp(sk))
		return 0;
	bool known = false;

	if (ctx->ret == 0) {
		if (BPF_CORE_READ(sk, __sk_common.skc_family) == TR_AF_UNIX)
			known = tr_peer_from_unix(c, sk);
		else
			known = tr_peer_from_sock(c, sk);
	}
	if (!known &&
	    !tr_peer_from_sockaddr(c, (const void *)PT_REGS_PARM2_CORE_SYSCALL(regs), true))
		return 0;
	c->hook = TR_HOOK_TP_CONNECT;
	c->via = TR_VIA_CONNECT;
	if (tr_connect_decide(gen, c, sock) != TR_ACT_NONE)
		tr_connect_finish(ctx->ret);
	return 0;
}

/*
 * The end of sendto/sendmsg: a fast open decided at SYN_SENT is reported
 * with the send's result; a datagram to an address is judged here. The
 * kernel keeps no copy of that address past the send, so it is read back
 * from the process's memory (flagged `user_memory`), and a sigkill lands
 * after the datagram left.
 */
static __always_inline int tr_send_exit(long ret, const void *uaddr, __u16 hook, __u8 via)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (bpf_map_lookup_elem(&tr_conn_inflight, &id))
		return tr_connect_finish(ret < 0 ? ret : 0);
	if (!uaddr)
		return 0;
	__u32 gen;

	if (!tr_policy_cfg_of(TR_PK_CONNECT, &gen))
		return 0;
	struct socket *sock = tr_fd_socket(PT_REGS_PARM1_CORE_SYSCALL(tr_user_regs()));
	struct sock *sk = sock ? BPF_CORE_READ(sock, sk) : NULL;

	if (!sk || BPF_CORE_READ(sk, sk_type) != TR_SOCK_DGRAM)
		return 0;
	if (tr_send_eval(uaddr, true, sock, hook, via, false) != TR_ACT_NONE)
		tr_connect_finish(ret < 0 ? ret : 0);
	return 0;
}

SEC("tp/syscalls/sys_exit_sendto")
int tr_sendto_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = tr_user_regs();

	return tr_send_exit(ctx->ret, (const void *)PT_REGS_PARM5_CORE_SYSCALL(regs),
			    TR_HOOK_TP_SENDTO, TR_VIA_SENDTO);
}

SEC("tp/syscalls/sys_exit_sendmsg")
int tr_sendmsg_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = tr_user_regs();
	struct user_msghdr *umsg = (struct user_msghdr *)PT_REGS_PARM2_CORE_SYSCALL(regs);
	void *name = NULL;

	bpf_probe_read_user(&name, sizeof(name), &umsg->msg_name);
	return tr_send_exit(ctx->ret, name, TR_HOOK_TP_SENDMSG, TR_VIA_SENDMSG);
}

#endif /* TRACER_NET_BPF_H */
