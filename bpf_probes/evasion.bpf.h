/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Tracepoint mode: the opens and connects that the syscall tracepoints of
 * file.bpf.h and net.bpf.h never see.
 *
 *  - io_uring requests (IORING_OP_OPENAT, _OPENAT2, _CONNECT) make no
 *    open or connect syscall. An open is judged at its completion, when
 *    the new fd is in the table and the program has not seen the CQE: a
 *    sigkill lands before it can read. A failed open or one into a
 *    fixed-file slot is not reported here: the kernel freed its copy of
 *    the name by then, and a slot is no fd to resolve (the security-hook
 *    modes report both). A TCP connect is judged when the socket enters
 *    SYN_SENT, in the connecting task, before the SYN leaves; UDP and
 *    unix connects change no TCP state and are not seen in this mode.
 *  - x86's syscall tracepoints skip syscalls made through the 32-bit
 *    entry (`int $0x80`, 32-bit processes). The raw sys_exit tracepoint
 *    fires for every syscall: the program leaves at once unless the task
 *    is in a 32-bit one, then handles open, openat, openat2, creat,
 *    connect and socketcall's connect (and, in priv.bpf.h, the set*id,
 *    capset, chmod and chown calls). A connect is judged at its end
 *    here: a sigkill still lands before the program can use the socket.
 */
#ifndef TRACER_EVASION_BPF_H
#define TRACER_EVASION_BPF_H

#include "net.bpf.h"
#include "origin.bpf.h"
#include "priv.bpf.h"

#define TR_EINPROGRESS 115

/* tp_btf, raw context: the request is argument 1 on every kernel (6.1
 * and 6.12 pass it as `void *`, followed by its fields; later kernels
 * pass the CQE), and its result is in req->cqe.res on all of them. */
SEC("tp_btf/io_uring_complete")
int tr_tp_uring_complete(__u64 *ctx)
{
	struct io_kiocb *req = (struct io_kiocb *)ctx[1];
	__u8 op = BPF_CORE_READ(req, opcode);

	if (op != IORING_OP_OPENAT && op != IORING_OP_OPENAT2)
		return 0;
	long res = BPF_CORE_READ(req, cqe.res);

	if (res < 0)
		return 0;
	struct io_open *o = (void *)req + bpf_core_field_offset(struct io_kiocb, cmd);

	if (BPF_CORE_READ(o, file_slot))
		return 0;
	struct tr_open_args a = {
		.open_flags = BPF_CORE_READ(o, how.flags) & ~TR_O_LARGEFILE,
		.mode = BPF_CORE_READ(o, how.mode),
		.hook = TR_HOOK_TP_URING_COMPLETE | TR_HOOK_IO_URING,
	};

	return tr_open_finish(res, &a);
}

/* REQ_F_CQE_SKIP: 1 << REQ_F_CQE_SKIP_BIT, 6 from 5.17 to 6.18. */
#define TR_REQ_F_CQE_SKIP (1ULL << 6)

/*
 * An open with IOSQE_CQE_SKIP_SUCCESS posts no completion when it
 * succeeds: the program guesses the fd (the lowest free one) or links a
 * read to it. Such an open is judged when it is submitted, on the name
 * asked for (the kernel's copy, taken by the request's prep), with result
 * -EINPROGRESS: it has not run yet. The request is argument 0 of
 * io_uring_submit_req (6.4 on) and of io_uring_submit_sqe (before).
 */
static __always_inline int tr_uring_submit(struct io_kiocb *req, __u16 hook)
{
	__u8 op = BPF_CORE_READ(req, opcode);

	if (op != IORING_OP_OPENAT && op != IORING_OP_OPENAT2)
		return 0;
	/* 32 bits on 6.1, 64 later: the low half holds the flag either way. */
	if (!(BPF_CORE_READ(req, flags) & TR_REQ_F_CQE_SKIP))
		return 0; /* judged at its completion */
	struct io_open *o = (void *)req + bpf_core_field_offset(struct io_kiocb, cmd);
	struct tr_open_args a = {
		.upath = BPF_CORE_READ(o, filename, name),
		.kname = 1,
		.open_flags = BPF_CORE_READ(o, how.flags) & ~TR_O_LARGEFILE,
		.mode = BPF_CORE_READ(o, how.mode),
		.hook = hook | TR_HOOK_IO_URING,
	};

	return tr_open_finish(-TR_EINPROGRESS, &a);
}

SEC("tp_btf/io_uring_submit_req")
int tr_tp_uring_submit_req(__u64 *ctx)
{
	return tr_uring_submit((struct io_kiocb *)ctx[0], TR_HOOK_TP_URING_SUBMIT_REQ);
}

SEC("tp_btf/io_uring_submit_sqe")
int tr_tp_uring_submit_sqe(__u64 *ctx)
{
	return tr_uring_submit((struct io_kiocb *)ctx[0], TR_HOOK_TP_URING_SUBMIT_SQE);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tr_tp_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (newstate != TCP_SYN_SENT || tr_connect_origin() != TR_HOOK_IO_URING)
		return 0; /* connect syscalls have their own programs */
	struct sockaddr_in6 sa = {};
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	sa.sin6_family = family;
	sa.sin6_port = BPF_CORE_READ(sk, __sk_common.skc_dport);
	if (family == TR_AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&sa;

		sin->sin_addr.s_addr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	} else if (family == TR_AF_INET6) {
		BPF_CORE_READ_INTO(&sa.sin6_addr, sk, __sk_common.skc_v6_daddr);
	} else {
		return 0;
	}
	/* The connect goes on after this: its outcome is not known yet. */
	if (tr_connect_eval(&sa, false, -1, BPF_CORE_READ(sk, sk_socket),
			    TR_HOOK_TP_SOCK_STATE | TR_HOOK_IO_URING) != TR_ACT_NONE)
		tr_connect_finish(-TR_EINPROGRESS);
	return 0;
}

#if TR_HAVE_IA32
static __always_inline int tr_ia32_connect(__u32 fd, __u32 addr, long ret)
{
	if (tr_connect_eval((const void *)(unsigned long)addr, true, fd, NULL,
			    TR_HOOK_TP_SYS_EXIT | TR_HOOK_IA32) != TR_ACT_NONE)
		tr_connect_finish(ret);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(tr_tp_ia32_exit, struct pt_regs *regs, long ret)
{
	/* The number first, a load from the typed argument: it runs at every
	 * syscall exit, and most numbers are none of these in either table. */
	long nr = regs->orig_ax;

	if (nr != TR_NR32_OPEN && nr != TR_NR32_CREAT && nr != TR_NR32_OPENAT &&
	    nr != TR_NR32_OPENAT2 && nr != TR_NR32_CONNECT && nr != TR_NR32_SOCKETCALL &&
	    !tr_ia32_priv_nr(nr))
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();

	if (!(task->thread_info.status & TR_TS_COMPAT))
		return 0;
	/* The 32-bit entry passes arguments in ebx, ecx, edx, esi; the
	 * kernel uses their low halves only. */
	__u32 bx = BPF_CORE_READ(regs, bx), cx = BPF_CORE_READ(regs, cx);
	__u32 dx = BPF_CORE_READ(regs, dx);
	struct tr_open_args a = { .hook = TR_HOOK_TP_SYS_EXIT | TR_HOOK_IA32 };

	switch (nr) {
	case TR_NR32_OPEN:
		a.upath = (const char *)(unsigned long)bx;
		a.open_flags = cx;
		a.mode = dx;
		break;
	case TR_NR32_CREAT:
		a.upath = (const char *)(unsigned long)bx;
		a.open_flags = TR_O_CREAT | TR_O_WRONLY | TR_O_TRUNC;
		a.mode = cx;
		break;
	case TR_NR32_OPENAT:
		a.upath = (const char *)(unsigned long)cx;
		a.open_flags = dx;
		a.mode = (__u32)BPF_CORE_READ(regs, si);
		break;
	case TR_NR32_OPENAT2: {
		struct open_how how = {};

		a.upath = (const char *)(unsigned long)cx;
		bpf_probe_read_user(&how, sizeof(how), (const void *)(unsigned long)dx);
		a.open_flags = how.flags;
		a.mode = how.mode;
		break;
	}
	case TR_NR32_CONNECT:
		return tr_ia32_connect(bx, cx, ret);
	case TR_NR32_SOCKETCALL: {
		__u32 args[3] = {};

		if (bx != TR_SYS_CONNECT)
			return 0;
		bpf_probe_read_user(args, sizeof(args), (const void *)(unsigned long)cx);
		return tr_ia32_connect(args[0], args[1], ret);
	}
	default:
		return tr_ia32_priv(BPF_CORE_READ(regs, orig_ax), regs, ret);
	}
	return tr_open_finish(ret, &a);
}
#endif

#endif /* TRACER_EVASION_BPF_H */
