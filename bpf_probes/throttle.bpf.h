/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Throttle and aggregate: a posting rule's `throttle: {events: N, per: T}`
 * posts at most N events per window of T for each process (or cgroup);
 * `aggregate: T` is N = 1 for each process and distinct path or peer. What
 * is not posted is counted here, per key, and reported in a summary record
 * (struct tr_summary): by the next event that opens a window for the key,
 * or by tr_throttle_flush, which the daemon runs a few times a second, for
 * windows that ended with nothing after them. Only posting decisions are
 * throttled: a sigkill or deny acts on, and posts, every event.
 *
 * The table is an LRU hash: a key that went quiet ages out. A key evicted
 * with a count not yet reported loses that count; the daemon sees it as
 * suppressed minus reported minus still pending (tr_throttle_stats).
 */
#ifndef TRACER_THROTTLE_BPF_H
#define TRACER_THROTTLE_BPF_H

#include "common.bpf.h"

/* The posted-event count shares the state word with the window's start. */
#define TR_THR_COUNT_BITS 24
#define TR_THR_COUNT_MASK ((1ULL << TR_THR_COUNT_BITS) - 1)
#define TR_THR_TRIES 4
/* Bytes of each end of a string an aggregate key hashes: strings that
 * agree in length and in both ends are one key. Hashing them whole took
 * a loop that doubled the verifier's work on every policy program. */
#define TR_THR_SAMPLE 256

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TR_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct tr_throttle_rule);
} tr_throttle_rules SEC(".maps");

struct tr_throttle_key {
	__u32 slot; /* the rule's slot: generation, kind, rule */
	__u32 pad;
	__u64 who;  /* tgid, or cgroup id */
	__u64 hash; /* aggregate: what the event was about; else 0 */
};

struct tr_throttle_val {
	__u64 state;   /* window start (ms of boot time) << 24 | events posted in it */
	__u64 pending; /* suppressed and not yet reported */
	__u64 first;   /* ktime of the first of them */
	__u64 last;    /* and of the last */
	struct tr_summary sum; /* the report's template: who opened the window, the rule */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TR_THROTTLE_KEYS);
	__type(key, struct tr_throttle_key);
	__type(value, struct tr_throttle_val);
} tr_throttle SEC(".maps");

/* Suppressed events per rule slot, then the enum tr_throttle_stat totals. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TR_RULE_SLOTS + TR_THR_STATS);
	__type(key, __u32);
	__type(value, __u64);
} tr_throttle_stats SEC(".maps");

/* The throttle's part of the policy scratch (struct tr_policy_scratch):
 * the request tr_policy_eval fills, and the decision's state. Everything
 * lives in map memory, since the programs that evaluate policies have no
 * stack left to spare. */
struct tr_throttle_scratch {
	/* The request: the rule and its throttle, and what the event is about. */
	__u32 slot, kind, policy_id;
	__u16 rule;
	__u8 action, has_daddr;
	__u32 limit, flags;
	__u64 per_ms;
	__u64 str; /* address of the path (or binary, socket path), 0: none */
	__u32 len, field, is_write, dport;
	__u8 daddr[16];
	/* The decision's state */
	struct tr_throttle_val zero; /* a zeroed value to insert from (never written) */
	struct tr_throttle_key key;
	__u64 h;
	__u64 w;
	__u64 bytes[2 * TR_THR_SAMPLE / 8]; /* the string's first and last bytes */
	__u64 now;
	__u64 now_ms;
	__u32 idx; /* a counter's index */
	__u32 pad;
};

/* The one scratch of the throttle, per CPU. tr_throttle_decide finds it
 * here itself rather than being passed it: before 6.2 a map helper takes
 * no key or value a global function was passed (only the stack's or a
 * map's), and the callers have no stack to give. Looked up by tr_zero_key,
 * for the same reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_throttle_scratch);
} tr_throttle_scratch SEC(".maps");

static __always_inline void tr_thr_count(__u32 *idx, __u32 slot, __u64 n)
{
	*idx = slot;
	__u64 *c = bpf_map_lookup_elem(&tr_throttle_stats, idx);

	if (c)
		*c += n; /* per-CPU slot */
}

static __always_inline void tr_thr_kind_count(__u32 *idx, __u32 stat)
{
	*idx = TR_KIND_POLICY_SUMMARY * TR_STAT_COUNT + stat;
	__u64 *c = bpf_map_lookup_elem(&tr_stats, idx);

	if (c)
		*c += 1;
}

static __always_inline __u64 tr_mix(__u64 h, __u64 w)
{
	h = (h ^ w) * 0x100000001b3ULL;
	return h ^ (h >> 29);
}

/* What an event is about, for aggregate: its path (or binary, or socket
 * path) by length and both ends, its peer, and whether it writes. */
static __always_inline __u64 tr_content_hash(struct tr_throttle_scratch *t)
{
	__u32 n = t->len < TR_THR_SAMPLE ? t->len : TR_THR_SAMPLE;

	t->h = tr_mix(0xcbf29ce484222325ULL,
		      (__u64)t->len << 32 | t->kind << 8 | t->field << 1 | t->is_write);
	if (t->has_daddr) {
		__builtin_memcpy(&t->w, t->daddr, 8);
		t->h = tr_mix(t->h, t->w);
		__builtin_memcpy(&t->w, t->daddr + 8, 8);
		t->h = tr_mix(tr_mix(t->h, t->w), t->dport);
	}
	__builtin_memset(t->bytes, 0, sizeof(t->bytes));
	if (t->str) {
		/* n <= TR_THR_SAMPLE; the mask only shows the verifier it fits */
		bpf_probe_read_kernel(t->bytes, tr_bound(n, 2 * TR_THR_SAMPLE - 1),
				      (const void *)t->str);
		if (t->len > TR_THR_SAMPLE)
			bpf_probe_read_kernel(&t->bytes[TR_THR_SAMPLE / 8], TR_THR_SAMPLE,
					      (const void *)(t->str + t->len - TR_THR_SAMPLE));
	}
#pragma unroll
	for (int i = 0; i < 2 * TR_THR_SAMPLE / 8; i++)
		t->h = tr_mix(t->h, t->bytes[i]);
	return t->h;
}

/* Put n suppressed events of v's key in a summary record. When the ring
 * is full they go back to the key, for the next report. */
static __always_inline void tr_throttle_report(struct tr_throttle_val *v, __u64 n, __u32 *idx)
{
	struct tr_summary *rec = bpf_ringbuf_reserve(&tr_selected, sizeof(*rec), 0);

	if (!rec) {
		__sync_fetch_and_add(&v->pending, n);
		tr_thr_kind_count(idx, TR_STAT_RB_DROPPED);
		return;
	}
	__builtin_memcpy(rec, &v->sum, sizeof(*rec));
	rec->count = n;
	rec->first = v->first;
	rec->task.ktime = v->last;
	bpf_ringbuf_submit(rec, tr_wakeup(&tr_selected));
	tr_thr_kind_count(idx, TR_STAT_EMITTED);
	tr_thr_count(idx, TR_RULE_SLOTS + TR_THR_REPORTED, n);
}

/* Who opens the window, for its report: read straight into map memory
 * (t->w holds each pointer on the way), with no stack, since the callers
 * have none to spare. */
static __always_inline void tr_throttle_who(struct tr_throttle_scratch *t, struct tr_task *dst)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid(), ug = bpf_get_current_uid_gid();

	struct task_struct *up;
	struct cred *cred;

	bpf_core_read(&t->w, sizeof(t->w), &task->group_leader);
	up = (struct task_struct *)t->w;
	bpf_core_read(&dst->start_boottime, sizeof(dst->start_boottime), &up->start_boottime);
	bpf_core_read(&t->w, sizeof(t->w), &task->real_parent);
	up = (struct task_struct *)t->w;
	bpf_core_read(&dst->ppid, sizeof(dst->ppid), &up->tgid);
	bpf_core_read(&t->w, sizeof(t->w), &task->cred);
	cred = (struct cred *)t->w;
	bpf_core_read(&dst->euid, sizeof(dst->euid), &cred->euid.val);
	bpf_core_read(&dst->egid, sizeof(dst->egid), &cred->egid.val);
	dst->auid = (__u32)-1; /* (u32)-1 also when the kernel has no loginuid */
	if (bpf_core_field_exists(task->loginuid))
		bpf_core_read(&dst->auid, sizeof(dst->auid), &task->loginuid.val);
	dst->cgroup_id = bpf_get_current_cgroup_id();
	dst->tgid = id >> 32;
	dst->tid = (__u32)id;
	dst->uid = (__u32)ug;
	dst->gid = ug >> 32;
	bpf_get_current_comm(dst->comm, sizeof(dst->comm));
	dst->flags = 0;
}

/* A window opens: report what the last one suppressed, then make the
 * template name this window's opener. */
static __always_inline void tr_throttle_open(struct tr_throttle_scratch *t,
					     struct tr_throttle_val *v)
{
	__u64 n = __sync_lock_test_and_set(&v->pending, 0);

	if (n)
		tr_throttle_report(v, n, &t->idx);
	tr_throttle_who(t, &v->sum.task);
	v->sum.hdr.kind = TR_KIND_POLICY_SUMMARY;
	v->sum.hdr.size = sizeof(v->sum);
	v->sum.verdict.policy_id = t->policy_id;
	v->sum.verdict.rule = t->rule;
	v->sum.verdict.action = t->action;
	v->sum.window = t->now;
	v->sum.per_ms = t->per_ms;
	v->sum.limit = t->limit;
	v->sum.kind = t->kind;
	v->sum.flags = t->flags;
}

/*
 * Whether the rule of the request in `t`, which selected the event to
 * post, keeps it back (1) or posts it (0). The window and its count are
 * one word, changed by compare and swap, so threads of one process on
 * several CPUs never post more than the limit; a word still contended
 * after a few tries posts (counted). A global function: the verifier
 * checks it once, not at every place a policy is evaluated.
 */
__noinline int tr_throttle_decide(void)
{
	struct tr_throttle_scratch *t =
		bpf_map_lookup_elem(&tr_throttle_scratch, (const void *)&tr_zero_key);

	if (!t)
		return 0;
	t->key.slot = t->slot;
	t->key.pad = 0;
	if (t->flags & TR_THR_BY_CGROUP)
		t->key.who = bpf_get_current_cgroup_id();
	else
		t->key.who = bpf_get_current_pid_tgid() >> 32;
	t->key.hash = (t->flags & TR_THR_AGGREGATE) ? tr_content_hash(t) : 0;
	struct tr_throttle_val *v = bpf_map_lookup_elem(&tr_throttle, &t->key);

	if (!v) {
		bpf_map_update_elem(&tr_throttle, &t->key, &t->zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&tr_throttle, &t->key);
		if (!v) {
			tr_thr_count(&t->idx, TR_RULE_SLOTS + TR_THR_UNTHROTTLED, 1);
			return 0;
		}
	}
	t->now = bpf_ktime_get_boot_ns();
	t->now_ms = t->now / 1000000;
	int i, open = 0;

	for (i = 0; i < TR_THR_TRIES; i++) {
		__u64 w = v->state;
		__u64 start = w >> TR_THR_COUNT_BITS, next;

		/* Another CPU may have opened the window a moment "later". */
		open = !w || (t->now_ms >= start && t->now_ms - start >= t->per_ms);
		if (open)
			next = t->now_ms << TR_THR_COUNT_BITS | 1;
		else if ((w & TR_THR_COUNT_MASK) < t->limit)
			next = w + 1;
		else
			goto suppress;
		if (__sync_val_compare_and_swap(&v->state, w, next) == w)
			break;
	}
	if (i == TR_THR_TRIES)
		tr_thr_count(&t->idx, TR_RULE_SLOTS + TR_THR_UNTHROTTLED, 1);
	else if (open)
		tr_throttle_open(t, v);
	return 0;
suppress:
	if (__sync_fetch_and_add(&v->pending, 1) == 0)
		v->first = t->now;
	v->last = t->now;
	tr_thr_count(&t->idx, t->slot, 1);
	tr_thr_count(&t->idx, TR_RULE_SLOTS + TR_THR_SUPPRESSED, 1);
	return 1;
}

/* 1 when `rule` (in `slot`, its throttle `thr`), which selected the
 * event `in` to post, keeps it back, else 0. Only the request is copied
 * here: tr_throttle_decide is checked by the verifier once per program,
 * not at every place a policy is evaluated. */
static __always_inline int tr_throttled(__u32 slot, __u32 kind, struct tr_policy_input *in,
					struct tr_rule *rule, struct tr_throttle_rule *thr)
{
	struct tr_throttle_scratch *t =
		bpf_map_lookup_elem(&tr_throttle_scratch, (const void *)&tr_zero_key);

	if (!t)
		return 0;
	t->slot = slot;
	t->kind = kind;
	t->policy_id = rule->policy_id;
	t->rule = rule->index;
	t->action = rule->action;
	t->limit = thr->limit;
	t->flags = thr->flags;
	t->per_ms = thr->per_ms;
	t->str = (__u64)in->str;
	t->len = in->str_len < TR_PATH_MAX ? in->str_len : TR_PATH_MAX;
	t->field = in->str_field;
	t->is_write = in->is_write;
	t->dport = in->dport;
	t->has_daddr = in->daddr != NULL;
	if (in->daddr)
		bpf_probe_read_kernel(t->daddr, 16, in->daddr);
	return tr_throttle_decide();
}

struct tr_flush {
	__u64 now_ms;
	__u32 all;
	__u32 idx;
};

static long tr_flush_one(struct bpf_map *map, struct tr_throttle_key *k,
			 struct tr_throttle_val *v, struct tr_flush *f)
{
	__u64 start = v->state >> TR_THR_COUNT_BITS;

	if (!v->pending)
		return 0;
	if (!f->all && f->now_ms >= start && f->now_ms - start < v->sum.per_ms)
		return 0; /* the window is still open: its count may grow */
	__u64 n = __sync_lock_test_and_set(&v->pending, 0);

	if (n)
		tr_throttle_report(v, n, &f->idx);
	return 0;
}

/* Report the counts of windows that ended (all of them when `all`): run
 * by the daemon (BPF_PROG_TEST_RUN), not attached anywhere. */
SEC("syscall")
int tr_throttle_flush(struct tr_flush_args *args)
{
	struct tr_flush f = { .now_ms = bpf_ktime_get_boot_ns() / 1000000, .all = args->all };

	bpf_for_each_map_elem(&tr_throttle, tr_flush_one, &f, 0);
	return 0;
}

#endif /* TRACER_THROTTLE_BPF_H */
