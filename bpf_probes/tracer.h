/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The wire contract between the BPF programs and the Python decoder
 * (tracer/core/decode.py). Every record in the ring buffer starts with
 * struct tr_hdr; `kind` selects the rest. Layout changes here must be
 * mirrored in tracer/core/decode.py: tests/test_wire_layout.py compares both
 * against the BTF that clang emits for this header.
 */
#ifndef TRACER_WIRE_H
#define TRACER_WIRE_H

#define TR_COMM_LEN 16

/* Bounds of the variable strings of an exec record. The path and cwd
 * limits match PATH_MAX; args are cut at TR_ARGS_MAX and flagged. */
#define TR_PATH_MAX 4096
#define TR_ARGS_MAX 8192
/* Components a path walk keeps: a deeper path keeps its TR_PATH_LEAF
 * leaf-side components and the TR_PATH_RING root-most ones, with the
 * marker component TR_GAP ("\u2026", UTF-8) between them and the path
 * flagged as truncated. */
#define TR_PATH_DEPTH 64
#define TR_PATH_LEAF 16
#define TR_PATH_RING (TR_PATH_DEPTH - TR_PATH_LEAF)
#define TR_GAP_LEN 3
#define TR_GAP_0 ((char)0xe2)
#define TR_GAP_1 ((char)0x80)
#define TR_GAP_2 ((char)0xa6)
/* Steps (components and mount crossings) a walk takes to find the root;
 * a path deeper than that is reported without its root side. */
#define TR_WALK_STEPS 4096
/* Longest single path component (NAME_MAX). */
#define TR_NAME_MAX 255

enum tr_kind {
	TR_KIND_EXEC = 1,
	TR_KIND_FORK = 2,
	TR_KIND_EXIT = 3,
	TR_KIND_FILE_OPEN = 4,
	TR_KIND_CONNECT = 5,
	TR_KIND_CGROUP = 6,
	TR_KIND_POLICY_SUMMARY = 7, /* events a throttling rule selected and did not post */
	TR_KIND_PRIVILEGE_CHANGE = 8, /* struct tr_priv (priv.bpf.h) */
	TR_KIND_FILE_ATTR = 9,        /* struct tr_file_attr (priv.bpf.h) */
	TR_KIND_MAX = 10,
};

/* tr_exec.flags */
enum tr_exec_flags {
	TR_EXEC_TRUNC_ARGS = 1 << 0,
	TR_EXEC_TRUNC_PATH = 1 << 1,
	TR_EXEC_TRUNC_CWD = 1 << 2,
	TR_EXEC_NO_MM = 1 << 3, /* args unreadable (no mm): empty, not lost */
	TR_EXEC_MEMFD = 1 << 4, /* the binary is a memfd: its path is "memfd:NAME" */
	TR_EXEC_DELETED = 1 << 5, /* the binary was unlinked before the exec */
};

/* tr_task.flags */
enum tr_task_flags {
	/* The task's executable has been unlinked (unknown at exit: no mm) */
	TR_TASK_EXE_DELETED = 1 << 0,
};

/* Indexes of the per-CPU `tr_stats` array: one slot per kind and per
 * counter, so user space sums the CPUs without locking. */
enum tr_stat {
	TR_STAT_EMITTED = 0,
	TR_STAT_RB_DROPPED = 1,
	TR_STAT_EVALUATED = 2, /* policy evaluations: proof a filter ran */
	TR_STAT_PREFILTERED = 3, /* of those, opens settled before the path was copied */
	TR_STAT_LIMITED = 4, /* records dropped: their uid was over its budget while the ring was behind */
	TR_STAT_COUNT = 5,
};

/* ---- Policies (compiled by policy/, evaluated in policy.bpf.h) ---- */

/* Longest string a rule may hold: LPM trie keys carry at most 256 bytes
 * of data, 4 of which select generation, kind and field. */
#define TR_POLICY_STR 252
/* Rules per event kind: one bit each in a u64 mask. */
#define TR_MAX_RULES 64
/* Two generations of every policy map: user space fills the idle one,
 * then flips tr_policy_gen, so a program never sees a half-applied set. */
#define TR_GENS 2

enum tr_pkind {
	TR_PK_EXEC = 0,
	TR_PK_FILE = 1,
	TR_PK_CONNECT = 2,
	TR_PK_PRIVILEGE_CHANGE = 3,
	TR_PK_FILE_ATTR = 4,
	TR_PK_MAX = 5,
};

enum tr_field {
	TR_F_BINARY = 0,
	TR_F_PATH = 1,
	TR_F_PARENT_BINARY = 2,   /* the executable of the process's parent */
	TR_F_ANCESTOR_BINARY = 3, /* of any of its TR_ANCESTOR_DEPTH nearest ancestors */
	TR_F_DADDR = 4,
	TR_F_DPORT = 5,
	TR_F_UID = 6,
	TR_F_EUID = 7,
	TR_F_MAX = 8,
};

/* The string fields (binary, path, parent and ancestor binary) come first. */
#define TR_STR_FIELDS 4
/* Ancestors (parent first) an ancestor_binary selector looks at. */
#define TR_ANCESTOR_DEPTH 8
/* Path globs (policy/glob.py): per event kind, their length, and the most
 * steps one match may take before it counts as no match. A glob's literal
 * head is stored in the prefix trie under this pseudo-field, so only the
 * globs whose head the path starts with are run. */
#define TR_GLOBS 16
#define TR_GLOB_LEN 128
#define TR_GLOB_STEPS 8192
#define TR_F_GLOB_HEAD TR_F_MAX
/* Bit of tr_kind_cfg.fields: some rule of the kind has workload selectors
 * (namespace, pod_labels, container, in_container), decided per cgroup by
 * the daemon into tr_workload (workload.bpf.h, policy/workload_map.py). */
#define TR_F_WORKLOAD (TR_F_MAX + 1)
/* Default capacity of tr_workload, in cgroups (--workload-cgroups). */
#define TR_WORKLOAD_CGROUPS 16384

/*
 * The path sieve (file_open, policy.bpf.h tr_sieve): a hashed table of
 * rule masks, compiled from the positive path values (policy/sieve.py
 * builds the same hashes), which names the rules that can still match a
 * path from the names of its first TR_SIEVE_DEPTH components and of its
 * leaf alone. An open it admits no rule for is turned away before its
 * path is copied out. A name is hashed by its length and first
 * TR_SIEVE_NAME bytes; two values that share a slot only admit more.
 */
#define TR_SIEVE_SLOTS 8192 /* per generation */
#define TR_SIEVE_DEPTH 8
#define TR_SIEVE_NAME 32
#define TR_SIEVE_K 0x9E3779B97F4A7C15ULL
#define TR_SIEVE_ROOT 1     /* the chain of components starts here */
#define TR_SIEVE_LEAF 2     /* and the leaf's keys here */
#define TR_SIEVE_ALL 0x100  /* under the chain: any component (a prefix ends there) */
#define TR_SIEVE_PART 0x200 /* | byte: a value ends inside a component starting with it */
#define TR_SIEVE_END2 0x10000 /* | b2 << 8 | b1: a suffix ends with b2 b1 within the leaf */

enum tr_action {
	TR_ACT_NONE = 0, /* no rule selected the event */
	TR_ACT_POST = 1,
	TR_ACT_IGNORE = 2,
	TR_ACT_SIGKILL = 3,
	TR_ACT_DENY = 4, /* only while the LSM programs are loaded: they return -EPERM */
};

/* Which rules a map entry speaks for: `pos` rules list the value, `neg`
 * rules list it under a "not" form. */
struct tr_hits {
	__u64 pos;
	__u64 neg;
};

/* Per generation and kind. A rule matches when, for every field, it has
 * no positive selector (free) or a positive hit, and no negative hit. An
 * event without a value for a field (a connect with no IP address, a
 * process whose binary is unknown) matches no rule that constrains it. */
struct tr_kind_cfg {
	__u64 rules;                 /* one bit per rule that exists */
	__u64 free[TR_F_MAX];        /* rules without a positive selector on the field */
	__u64 constrained[TR_F_MAX]; /* rules with any selector on the field */
	/* file_open rules that match only opens for writing; privilege_change
	 * rules that match only changes to root (to_root) */
	__u64 write_only;
	__u64 enforce;               /* sigkill and deny rules: they win over the rest */
	__u64 ignore;                /* ignore rules: they win over post */
	__u32 fields;                /* bit per field with any value: skip the others */
	__u32 suffix_fields;         /* bit per string field with suffix values */
	/* Per string field (binary, path), 256 bits each: bit n of
	 * exact_lens when some exact value is n bytes long; bit c of
	 * suffix_ends when some suffix value ends in byte c. A value no bit
	 * admits skips that lookup: hashing the exact key and reversing the
	 * value for the suffix trie were a third of an evaluation that
	 * matches nothing. */
	__u64 exact_lens[TR_STR_FIELDS][4];
	__u64 suffix_ends[TR_STR_FIELDS][4];
	__u64 glob_rules; /* rules with a glob value (path or not_path) */
	__u32 nglobs;     /* glob slots in use for the kind */
	__u32 pad;
};

struct tr_glob {
	__u64 rule; /* the rule bit it speaks for */
	__u32 neg;  /* a not_path value */
	__u32 len;
	char pat[TR_GLOB_LEN];
};

/* tr_workload's value: per generation and event kind, the rules with
 * workload selectors that a process in the cgroup satisfies. */
struct tr_workload {
	__u64 rules[TR_GENS][TR_PK_MAX];
};

struct tr_rule {
	__u32 policy_id;
	__u16 index; /* the rule's position in its policy */
	__u8 action;
	__u8 pad;
};

struct tr_verdict {
	__u32 policy_id;
	__u16 rule;
	__u8 action; /* enum tr_action */
	__u8 pad;
};

struct tr_str_key {
	__u32 sel; /* gen << 16 | kind << 8 | field */
	char s[TR_POLICY_STR];
};

struct tr_lpm_str_key {
	__u32 prefixlen; /* 32 + 8 * bytes of s */
	__u32 sel;
	char s[TR_POLICY_STR];
};

struct tr_lpm_addr_key {
	__u32 prefixlen; /* 32 + bits; IPv4 is mapped into ::ffff:0:0/96 */
	__u32 sel;
	__u8 addr[16];
};

struct tr_uid_key {
	__u32 sel;
	__u32 uid;
};

/* ---- Throttle and aggregate (throttle.bpf.h) ---- */

/* Keys the throttle table holds by default (the loader sets --throttle-keys);
 * each is a rule, a process or cgroup and,
 * for aggregate, a hash of what the event was about. */
#define TR_THROTTLE_KEYS 16384
/* The most a window may post: the count of its posted events shares a
 * word with its start. */
#define TR_THROTTLE_LIMIT_MAX ((1 << 24) - 1)

enum tr_throttle_flags {
	TR_THR_BY_CGROUP = 1 << 0, /* keyed by cgroup, not process */
	TR_THR_AGGREGATE = 1 << 1, /* and by path or peer and access */
};

/* Per rule slot (as tr_policy_rules); limit 0: the rule is not throttled. */
struct tr_throttle_rule {
	__u32 limit; /* events posted per window and key */
	__u32 flags; /* enum tr_throttle_flags */
	__u64 per_ms; /* the window */
};

/* Indexes of the per-CPU tr_throttle_stats array after its TR_RULE_SLOTS
 * per-rule counts of suppressed events. */
enum tr_throttle_stat {
	TR_THR_SUPPRESSED = 0, /* events not posted, all rules */
	TR_THR_REPORTED = 1,   /* of those, counted in a summary record */
	TR_THR_UNTHROTTLED = 2, /* posted because no key could be kept or updated */
	TR_THR_STATS = 3,
};

/* The argument of the flush program (tr_throttle_flush). */
struct tr_flush_args {
	__u32 all; /* also windows still open: the daemon is stopping */
	__u32 pad;
};

/* ---- Records ---- */

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
	__u32 flags; /* enum tr_task_flags */
	__u32 pad;
};

struct tr_exec {
	struct tr_hdr hdr;
	struct tr_task task;
	struct tr_verdict verdict;
	__u32 flags;
	__u16 path_len; /* bytes, no NUL */
	__u16 cwd_len;
	__u32 args_len; /* bytes of NUL-separated argv */
	__u32 binary_dev; /* the binary's st_dev (new_encode_dev of its sb's s_dev) */
	__u64 binary_ino;
	__u32 mnt_ns; /* inode number of the task's mount namespace */
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

/* Which program produced a file_open or connect record. */
enum tr_hook {
	TR_HOOK_TP_OPEN = 1,
	TR_HOOK_TP_OPENAT = 2,
	TR_HOOK_TP_OPENAT2 = 3,
	TR_HOOK_TP_CREAT = 4,
	TR_HOOK_TP_CONNECT = 5,
	/* The security hook that selected the open or connect (hooks.bpf.h) */
	TR_HOOK_LSM_FILE_OPEN = 6,
	TR_HOOK_FENTRY_FILE_OPEN = 7,
	TR_HOOK_KPROBE_FILE_OPEN = 8,
	TR_HOOK_LSM_CONNECT = 9,
	TR_HOOK_FENTRY_CONNECT = 10,
	TR_HOOK_KPROBE_CONNECT = 11,
	/* A failed open the security hook never saw (ENOENT, EACCES, ...),
	 * selected at the end of do_sys_openat2 */
	TR_HOOK_FEXIT_OPENAT2 = 12,
	TR_HOOK_KRETPROBE_OPENAT2 = 13,
	/* io_uring requests and 32-bit syscalls in tracepoint mode: the
	 * syscall tracepoints never see them (evasion.bpf.h) */
	TR_HOOK_TP_URING_COMPLETE = 14,
	TR_HOOK_TP_SOCK_STATE = 15,
	TR_HOOK_TP_SYS_EXIT = 16,
	/* A failed io_uring open the security hook never saw */
	TR_HOOK_FEXIT_IO_OPENAT2 = 17,
	TR_HOOK_KRETPROBE_IO_OPENAT2 = 18,
	/* tracepoint mode: an io_uring open that posts no completion */
	TR_HOOK_TP_URING_SUBMIT_REQ = 19,
	TR_HOOK_TP_URING_SUBMIT_SQE = 20,
	/* A TCP connect (or fast open) selected when the kernel moved the
	 * socket to SYN_SENT, on the address it had copied */
	TR_HOOK_TP_SYN_SENT = 21,
	/* A datagram sent to an address without connect() */
	TR_HOOK_TP_SENDTO = 22,
	TR_HOOK_TP_SENDMSG = 23,
	TR_HOOK_LSM_SENDMSG = 24,
	TR_HOOK_FENTRY_SENDMSG = 25,
	TR_HOOK_KPROBE_SENDMSG = 26,
	/* A name made in a watched place: rename, link, symlink */
	TR_HOOK_TP_RENAME = 27,
	TR_HOOK_TP_RENAMEAT = 28,
	TR_HOOK_TP_RENAMEAT2 = 29,
	TR_HOOK_TP_LINK = 30,
	TR_HOOK_TP_LINKAT = 31,
	TR_HOOK_TP_SYMLINK = 32,
	TR_HOOK_TP_SYMLINKAT = 33,
	/* The same through the path security hooks (CONFIG_SECURITY_PATH) */
	TR_HOOK_LSM_PATH_RENAME = 34,
	TR_HOOK_LSM_PATH_LINK = 35,
	TR_HOOK_LSM_PATH_SYMLINK = 36,
	TR_HOOK_FENTRY_PATH_RENAME = 37,
	TR_HOOK_FENTRY_PATH_LINK = 38,
	TR_HOOK_FENTRY_PATH_SYMLINK = 39,
	TR_HOOK_KPROBE_PATH_RENAME = 40,
	TR_HOOK_KPROBE_PATH_LINK = 41,
	TR_HOOK_KPROBE_PATH_SYMLINK = 42,
	/* Credentials and file attributes (priv.bpf.h): the exit tracepoint
	 * of the syscall the record's op names, and exec's tracepoint */
	TR_HOOK_TP_SYSCALL = 43,
	TR_HOOK_TP_EXEC = 44,
	/* A chown judged at its exit on the directory the kernel found the
	 * file in, from the path security hook (priv.bpf.h) */
	TR_HOOK_LSM_PATH_CHOWN = 45,
	TR_HOOK_FENTRY_PATH_CHOWN = 46,
	TR_HOOK_KPROBE_PATH_CHOWN = 47,
	/* Or'ed into the hook: how the program made the call, when not
	 * through its 64-bit syscall */
	TR_HOOK_IO_URING = 1 << 8,
	TR_HOOK_IA32 = 1 << 9,
};

enum tr_file_flags {
	TR_FILE_TRUNC_PATH = 1 << 0,
	/* The open failed: no file to resolve; the path is the string the
	 * program passed, joined to its cwd when relative. */
	TR_FILE_UNRESOLVED = 1 << 1,
	/* The path was read back from the process's memory after the kernel
	 * had used its own copy: a thread of the process may have changed it
	 * in between. */
	TR_FILE_USER_MEMORY = 1 << 2,
};

/* What made the name: an open, or a new name for a file that exists. */
enum tr_file_op {
	TR_FILE_OP_OPEN = 0,
	TR_FILE_OP_RENAME = 1,
	TR_FILE_OP_LINK = 2,
	TR_FILE_OP_SYMLINK = 3,
};

struct tr_file_open {
	struct tr_hdr hdr;
	struct tr_task task;
	struct tr_verdict verdict;
	__s64 ret;       /* fd, or -errno */
	__u32 open_flags;
	__u32 mode;
	__u32 flags;     /* enum tr_file_flags */
	__u16 hook;      /* enum tr_hook */
	__u16 path_len;
	__u16 op;         /* enum tr_file_op */
	__u16 source_len; /* rename, link: the old name; symlink: its target */
	/* path, then source, back to back */
	char path[TR_PATH_MAX + TR_PATH_MAX];
};

/* How the process reached the peer. */
enum tr_conn_via {
	TR_VIA_CONNECT = 0,
	TR_VIA_SENDTO = 1,   /* a datagram to an address, on an unconnected socket */
	TR_VIA_SENDMSG = 2,
	TR_VIA_FASTOPEN = 3, /* TCP Fast Open: sendto/sendmsg with MSG_FASTOPEN */
};

enum tr_conn_flags {
	/* The address was read from the process's memory, not the kernel's
	 * copy: a thread of the process may have changed it in between. */
	TR_CONN_USER_MEMORY = 1 << 0,
};

struct tr_connect {
	struct tr_hdr hdr;
	struct tr_task task;
	struct tr_verdict verdict;
	__s64 ret; /* 0 or -errno (-EINPROGRESS for non-blocking) */
	__u16 family;
	__u16 protocol; /* IPPROTO_TCP, IPPROTO_UDP, ... (0 for AF_UNIX) */
	__u16 sock_type;
	__u16 hook;
	__u16 dport; /* host order */
	__u16 sport;
	__u16 path_len; /* AF_UNIX: bytes of unix_path */
	__u8 via;       /* enum tr_conn_via */
	__u8 flags;     /* enum tr_conn_flags */
	__u8 daddr[16]; /* IPv4 in the first 4 bytes */
	__u8 saddr[16];
	char unix_path[108];
};

/* A cgroup v2 directory made or removed: lets user space map cgroup ids
 * to containers without asking the kernel, also for cgroups that are
 * gone by the time their processes' records are read. */
enum tr_cgroup_op {
	TR_CGROUP_MKDIR = 1,
	TR_CGROUP_RMDIR = 2,
};

struct tr_cgroup {
	struct tr_hdr hdr;
	__u64 ktime;
	__u64 id;       /* the cgroup id, as in tr_task.cgroup_id */
	__u32 op;       /* enum tr_cgroup_op */
	__u16 path_len; /* bytes, no NUL */
	__u16 pad;
	char path[TR_PATH_MAX]; /* below the cgroup2 root, e.g. /kubepods.slice/... */
};

/* Events one key of a throttling rule selected and did not post, since
 * the previous summary of that key. The task is the process that opened
 * the window (its ktime: the last event suppressed). */
struct tr_summary {
	struct tr_hdr hdr;
	struct tr_task task;
	struct tr_verdict verdict; /* the rule */
	__u64 count;
	__u64 first;  /* ktime of the first event counted */
	__u64 window; /* ktime the window began (its first posted event) */
	__u64 per_ms;
	__u32 limit;
	__u16 kind;  /* enum tr_pkind of the rule */
	__u16 flags; /* enum tr_throttle_flags */
};

/* A process's credentials (struct cred): ids, and capability sets as
 * 64-bit masks (bit n: capability n). */
struct tr_cred {
	__u32 uid;
	__u32 euid;
	__u32 suid;
	__u32 fsuid;
	__u32 gid;
	__u32 egid;
	__u32 sgid;
	__u32 fsgid;
	__u64 cap_inheritable;
	__u64 cap_permitted;
	__u64 cap_effective;
	__u64 cap_ambient;
};

/* The call that changed the credentials. */
enum tr_priv_op {
	TR_PRIV_SETUID = 1,
	TR_PRIV_SETGID = 2,
	TR_PRIV_SETREUID = 3,
	TR_PRIV_SETREGID = 4,
	TR_PRIV_SETRESUID = 5,
	TR_PRIV_SETRESGID = 6,
	TR_PRIV_SETFSUID = 7,
	TR_PRIV_SETFSGID = 8,
	TR_PRIV_CAPSET = 9,
	TR_PRIV_EXEC = 10, /* of a set-id or file-capability binary */
};

enum tr_priv_flags {
	/* No uid (real, effective, saved, fs) was 0 before and one is now. */
	TR_PRIV_TO_ROOT = 1 << 1,
};

/* A process's credentials changed: only calls that changed them are
 * reported, after the kernel made the change. */
struct tr_priv {
	struct tr_hdr hdr;
	struct tr_task task; /* with the new ids */
	struct tr_verdict verdict;
	__s64 ret;
	__u16 op;   /* enum tr_priv_op */
	__u16 hook; /* enum tr_hook */
	__u32 flags; /* enum tr_priv_flags */
	struct tr_cred old;
	struct tr_cred new;
};

enum tr_attr_op {
	TR_ATTR_CHMOD = 1, /* that left S_ISUID or S_ISGID set */
	TR_ATTR_CHOWN = 2, /* to uid 0, of a file in a world-writable directory */
};

/* The syscall (the 16-bit-id variants of the ia32 table as theirs). */
enum tr_attr_call {
	TR_CALL_CHMOD = 1,
	TR_CALL_FCHMOD = 2,
	TR_CALL_FCHMODAT = 3,
	TR_CALL_FCHMODAT2 = 4,
	TR_CALL_CHOWN = 5,
	TR_CALL_LCHOWN = 6,
	TR_CALL_FCHOWN = 7,
	TR_CALL_FCHOWNAT = 8,
};

enum tr_attr_flags {
	TR_ATTR_TRUNC_PATH = 1 << 0,
	/* The path is the name passed, joined to its directory (dirfd or
	 * cwd), read back from the process's memory: not resolved */
	TR_ATTR_UNRESOLVED = 1 << 1,
	TR_ATTR_WORLD_WRITABLE_DIR = 1 << 2,
};

/* A set-id bit set, or a file given to root where anyone could have
 * put it: only successful calls. */
struct tr_file_attr {
	struct tr_hdr hdr;
	struct tr_task task;
	struct tr_verdict verdict;
	__s64 ret;
	__u32 mode;      /* chmod: the mode asked for */
	__u32 uid;       /* chown: (u32)-1 leaves it as it was */
	__u32 gid;
	__u16 op;        /* enum tr_attr_op */
	__u16 hook;      /* enum tr_hook, with TR_HOOK_IA32 */
	__u32 flags;     /* enum tr_attr_flags */
	__u32 file_mode; /* the file's mode after the call; 0 when not resolved */
	__u16 path_len;
	__u16 call;      /* enum tr_attr_call */
	char path[TR_PATH_MAX];
};

#endif /* TRACER_WIRE_H */
