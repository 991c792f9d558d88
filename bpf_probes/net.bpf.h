/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * connect capture through the syscall tracepoints. The policy runs on
 * enter, so a sigkill lands before the connection carries any data; the
 * exit side adds the result and the local address the kernel chose.
 */
#ifndef TRACER_NET_BPF_H
#define TRACER_NET_BPF_H

#include "file.bpf.h"

#define TR_AF_UNIX 1
#define TR_AF_INET 2
#define TR_AF_INET6 10

struct tr_conn_inflight {
	struct tr_verdict verdict;
	__u32 fd;
	__u16 family;
	__u16 dport;
	__u16 path_len;
	__u8 daddr[16];
	char unix_path[108];
};

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

SEC("tp/syscalls/sys_enter_connect")
int tr_connect_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 gen, zero = 0;
	struct tr_kind_cfg *cfg = tr_policy_cfg_of(TR_PK_CONNECT, &gen);

	if (!cfg)
		return 0;
	struct tr_conn_inflight *c = bpf_map_lookup_elem(&tr_conn_heap, &zero);
	const void *uaddr = (const void *)ctx->args[1];
	__u16 family = 0;

	if (!c)
		return 0;
	bpf_probe_read_user(&family, sizeof(family), uaddr);
	__builtin_memset(c->daddr, 0, sizeof(c->daddr));
	c->path_len = 0;
	c->dport = 0;
	c->family = family;
	c->fd = ctx->args[0];

	struct tr_policy_input in = { .uid = bpf_get_current_uid_gid() & 0xFFFFFFFF };

	if (family == TR_AF_INET) {
		struct sockaddr_in sin = {};

		bpf_probe_read_user(&sin, sizeof(sin), uaddr);
		c->dport = tr_ntohs(sin.sin_port);
		/* ::ffff:a.b.c.d, the form the CIDR trie holds IPv4 in */
		c->daddr[10] = 0xff;
		c->daddr[11] = 0xff;
		__builtin_memcpy(&c->daddr[12], &sin.sin_addr.s_addr, 4);
		in.daddr = c->daddr;
	} else if (family == TR_AF_INET6) {
		struct sockaddr_in6 sin6 = {};

		bpf_probe_read_user(&sin6, sizeof(sin6), uaddr);
		c->dport = tr_ntohs(sin6.sin6_port);
		__builtin_memcpy(c->daddr, &sin6.sin6_addr, 16);
		in.daddr = c->daddr;
	} else if (family == TR_AF_UNIX) {
		long n = bpf_probe_read_user_str(c->unix_path, sizeof(c->unix_path),
						 uaddr + offsetof(struct sockaddr_un, sun_path));

		c->path_len = n > 1 ? n - 1 : 0;
		in.str = c->unix_path;
		in.str_len = c->path_len;
		in.str_field = TR_F_PATH;
	} else {
		return 0;
	}
	in.dport = c->dport;
	tr_policy_binary(&in, bpf_get_current_pid_tgid() >> 32);
	tr_policy_eval(TR_PK_CONNECT, cfg, gen, &in, &c->verdict);
	if (c->verdict.action == TR_ACT_NONE || c->verdict.action == TR_ACT_IGNORE)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();

	bpf_map_update_elem(&tr_conn_inflight, &id, c, BPF_ANY);
	return 0;
}

SEC("tp/syscalls/sys_exit_connect")
int tr_connect_exit(struct trace_event_raw_sys_exit *ctx)
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
	ev.ret = ctx->ret;
	ev.family = c->family;
	ev.dport = c->dport;
	ev.hook = TR_HOOK_TP_CONNECT;
	ev.path_len = c->path_len;
	__builtin_memcpy(ev.unix_path, c->unix_path, sizeof(ev.unix_path));
	if (c->family == TR_AF_INET)
		__builtin_memcpy(ev.daddr, &c->daddr[12], 4);
	else
		__builtin_memcpy(ev.daddr, c->daddr, 16);
	__u32 fd = c->fd;

	bpf_map_delete_elem(&tr_conn_inflight, &id);

	struct file *f = tr_fd_file(task, fd);
	struct socket *sock = f ? BPF_CORE_READ(f, private_data) : NULL;
	struct sock *sk = sock ? BPF_CORE_READ(sock, sk) : NULL;

	if (sk) {
		ev.protocol = BPF_CORE_READ(sk, sk_protocol);
		ev.sock_type = BPF_CORE_READ(sk, sk_type);
		ev.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
		if (c->family == TR_AF_INET) {
			__u32 v4 = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);

			__builtin_memcpy(ev.saddr, &v4, 4);
		} else if (c->family == TR_AF_INET6)
			BPF_CORE_READ_INTO(&ev.saddr, sk, __sk_common.skc_v6_rcv_saddr);
	}
	tr_fill_task(&ev.task, task);
	tr_emit(TR_KIND_CONNECT, &ev, sizeof(ev));
	return 0;
}

#endif /* TRACER_NET_BPF_H */
