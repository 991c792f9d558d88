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
 * everything lives in map memory, since the programs that evaluate
 * policies have no stack left to spare. */
struct tr_throttle_scratch {
	struct tr_throttle_val zero; /* a zeroed value to insert from (never written) */
	struct tr_throttle_key key;
	__u64 str; /* address of the string hashed */
	__u64 h;
	__u64 w;   /* the word read */
	__u64 now;
	__u32 len;
	__u32 idx; /* a counter's index */
};

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

static long tr_hash_step(__u32 i, void *arg)
{
	struct tr_throttle_scratch *t = *(struct tr_throttle_scratch **)arg;
	__u32 off = i * 8;

	if (off >= t->len)
		return 1;
	/* Whole words (the strings live in larger buffers), the bytes past
	 * the end masked off. */
	bpf_probe_read_kernel(&t->w, 8, (const void *)(t->str + off));
	if (t->len - off < 8)
		t->w &= (1ULL << ((t->len - off) * 8)) - 1;
	t->h = tr_mix(t->h, t->w);
	return 0;
}

/* What an event is about, for aggregate: its path (or binary, or socket
 * path), its peer and whether it writes. */
static __always_inline __u64 tr_content_hash(struct tr_throttle_scratch **tp, __u32 kind,
					     struct tr_policy_input *in)
{
	struct tr_throttle_scratch *t = *tp;

	t->h = tr_mix(0xcbf29ce484222325ULL, kind << 8 | in->str_field << 1 | in->is_write);
	if (in->daddr) {
		bpf_probe_read_kernel(&t->w, 8, in->daddr);
		t->h = tr_mix(t->h, t->w);
		bpf_probe_read_kernel(&t->w, 8, in->daddr + 8);
		t->h = tr_mix(tr_mix(t->h, t->w), in->dport);
	}
	if (in->str) {
		t->str = (__u64)in->str;
		t->len = in->str_len < TR_PATH_MAX ? in->str_len : TR_PATH_MAX;
		bpf_loop(TR_PATH_MAX / 8, tr_hash_step, tp, 0);
	}
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

/* Who opens the window, for its report: read straight into the map
 * value, with no stack (the callers have none to spare). */
static __always_inline void tr_throttle_who(struct tr_task *t)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 id = bpf_get_current_pid_tgid(), ug = bpf_get_current_uid_gid();

	t->start_boottime = task->group_leader->start_boottime;
	t->cgroup_id = bpf_get_current_cgroup_id();
	t->tgid = id >> 32;
	t->tid = (__u32)id;
	t->ppid = task->real_parent->tgid;
	t->uid = (__u32)ug;
	t->gid = ug >> 32;
	t->euid = task->cred->euid.val;
	t->egid = task->cred->egid.val;
	t->auid = bpf_core_field_exists(task->loginuid) ? task->loginuid.val : (__u32)-1;
	bpf_get_current_comm(t->comm, sizeof(t->comm));
	t->flags = 0;
}

/* A window opens: report what the last one suppressed, then make the
 * template name this window's opener. */
static __always_inline void tr_throttle_open(struct tr_throttle_scratch *t,
					     struct tr_throttle_val *v, struct tr_throttle_rule *r,
					     struct tr_rule *rule, __u32 kind)
{
	__u64 n = __sync_lock_test_and_set(&v->pending, 0);

	if (n)
		tr_throttle_report(v, n, &t->idx);
	tr_throttle_who(&v->sum.task);
	v->sum.hdr.kind = TR_KIND_POLICY_SUMMARY;
	v->sum.hdr.size = sizeof(v->sum);
	v->sum.verdict.policy_id = rule->policy_id;
	v->sum.verdict.rule = rule->index;
	v->sum.verdict.action = rule->action;
	v->sum.window = t->now;
	v->sum.per_ms = r->per_ms;
	v->sum.limit = r->limit;
	v->sum.kind = kind;
	v->sum.flags = r->flags;
}

/*
 * Whether `rule` (in `slot`, its throttle `r`), which selected the event
 * to post, keeps it back. The window and its count are one word, changed
 * by compare and swap, so threads of one process on several CPUs never
 * post more than the limit; a word still contended after a few tries
 * posts (counted). `tp` points at the scratch's address on the caller's
 * stack (bpf_loop's context).
 */
static __always_inline bool tr_throttled(struct tr_throttle_scratch **tp, __u32 slot, __u32 kind,
					 struct tr_policy_input *in, struct tr_rule *rule,
					 struct tr_throttle_rule *r)
{
	struct tr_throttle_scratch *t = *tp;

	t->key.slot = slot;
	t->key.pad = 0;
	if (r->flags & TR_THR_BY_CGROUP)
		t->key.who = bpf_get_current_cgroup_id();
	else
		t->key.who = bpf_get_current_pid_tgid() >> 32;
	t->key.hash = (r->flags & TR_THR_AGGREGATE) ? tr_content_hash(tp, kind, in) : 0;
	struct tr_throttle_val *v = bpf_map_lookup_elem(&tr_throttle, &t->key);

	if (!v) {
		bpf_map_update_elem(&tr_throttle, &t->key, &t->zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&tr_throttle, &t->key);
		if (!v) {
			tr_thr_count(&t->idx, TR_RULE_SLOTS + TR_THR_UNTHROTTLED, 1);
			return false;
		}
	}
	t->now = bpf_ktime_get_boot_ns();
	__u64 now_ms = t->now / 1000000;

	for (int i = 0; i < TR_THR_TRIES; i++) {
		__u64 w = v->state;
		__u64 start = w >> TR_THR_COUNT_BITS, next;
		/* Another CPU may have opened the window a moment "later". */
		bool open = !w || (now_ms >= start && now_ms - start >= r->per_ms);

		if (open)
			next = now_ms << TR_THR_COUNT_BITS | 1;
		else if ((w & TR_THR_COUNT_MASK) < r->limit)
			next = w + 1;
		else
			goto suppress;
		if (__sync_val_compare_and_swap(&v->state, w, next) == w) {
			if (open)
				tr_throttle_open(t, v, r, rule, kind);
			return false;
		}
	}
	tr_thr_count(&t->idx, TR_RULE_SLOTS + TR_THR_UNTHROTTLED, 1);
	return false;
suppress:
	if (__sync_fetch_and_add(&v->pending, 1) == 0)
		v->first = t->now;
	v->last = t->now;
	tr_thr_count(&t->idx, slot, 1);
	tr_thr_count(&t->idx, TR_RULE_SLOTS + TR_THR_SUPPRESSED, 1);
	return true;
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
