/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The wire contract between the BPF programs and the Python decoder
 * (tracer/_wire.py). Every record in the ring buffer starts with
 * struct tr_hdr; `kind` selects the rest. Layout changes here must be
 * mirrored in tracer/_wire.py: tests/test_wire_layout.py compares both
 * against the BTF that clang emits for this header.
 */
#ifndef TRACER_WIRE_H
#define TRACER_WIRE_H

#define TR_COMM_LEN 16

/* Bounds of the variable strings of an exec record. The path and cwd
 * limits match PATH_MAX; args are cut at TR_ARGS_MAX and flagged. */
#define TR_PATH_MAX 4096
#define TR_ARGS_MAX 8192
/* Deepest path the bounded dentry walk follows before flagging a cut. */
#define TR_PATH_DEPTH 64
/* Longest single path component (NAME_MAX). */
#define TR_NAME_MAX 255

enum tr_kind {
	TR_KIND_EXEC = 1,
	TR_KIND_FORK = 2,
	TR_KIND_EXIT = 3,
	TR_KIND_MAX = 4,
};

/* tr_exec.flags */
enum tr_exec_flags {
	TR_EXEC_TRUNC_ARGS = 1 << 0,
	TR_EXEC_TRUNC_PATH = 1 << 1,
	TR_EXEC_TRUNC_CWD = 1 << 2,
	TR_EXEC_NO_MM = 1 << 3, /* args unreadable (no mm): empty, not lost */
};

/* Indexes of the per-CPU `tr_stats` array: one slot per kind and per
 * counter, so user space sums the CPUs without locking. */
enum tr_stat {
	TR_STAT_EMITTED = 0,
	TR_STAT_RB_DROPPED = 1,
	TR_STAT_COUNT = 2,
};

struct tr_hdr {
	__u32 kind;
	__u32 size; /* bytes of this record that are meaningful */
};

/* Who did it: filled for every kind from a task_struct with CO-RE reads. */
struct tr_task {
	__u64 ktime;          /* bpf_ktime_get_boot_ns() of the event */
	__u64 start_boottime; /* group leader's start_boottime: the fork, boot ns */
	__u64 cgroup_id;      /* cgroup v2 id (kernfs node id of dfl_cgrp) */
	__u32 tgid;
	__u32 tid;
	__u32 ppid; /* tgid of real_parent */
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u32 egid;
	__u32 auid; /* loginuid; (u32)-1 when unset or not built in */
	char comm[TR_COMM_LEN];
};

struct tr_exec {
	struct tr_hdr hdr;
	struct tr_task task;
	__u32 flags;
	__u16 path_len; /* bytes, no NUL */
	__u16 cwd_len;
	__u32 args_len; /* bytes of NUL-separated argv */
	__u32 pad;
	/* path, then cwd, then args, packed back to back. */
	char data[TR_PATH_MAX + TR_PATH_MAX + TR_ARGS_MAX];
};

struct tr_fork {
	struct tr_hdr hdr;
	struct tr_task task; /* the child; ppid is the forking parent */
};

struct tr_exit {
	struct tr_hdr hdr;
	struct tr_task task;
	__u32 exit_code; /* wait(2) status: code << 8 | signal */
	__u32 pad;
};

#endif /* TRACER_WIRE_H */
