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

struct tr_conn_inflight {
	struct tr_verdict verdict;
	struct socket *sock; /* held by the syscall's fd reference until it returns */
	__u16 family;
	__u16 dport;
	__u16 path_len;
	__u16 hook;
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

/*
 * Evaluate the policy on a connect's destination before the connection
 * is made, so that a sigkill lands before any data. When a rule selects
 * it, remember it for the end of the syscall (tr_connect_finish) and
 * return the action. `sock` is NULL when only the fd is known.
 */
static __always_inline __u8 tr_connect_eval(const void *addr, bool user, long fd,
					    struct socket *sock, __u16 hook)
{
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_CONNECT, &gen);

	if (!cfg)
		return TR_ACT_NONE;
	struct tr_conn_inflight *c = bpf_map_lookup_elem(&tr_conn_heap, &zero);
	__u16 family = 0;

	if (!c)
		return TR_ACT_NONE;
	tr_read_addr(&family, sizeof(family), addr, user);
	__builtin_memset(c->daddr, 0, sizeof(c->daddr));
	c->path_len = 0;
	c->dport = 0;
	c->family = family;
	c->hook = hook;

	struct tr_policy_input in = { .uid = bpf_get_current_uid_gid() & 0xFFFFFFFF };

	if (family == TR_AF_INET) {
		struct sockaddr_in sin = {};

		tr_read_addr(&sin, sizeof(sin), addr, user);
		c->dport = tr_ntohs(sin.sin_port);
		/* ::ffff:a.b.c.d, the form the CIDR trie holds IPv4 in */
		c->daddr[10] = 0xff;
		c->daddr[11] = 0xff;
		__builtin_memcpy(&c->daddr[12], &sin.sin_addr.s_addr, 4);
		in.daddr = c->daddr;
	} else if (family == TR_AF_INET6) {
		struct sockaddr_in6 sin6 = {};

		tr_read_addr(&sin6, sizeof(sin6), addr, user);
		c->dport = tr_ntohs(sin6.sin6_port);
		__builtin_memcpy(c->daddr, &sin6.sin6_addr, 16);
		in.daddr = c->daddr;
	} else if (family == TR_AF_UNIX) {
		const void *path = addr + offsetof(struct sockaddr_un, sun_path);
		long n = user ? bpf_probe_read_user_str(c->unix_path, sizeof(c->unix_path), path)
			      : bpf_probe_read_kernel_str(c->unix_path, sizeof(c->unix_path), path);

		c->path_len = n > 1 ? n - 1 : 0;
		in.str = c->unix_path;
		in.str_len = c->path_len;
		in.str_field = TR_F_PATH;
	} else {
		return TR_ACT_NONE;
	}
	in.dport = c->dport;
	tr_policy_binary(&in, bpf_get_current_pid_tgid() >> 32);
	tr_policy_eval(TR_PK_CONNECT, cfg, gen, &in, &c->verdict);
	if (c->verdict.action == TR_ACT_NONE || c->verdict.action == TR_ACT_IGNORE)
		return TR_ACT_NONE;
	if (!sock) {
		struct file *f = tr_fd_file(bpf_get_current_task_btf(), fd);

		sock = f ? BPF_CORE_READ(f, private_data) : NULL;
	}
	c->sock = sock;
	__u64 id = bpf_get_current_pid_tgid();

	bpf_map_update_elem(&tr_conn_inflight, &id, c, BPF_ANY);
	return c->verdict.action;
}

/* The end of a selected connect: its result and the local address the
 * kernel chose, read from the socket. */
static __always_inline int tr_connect_finish(long ret)
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

SEC("tp/syscalls/sys_enter_connect")
int tr_connect_enter(struct trace_event_raw_sys_enter *ctx)
{
	tr_connect_eval((const void *)ctx->args[1], true, ctx->args[0], NULL, TR_HOOK_TP_CONNECT);
	return 0;
}

SEC("tp/syscalls/sys_exit_connect")
int tr_connect_exit(struct trace_event_raw_sys_exit *ctx)
{
	return tr_connect_finish(ctx->ret);
}

#endif /* TRACER_NET_BPF_H */
