/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * How the current task came to open a file or connect a socket: one of
 * the program's own open/connect syscalls (64-bit, or 32-bit through the
 * ia32 entry, `int $0x80`), a request it queued on an io_uring, or none
 * of these (the kernel on its own account: an exec opening the binary, a
 * module load). The security hooks judge the first three and skip the
 * rest. The 32-bit entry numbers its syscalls differently (5 is `open`
 * there, `fstat` in 64-bit), so the number means nothing without knowing
 * which entry the task came through.
 */
#ifndef TRACER_ORIGIN_BPF_H
#define TRACER_ORIGIN_BPF_H

#include "common.bpf.h"

#if defined(__TARGET_ARCH_x86)
#define TR_NR_OPEN 2
#define TR_NR_CREAT 85
#define TR_NR_OPENAT 257
#define TR_NR_OPENAT2 437
#define TR_NR_CONNECT 42
#define TR_NR_SENDTO 44
#define TR_NR_SENDMSG 46
#define TR_NR_IO_URING_ENTER 426
/* The calls older than their *at forms, which arm64 never had. */
#define TR_HAVE_LEGACY_NAMES 1
#define TR_NR_RENAME 82
#define TR_NR_LINK 86
#define TR_NR_SYMLINK 88
#define TR_NR_CHMOD 90
#define TR_NR_CHOWN 92
#define TR_NR_LCHOWN 94
#define TR_NR_RENAMEAT 264
#define TR_NR_LINKAT 265
#define TR_NR_SYMLINKAT 266
#define TR_NR_RENAMEAT2 316
#define TR_NR_FCHMOD 91
#define TR_NR_FCHOWN 93
#define TR_NR_FCHOWNAT 260
#define TR_NR_FCHMODAT 268
#define TR_NR_FCHMODAT2 452
#define TR_NR_SETUID 105
#define TR_NR_SETGID 106
#define TR_NR_SETREUID 113
#define TR_NR_SETREGID 114
#define TR_NR_SETRESUID 117
#define TR_NR_SETRESGID 119
#define TR_NR_SETFSUID 122
#define TR_NR_SETFSGID 123
#define TR_NR_CAPSET 126
/* The ia32 table (CONFIG_IA32_EMULATION). */
#define TR_HAVE_IA32 1
#define TR_NR32_OPEN 5
#define TR_NR32_EXECVE 11
#define TR_NR32_EXECVEAT 358
#define TR_NR32_CREAT 8
#define TR_NR32_SOCKETCALL 102
#define TR_NR32_OPENAT 295
#define TR_NR32_CONNECT 362
#define TR_NR32_OPENAT2 437
#define TR_NR32_IO_URING_ENTER 426
#define TR_SYS_CONNECT 3 /* socketcall's call number for connect */
/* thread_info.status while the task is in a 32-bit syscall; set by the
 * ia32 entry, cleared on the way back to user mode. */
#define TR_TS_COMPAT 0x0002
/* x32 syscalls carry this bit in their number and use the 64-bit table. */
#define TR_X32_BIT 0x40000000
/* Forced on by the kernel for open/openat/creat on 64-bit: dropped so
 * that flags are what the program passed, as the tracepoints report. */
#define TR_O_LARGEFILE 0100000
#define TR_PT_REGS_SYSCALL_NR orig_ax
#elif defined(__TARGET_ARCH_arm64)
#define TR_NR_OPEN -1 /* arm64 has openat and openat2 only */
#define TR_NR_CREAT -1
#define TR_NR_OPENAT 56
#define TR_NR_OPENAT2 437
#define TR_NR_CONNECT 203
#define TR_NR_SENDTO 206
#define TR_NR_SENDMSG 211
#define TR_NR_IO_URING_ENTER 426
#define TR_HAVE_LEGACY_NAMES 0
#define TR_NR_RENAMEAT 38
#define TR_NR_LINKAT 37
#define TR_NR_SYMLINKAT 36
#define TR_NR_RENAMEAT2 276
#define TR_NR_FCHMOD 52
#define TR_NR_FCHOWN 55
#define TR_NR_FCHOWNAT 54
#define TR_NR_FCHMODAT 53
#define TR_NR_FCHMODAT2 452
#define TR_NR_SETUID 146
#define TR_NR_SETGID 144
#define TR_NR_SETREUID 145
#define TR_NR_SETREGID 143
#define TR_NR_SETRESUID 147
#define TR_NR_SETRESGID 149
#define TR_NR_SETFSUID 151
#define TR_NR_SETFSGID 152
#define TR_NR_CAPSET 91
#define TR_HAVE_IA32 0
#define TR_X32_BIT 0
#define TR_O_LARGEFILE 0400000
#define TR_PT_REGS_SYSCALL_NR syscallno
#else
#error "tracer: syscall numbers for this architecture are missing"
#endif

/* task->flags of io_uring's worker threads (io-wq, SQPOLL): they run
 * requests on behalf of the ring's owner, in its thread group. */
#define TR_PF_IO_WORKER 0x00000010

/* The syscall the current task is in (user tasks; kernel threads read 0). */
static __always_inline long tr_syscall_nr(void)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

	return TR_RD(struct pt_regs, regs, TR_PT_REGS_SYSCALL_NR);
}

/* True while the current task is in a syscall made through the ia32 entry. */
static __always_inline bool tr_in_ia32(void)
{
#if TR_HAVE_IA32
	struct task_struct *task = bpf_get_current_task_btf();

	return TR_RD(struct task_struct, task, thread_info.status) & TR_TS_COMPAT;
#else
	return false;
#endif
}

static __always_inline bool tr_io_worker(void)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return TR_RD(struct task_struct, task, flags) & TR_PF_IO_WORKER;
}

/* What to or into the hook of an open the security hook sees: 0 for an
 * open syscall, TR_HOOK_IA32 for a 32-bit one, TR_HOOK_IO_URING for an
 * io_uring request (run in io_uring_enter or by a worker); -1 for opens
 * the kernel makes on its own account. */
static __always_inline int tr_open_origin(void)
{
	if (tr_io_worker())
		return TR_HOOK_IO_URING;
	long nr = tr_syscall_nr() & ~(long)TR_X32_BIT;

#if TR_HAVE_IA32
	if (tr_in_ia32()) {
		if (nr == TR_NR32_OPENAT || nr == TR_NR32_OPEN || nr == TR_NR32_OPENAT2 ||
		    nr == TR_NR32_CREAT)
			return TR_HOOK_IA32;
		return nr == TR_NR32_IO_URING_ENTER ? TR_HOOK_IO_URING : -1;
	}
#endif
	if (nr == TR_NR_OPENAT || nr == TR_NR_OPEN || nr == TR_NR_OPENAT2 || nr == TR_NR_CREAT)
		return 0;
	return nr == TR_NR_IO_URING_ENTER ? TR_HOOK_IO_URING : -1;
}

/* The same for connects (socketcall's connect is the ia32 one). */
static __always_inline int tr_connect_origin(void)
{
	if (tr_io_worker())
		return TR_HOOK_IO_URING;
	long nr = tr_syscall_nr() & ~(long)TR_X32_BIT;

#if TR_HAVE_IA32
	if (tr_in_ia32()) {
		if (nr == TR_NR32_CONNECT || nr == TR_NR32_SOCKETCALL)
			return TR_HOOK_IA32;
		return nr == TR_NR32_IO_URING_ENTER ? TR_HOOK_IO_URING : -1;
	}
#endif
	if (nr == TR_NR_CONNECT)
		return 0;
	return nr == TR_NR_IO_URING_ENTER ? TR_HOOK_IO_URING : -1;
}

#endif /* TRACER_ORIGIN_BPF_H */
