/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * In-kernel policy evaluation. policy/ compiles the YAML rules of each
 * event kind into these maps; a lookup per field yields bit masks of the
 * rules that the value satisfies, and the lowest set bit of their AND is
 * the first matching rule. Exact strings are a hash lookup, prefixes and
 * CIDRs an LPM-trie lookup (each entry also carries the bits of every
 * shorter prefix of it, so the longest match is the union), suffixes an
 * LPM lookup of the reversed string.
 */
#ifndef TRACER_POLICY_BPF_H
#define TRACER_POLICY_BPF_H

#include "common.bpf.h"
#include "workload.bpf.h"

#define TR_CFG_SLOTS (TR_GENS * TR_PK_MAX)
#define TR_NO_GLOB 0xFFFFFFFF
#define TR_RULE_SLOTS (TR_GENS * TR_PK_MAX * TR_MAX_RULES)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tr_policy_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TR_CFG_SLOTS);
	__type(key, __u32);
	__type(value, struct tr_kind_cfg);
} tr_policy_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TR_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct tr_rule);
} tr_policy_rules SEC(".maps");

/* Per rule slot: events the rule selected (and acted on). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TR_RULE_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} tr_policy_hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tr_str_key);
	__type(value, struct tr_hits);
} tr_policy_exact SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tr_lpm_str_key);
	__type(value, struct tr_hits);
} tr_policy_prefix SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tr_lpm_str_key);
	__type(value, struct tr_hits);
} tr_policy_suffix SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tr_lpm_addr_key);
	__type(value, struct tr_hits);
} tr_policy_cidr SEC(".maps");

/* Index (gen * TR_PK_MAX + kind) * TR_GLOBS + n. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TR_GENS * TR_PK_MAX * TR_GLOBS);
	__type(key, __u32);
	__type(value, struct tr_glob);
} tr_policy_globs SEC(".maps");

/* Index gen * 65536 + port; connect is the only kind with ports. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TR_GENS * 65536);
	__type(key, __u32);
	__type(value, struct tr_hits);
} tr_policy_port SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct tr_uid_key);
	__type(value, struct tr_hits);
} tr_policy_uid SEC(".maps");

/* Index gen * TR_SIEVE_SLOTS + slot: the rules a sieve key admits. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TR_GENS * TR_SIEVE_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} tr_path_sieve SEC(".maps");

/* The executable of every live process (first TR_POLICY_STR bytes), for
 * binary selectors on file and connect events: set at exec, inherited at
 * fork, dropped at exit; seeded from /proc by the daemon at start-up. */
struct tr_binary {
	__u32 len;
	char s[256]; /* TR_POLICY_STR used; 256 so a `len & 255` read provably fits */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct tr_binary);
} tr_proc_binary SEC(".maps");

/*
 * Glob matching state (policy/glob.py has the same algorithm). It lives in
 * map memory (tr_policy_scratch), not on the stack: the verifier treats
 * values loaded from a map as unknown, so the bpf_loop callback converges
 * after one pass instead of being re-verified for every counter value.
 */
struct tr_globber {
	__u64 path;            /* the path's address (a pointer kept in a map is a scalar) */
	__u64 cand;            /* rules whose glob heads the path starts with */
	__u64 pos, neg;        /* rules whose globs matched */
	__u32 plen, slot, idx, nglobs;
	__u32 cur;             /* the slot of the glob being matched, or TR_NO_GLOB */
	__u32 pi, gi, steps;
	__s32 star_g, star_p, dstar_g, dstar_p;
};

/* The last TR_POLICY_STR bytes of an executable path longer than that,
 * for suffix selectors: few processes have one, so they get a map of
 * their own. Set at exec, copied at fork, seeded from /proc; an entry
 * of an exited tgid stays until LRU eviction or the tgid's next long
 * exec, and is read only while tr_proc_binary says the path is long. */
struct tr_binary_tail {
	char s[256]; /* TR_POLICY_STR used */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct tr_binary_tail);
} tr_proc_binary_tail SEC(".maps");

/* Where the last min(len, TR_POLICY_STR) bytes of tgid's binary are;
 * NULL when they are not known. */
static __always_inline const char *tr_binary_tail_of(struct tr_binary *b, __u32 tgid)
{
	if (b->len <= TR_POLICY_STR)
		return b->s;
	struct tr_binary_tail *t = bpf_map_lookup_elem(&tr_proc_binary_tail, &tgid);

	return t ? t->s : NULL;
}

struct tr_policy_input {
	const char *str;  /* binary or path */
	__u32 str_len;
	__u32 str_field;  /* TR_F_BINARY or TR_F_PATH */
	const char *binary; /* the process's executable, for file/connect */
	__u32 binary_len;
	/* The last min(binary_len, TR_POLICY_STR) bytes of it; NULL when not
	 * known (then no suffix value matches the binary) */
	const char *binary_tail;
	__u32 uid;
	const __u8 *daddr; /* 16 bytes, IPv4-mapped; NULL when not an address */
	__u32 dport;
	bool is_write; /* file_open: O_WRONLY, O_RDWR, O_CREAT or O_TRUNC */
};

#include "throttle.bpf.h"

/* Inputs of one evaluation, and the keys it builds (too big for the stack). */
struct tr_policy_scratch {
	struct tr_str_key exact;
	struct tr_lpm_str_key lpm;
	struct tr_lpm_addr_key addr;
	char tail[TR_POLICY_STR]; /* last bytes of a string, for suffixes */
	__u32 tail_len;
	struct tr_globber glob;
	/* tr_policy_decide's request and its verdict. */
	struct tr_policy_input in;
	struct tr_verdict out;
	__u32 cfg_slot;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tr_policy_scratch);
} tr_policy_heap SEC(".maps");

static __always_inline __u32 tr_sel(__u32 gen, __u32 kind, __u32 field)
{
	return gen << 16 | kind << 8 | field;
}

static __always_inline void tr_or(struct tr_hits *acc, struct tr_hits *h)
{
	if (h) {
		acc->pos |= h->pos;
		acc->neg |= h->neg;
	}
}

static long tr_reverse_step(__u32 i, void *arg)
{
	struct tr_policy_scratch *s = *(struct tr_policy_scratch **)arg;
	__u32 n = s->tail_len;

	if (i >= n || n > TR_POLICY_STR)
		return 1;
	__u32 from = n - 1 - i;

	/* Masks, not just the checks above: clang may index with a copy of
	 * i made before the check. Both stay inside the scratch value. */
	s->lpm.s[i & 0xff] = s->tail[from & 0xff];
	return 0;
}

/* Bit n of a 256-bit set. */
static __always_inline bool tr_bit(const __u64 *set, __u32 n)
{
	__u32 w = n >> 6;

	/* Opaque to clang, so the mask below is what bounds the index: it
	 * would otherwise fold it into a copy of n from before the caller's
	 * range check, which the verifier refuses. */
	barrier_var(w);
	return (set[w & 3] >> (n & 63)) & 1;
}

/* Hits of one string value: exact, prefix, and (if any rule has one) suffix.
 * Rule strings are at most TR_POLICY_STR - 1 bytes, so a longer value can
 * only match by prefix (its head) or suffix (its tail). `str` holds at
 * least the first min(len, TR_POLICY_STR) bytes and `tail` the last that
 * many: a value stored cut (tr_proc_binary) has them apart. */
static __always_inline void tr_str_hits(struct tr_policy_scratch *s, struct tr_kind_cfg *cfg,
					__u32 gen, __u32 kind, __u32 field,
					const char *str, __u32 len, const char *tail,
					struct tr_hits *acc)
{
	__u32 head = len < TR_POLICY_STR ? len : TR_POLICY_STR;
	__u32 sel = tr_sel(gen, kind, field);

	__builtin_memset(&s->exact, 0, sizeof(s->exact));
	s->exact.sel = sel;
	bpf_probe_read_kernel(s->exact.s, tr_bound(head, 255), str);
	if (len < TR_POLICY_STR && tr_bit(cfg->exact_lens[field & 3], len))
		tr_or(acc, bpf_map_lookup_elem(&tr_policy_exact, &s->exact));

	__builtin_memcpy(s->lpm.s, s->exact.s, TR_POLICY_STR);
	s->lpm.sel = sel;
	s->lpm.prefixlen = 32 + 8 * head;
	tr_or(acc, bpf_map_lookup_elem(&tr_policy_prefix, &s->lpm));

	/* A value longer than the head is tested whatever its last byte. */
	if (tail && (cfg->suffix_fields & (1 << field)) &&
	    (len > head || (len && tr_bit(cfg->suffix_ends[field & 3],
					  (__u8)s->exact.s[(len - 1) & 0xff])))) {
		struct tr_policy_scratch *sp = s;

		s->tail_len = head;
		bpf_probe_read_kernel(s->tail, tr_bound(head, 255), tail);
		bpf_loop(TR_POLICY_STR, tr_reverse_step, &sp, 0);
		tr_or(acc, bpf_map_lookup_elem(&tr_policy_suffix, &s->lpm));
	}
}

/* One step of the glob state machine: it runs every candidate glob in
 * turn, one step per bpf_loop iteration, with the last `*` (within a
 * component) and the last `**` (across components) as backtrack points. */

static __always_inline char tr_gch(struct tr_glob *g, __u32 i)
{
	return i < g->len ? g->pat[i & (TR_GLOB_LEN - 1)] : 0;
}

/* A byte of the path, 0 past its end. */
static __always_inline char tr_pch(struct tr_globber *m, __u32 i)
{
	char c = 0;

	if (i < m->plen)
		bpf_probe_read_kernel(&c, 1, (const char *)m->path + i);
	return c;
}

static long tr_glob_step(__u32 i, void *arg)
{
	struct tr_globber *m = *(struct tr_globber **)arg;
	__u32 slot = m->cur;

	if (slot == TR_NO_GLOB) {
		if (m->idx >= m->nglobs || m->idx >= TR_GLOBS)
			return 1;
		slot = m->slot + m->idx;
		m->idx++;
		struct tr_glob *next = bpf_map_lookup_elem(&tr_policy_globs, &slot);

		if (next && (m->cand & next->rule)) {
			m->cur = slot;
			m->pi = m->gi = m->steps = 0;
			m->star_g = m->star_p = m->dstar_g = m->dstar_p = -1;
		}
		return 0;
	}
	struct tr_glob *g = bpf_map_lookup_elem(&tr_policy_globs, &slot);

	if (!g || ++m->steps > TR_GLOB_STEPS) {
		m->cur = TR_NO_GLOB; /* too long to decide: no match (policy/glob.py agrees) */
		return 0;
	}
	__u32 pi = m->pi, gi = m->gi, plen = m->plen, glen = g->len;
	char gc = tr_gch(g, gi);
	char pc = tr_pch(m, pi);

	if (gc == '*' && tr_gch(g, gi + 1) == '*') {
		gi += 2;
		if (tr_gch(g, gi) == '/')
			gi++; /* `**` followed by a slash may match nothing, the slash included */
		if (gi >= glen)
			goto matched; /* a trailing ** matches whatever is left */
		m->gi = gi;
		m->dstar_g = gi;
		m->dstar_p = pi;
		m->star_g = -1;
		return 0;
	}
	if (gc == '*') {
		m->gi = gi + 1;
		m->star_g = gi + 1;
		m->star_p = pi;
		return 0;
	}
	if (pi < plen && gi < glen && (gc == pc || (gc == '?' && pc != '/'))) {
		m->pi = pi + 1;
		m->gi = gi + 1;
		return 0;
	}
	if (pi == plen && gi == glen)
		goto matched;
	if (m->star_g >= 0 && m->star_p < (__s32)plen && tr_pch(m, m->star_p) != '/') {
		m->star_p++;
		m->pi = m->star_p;
		m->gi = m->star_g;
		return 0;
	}
	if (m->dstar_g >= 0 && m->dstar_p < (__s32)plen) {
		/* To the next component, a byte a step: ** takes whole components. */
		m->dstar_p++;
		if (tr_pch(m, m->dstar_p - 1) == '/') {
			m->pi = m->dstar_p;
			m->gi = m->dstar_g;
			m->star_g = -1;
		}
		return 0;
	}
	m->cur = TR_NO_GLOB; /* no match */
	return 0;
matched:
	if (g->neg)
		m->neg |= g->rule;
	else
		m->pos |= g->rule;
	m->cur = TR_NO_GLOB;
	return 0;
}

/* Hits of the kind's globs on a path: only the globs of rules still in
 * `mask` whose literal head the path starts with (one LPM lookup) run.
 * s->exact holds the path's head, as tr_str_hits left it. */
static __always_inline void tr_glob_hits(struct tr_policy_scratch *s, struct tr_kind_cfg *cfg,
					 __u32 gen, __u32 kind, const char *path, __u32 len,
					 __u64 mask, struct tr_hits *acc)
{
	__u32 head = len < TR_POLICY_STR ? len : TR_POLICY_STR;
	struct tr_hits cand = {};

	/* The path's head (a suffix lookup may have reversed lpm.s since). */
	__builtin_memcpy(s->lpm.s, s->exact.s, TR_POLICY_STR);
	s->lpm.sel = tr_sel(gen, kind, TR_F_GLOB_HEAD);
	s->lpm.prefixlen = 32 + 8 * head;
	tr_or(&cand, bpf_map_lookup_elem(&tr_policy_prefix, &s->lpm));
	if (!(cand.pos & mask))
		return;
	struct tr_globber *m = &s->glob;

	m->path = (__u64)path;
	m->cur = TR_NO_GLOB;
	m->cand = cand.pos & mask;
	m->pos = m->neg = 0;
	m->plen = len < TR_PATH_MAX ? len : TR_PATH_MAX;
	m->slot = (gen * TR_PK_MAX + kind) * TR_GLOBS;
	m->idx = 0;
	m->nglobs = cfg->nglobs;
	bpf_loop(TR_GLOBS * (TR_GLOB_STEPS + 2), tr_glob_step, &m, 0);
	acc->pos |= m->pos;
	acc->neg |= m->neg;
}

/* Fold one field's hits into the running rule mask. */
static __always_inline __u64 tr_apply(__u64 mask, struct tr_kind_cfg *cfg, __u32 field,
				      struct tr_hits *h)
{
	return mask & (cfg->free[field] | h->pos) & ~h->neg;
}

/* The event has no value for the field: rules that constrain it fail. */
static __always_inline __u64 tr_absent(__u64 mask, struct tr_kind_cfg *cfg, __u32 field)
{
	return mask & ~cfg->constrained[field];
}

/* Lowest set bit's index: rules are numbered in priority order. */
static __always_inline __u32 tr_first_bit(__u64 m)
{
	__u32 n = 0;

	m &= -m;
	if (m & 0xFFFFFFFF00000000ULL) n += 32;
	if (m & 0xFFFF0000FFFF0000ULL) n += 16;
	if (m & 0xFF00FF00FF00FF00ULL) n += 8;
	if (m & 0xF0F0F0F0F0F0F0F0ULL) n += 4;
	if (m & 0xCCCCCCCCCCCCCCCCULL) n += 2;
	if (m & 0xAAAAAAAAAAAAAAAAULL) n += 1;
	return n;
}

/* True when some rule exists for the kind (the cheap first test). */
static __always_inline struct tr_kind_cfg *tr_policy_cfg_of(__u32 kind, __u32 *gen_out)
{
	__u32 zero = 0;
	__u32 *gen = bpf_map_lookup_elem(&tr_policy_gen, &zero);

	if (!gen)
		return NULL;
	__u32 g = *gen & 1;
	__u32 slot = g * TR_PK_MAX + kind;
	struct tr_kind_cfg *cfg = bpf_map_lookup_elem(&tr_policy_cfg, &slot);

	if (!cfg || !cfg->rules)
		return NULL;
	*gen_out = g;
	return cfg;
}

/* The rules an event can match before any field is looked at: a read
 * cannot match a rule for writes only. */
static __always_inline __u64 tr_rules_for(struct tr_kind_cfg *cfg, bool is_write)
{
	return is_write ? cfg->rules : cfg->rules & ~cfg->write_only;
}

static __always_inline __u64 tr_sieve_mix(__u64 a, __u64 b)
{
	__u64 x = (a ^ b) * TR_SIEVE_K;

	return x ^ (x >> 31);
}

static __always_inline __u64 tr_sieve_at(__u32 gen, __u64 key)
{
	__u32 slot = gen * TR_SIEVE_SLOTS + ((key >> 40) & (TR_SIEVE_SLOTS - 1));
	__u64 *rules = bpf_map_lookup_elem(&tr_path_sieve, &slot);

	return rules ? *rules : 0;
}

/* The first min(len, TR_SIEVE_NAME) bytes of a name into w->words, zero
 * after them: whole words while they fit, then byte by byte, so that no
 * load reaches past the name. */
static __always_inline void tr_sieve_load(struct tr_walk *w, const unsigned char *name, __u32 len)
{
	__u32 n = len < TR_SIEVE_NAME ? len : TR_SIEVE_NAME;

	if (!tr_direct) {
		w->words[0] = w->words[1] = w->words[2] = w->words[3] = 0;
		bpf_probe_read_kernel(w->words, tr_bound(n, 2 * TR_SIEVE_NAME - 1), name);
		return;
	}
	const char *b = TR_BYTES(name);

#pragma unroll
	for (__u32 i = 0; i < TR_SIEVE_NAME / 8; i++) {
		__u64 x = 0;

		if (8 * i + 8 <= n) {
			x = *(const __u64 *)(b + 8 * i);
		} else {
#pragma unroll
			for (__u32 j = 0; j < 7; j++)
				if (8 * i + j < n)
					x |= (__u64)(__u8)b[8 * i + j] << (8 * j);
		}
		w->words[i] = x;
	}
}

/* A name's hash: its length and first TR_SIEVE_NAME bytes, which stay in
 * w->words (zero past the name's end). */
static __always_inline __u64 tr_sieve_name(struct tr_walk *w, const unsigned char *name,
					   __u32 len)
{
	__u64 h = len;

	tr_sieve_load(w, name, len);
	h = tr_sieve_mix(h, w->words[0]);
	h = tr_sieve_mix(h, w->words[1]);
	h = tr_sieve_mix(h, w->words[2]);
	return tr_sieve_mix(h, w->words[3]);
}

/*
 * The rules whose positive path values (exact, prefix, suffix, a glob's
 * literal head) can match the collected path, a complete one of at most
 * TR_PATH_DEPTH components: following the chain of its components from
 * the root while some value still has them all, then its leaf. A value
 * that ends inside a component is admitted by that component's first
 * byte, a suffix within the leaf by the leaf's last two bytes; a value
 * longer than the sieve follows is admitted when its first components
 * are the path's.
 */
static __always_inline __u64 tr_sieve(struct tr_walk *w, __u32 gen)
{
	__u32 n = w->n;
	__u32 len = w->name_len[0] & TR_NAME_MAX;
	__u64 h = tr_sieve_name(w, w->name[0], len);
	__u8 b[2] = {};

	/* The leaf first: a suffix value is a whole leaf after a '/', or the
	 * end of one. */
	__u64 admit = tr_sieve_at(gen, tr_sieve_mix(TR_SIEVE_LEAF, h));

	if (len > TR_SIEVE_NAME && tr_direct) {
		const char *end = TR_BYTES(w->name[0] + len - 2);

		b[0] = end[0];
		b[1] = end[1];
	} else if (len > TR_SIEVE_NAME) {
		bpf_probe_read_kernel(b, 2, w->name[0] + len - 2);
	}
	else if (len >= 2)
		__builtin_memcpy(b, (__u8 *)w->words + ((len - 2) & (TR_SIEVE_NAME - 1)), 2);
	else
		b[1] = w->words[0] & 0xFF;
	admit |= tr_sieve_at(gen, tr_sieve_mix(TR_SIEVE_LEAF, TR_SIEVE_PART | b[1]));
	if (len >= 2)
		admit |= tr_sieve_at(gen, tr_sieve_mix(TR_SIEVE_LEAF,
						       TR_SIEVE_END2 | b[0] << 8 | b[1]));
	__u64 alive = ~0ULL;

	h = TR_SIEVE_ROOT;
#pragma unroll
	for (__u32 k = 0; k < TR_SIEVE_DEPTH; k++) {
		if (k >= n)
			return admit; /* the whole path: longer values cannot match */
		__u32 c = (n - 1 - k) & (TR_PATH_DEPTH - 1);
		__u32 clen = w->name_len[c] & TR_NAME_MAX;
		__u64 name = tr_sieve_name(w, w->name[c], clen);

		admit |= tr_sieve_at(gen, tr_sieve_mix(h, TR_SIEVE_ALL)) |
			 tr_sieve_at(gen, tr_sieve_mix(h, TR_SIEVE_PART | (w->words[0] & 0xFF)));
		h = tr_sieve_mix(h, name);
		alive &= tr_sieve_at(gen, h);
		if (!alive)
			return admit;
	}
	return n > TR_SIEVE_DEPTH ? admit | alive : admit;
}

/* State of one walk up the current task's ancestors (bpf_loop callback). */
struct tr_lineage {
	struct tr_policy_scratch *s;
	struct tr_kind_cfg *cfg;
	struct task_struct *task;
	struct tr_hits hits;
	__u32 gen;
	__u32 kind;
};

/* One ancestor: exact and prefix hits of its binary (ancestor_binary takes
 * no suffix values: one walk step stays two lookups, and needs no nested
 * loop). */
static long tr_lineage_step(__u32 i, void *arg)
{
	struct tr_lineage *l = arg;
	struct task_struct *cur = l->task;
	struct task_struct *up = TR_RD(struct task_struct, cur, real_parent);
	__u32 tgid = TR_RD(struct task_struct, up, tgid);
	struct tr_policy_scratch *s = l->s;

	if (!up || up == cur || tgid == 0)
		return 1;
	l->task = up;
	struct tr_binary *b = bpf_map_lookup_elem(&tr_proc_binary, &tgid);

	if (!b)
		return 0;
	__u32 len = b->len, head = len < TR_POLICY_STR ? len : TR_POLICY_STR;

	__builtin_memset(&s->exact, 0, sizeof(s->exact));
	s->exact.sel = tr_sel(l->gen, l->kind, TR_F_ANCESTOR_BINARY);
	bpf_probe_read_kernel(s->exact.s, tr_bound(head, 255), b->s);
	if (len < TR_POLICY_STR && tr_bit(l->cfg->exact_lens[TR_F_ANCESTOR_BINARY & 3], len))
		tr_or(&l->hits, bpf_map_lookup_elem(&tr_policy_exact, &s->exact));
	__builtin_memcpy(s->lpm.s, s->exact.s, TR_POLICY_STR);
	s->lpm.sel = s->exact.sel;
	s->lpm.prefixlen = 32 + 8 * head;
	tr_or(&l->hits, bpf_map_lookup_elem(&tr_policy_prefix, &s->lpm));
	return 0;
}

/*
 * Who the process descends from, and its effective uid: the parent's
 * executable (tr_proc_binary by the parent's tgid), the executables of the
 * TR_ANCESTOR_DEPTH nearest ancestors, the euid. Evaluated last, on what
 * the cheaper fields left: most events never get here. For an exec, the
 * parent is the process that forked the one now executing.
 */
static __always_inline __u64 tr_eval_lineage(struct tr_policy_scratch *s,
					     struct tr_kind_cfg *cfg, __u32 gen, __u32 kind,
					     __u64 mask)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct tr_hits h;

	if (mask && (cfg->fields & (1 << TR_F_EUID))) {
		const struct cred *cred = TR_RD(struct task_struct, task, cred);
		struct tr_uid_key k = {
			.sel = tr_sel(gen, kind, TR_F_EUID),
			.uid = TR_RD(struct cred, cred, euid.val),
		};

		h.pos = h.neg = 0;
		tr_or(&h, bpf_map_lookup_elem(&tr_policy_uid, &k));
		mask = tr_apply(mask, cfg, TR_F_EUID, &h);
	}
	if (mask && (cfg->fields & (1 << TR_F_PARENT_BINARY))) {
		struct task_struct *parent = TR_RD(struct task_struct, task, real_parent);
		__u32 ptgid = TR_RD(struct task_struct, parent, tgid);
		struct tr_binary *b = bpf_map_lookup_elem(&tr_proc_binary, &ptgid);

		if (b) {
			h.pos = h.neg = 0;
			tr_str_hits(s, cfg, gen, kind, TR_F_PARENT_BINARY, b->s, b->len,
				    tr_binary_tail_of(b, ptgid), &h);
			mask = tr_apply(mask, cfg, TR_F_PARENT_BINARY, &h);
		} else {
			mask = tr_absent(mask, cfg, TR_F_PARENT_BINARY);
		}
	}
	if (mask && (cfg->fields & (1 << TR_F_ANCESTOR_BINARY))) {
		struct tr_lineage l = { .s = s, .cfg = cfg, .task = task, .gen = gen, .kind = kind };

		bpf_loop(TR_ANCESTOR_DEPTH, tr_lineage_step, &l, 0);
		mask = tr_apply(mask, cfg, TR_F_ANCESTOR_BINARY, &l.hits);
	}
	return mask;
}

/* The rules of `mask` that the acting process's binary and uid leave in. */
static __always_inline __u64 tr_eval_who(struct tr_policy_scratch *s, struct tr_kind_cfg *cfg,
					 __u32 gen, __u32 kind, struct tr_policy_input *in,
					 __u64 mask)
{
	struct tr_hits h;

	/* First: two lookups by the cgroup id, cheaper than any string's. */
	if (mask && (cfg->fields & (1 << TR_F_WORKLOAD)))
		mask = tr_eval_workload(gen, kind, mask);
	if (mask && (cfg->fields & (1 << TR_F_BINARY))) {
		/* exec matches its own new binary; other kinds the process's */
		bool own = in->str_field == TR_F_BINARY;
		const char *bin = own ? in->str : in->binary;
		__u32 bin_len = own ? in->str_len : in->binary_len;

		if (bin) {
			__u32 head = bin_len < TR_POLICY_STR ? bin_len : TR_POLICY_STR;
			const char *tail = own ? bin + (bin_len - head) : in->binary_tail;

			h.pos = h.neg = 0;
			tr_str_hits(s, cfg, gen, kind, TR_F_BINARY, bin, bin_len, tail, &h);
			mask = tr_apply(mask, cfg, TR_F_BINARY, &h);
		} else {
			mask = tr_absent(mask, cfg, TR_F_BINARY);
		}
	}
	if (mask && (cfg->fields & (1 << TR_F_UID))) {
		struct tr_uid_key k = { .sel = tr_sel(gen, kind, TR_F_UID), .uid = in->uid };

		h.pos = h.neg = 0;
		tr_or(&h, bpf_map_lookup_elem(&tr_policy_uid, &k));
		mask = tr_apply(mask, cfg, TR_F_UID, &h);
	}
	if (mask && (cfg->fields & ((1 << TR_F_EUID) | (1 << TR_F_PARENT_BINARY) |
				    (1 << TR_F_ANCESTOR_BINARY))))
		mask = tr_eval_lineage(s, cfg, gen, kind, mask);
	return mask;
}

/* The record kind whose counters a policy kind's evaluations go to. */
static __always_inline __u32 tr_record_kind(__u32 kind)
{
	return kind == TR_PK_EXEC	       ? TR_KIND_EXEC
	       : kind == TR_PK_FILE	       ? TR_KIND_FILE_OPEN
	       : kind == TR_PK_CONNECT	       ? TR_KIND_CONNECT
	       : kind == TR_PK_PRIVILEGE_CHANGE ? TR_KIND_PRIVILEGE_CHANGE
					       : TR_KIND_FILE_ATTR;
}

/*
 * Evaluate kind's rules on the request in the scratch (tr_policy_eval
 * fills it): sets its verdict and counts the hit. A global function: the
 * verifier checks it once per program, with kind and gen unknown, rather
 * than at every state of every program that reaches an evaluation, which
 * had made the policy programs' checks take seconds. Its scratch is found
 * here by a key in read-only data, since before 6.2 a map helper takes
 * no key a global function was passed.
 */
__noinline int tr_policy_decide(__u64 kind, __u64 gen)
{
	/* Bounded before anything else, so that every copy the verifier
	 * sees is of the bounded values: 6.1 forgets what it learns of a
	 * scalar spilled before its check. The barriers keep clang from
	 * dropping later masks as redundant with this one. 64-bit: a 32-bit
	 * argument is zero-extended anew, unbounded, at each use. */
	if (kind >= TR_PK_MAX)
		return 0;
	gen &= 1;
	barrier_var(kind);
	barrier_var(gen);
	struct tr_policy_scratch *s =
		bpf_map_lookup_elem(&tr_policy_heap, (const void *)&tr_zero_key);

	if (!s)
		return 0;
	s->out.action = TR_ACT_NONE;
	s->cfg_slot = gen * TR_PK_MAX + kind;
	struct tr_kind_cfg *cfg = bpf_map_lookup_elem(&tr_policy_cfg, &s->cfg_slot);
	struct tr_policy_input *in = &s->in;

	if (!cfg)
		return 0;
	__u64 mask = tr_rules_for(cfg, in->is_write);
	struct tr_hits h;

	tr_count(tr_record_kind(kind), TR_STAT_EVALUATED);
	if (cfg->fields & (1 << TR_F_PATH)) {
		if (in->str && in->str_field == TR_F_PATH) {
			h.pos = h.neg = 0;
			tr_str_hits(s, cfg, gen, kind, TR_F_PATH, in->str, in->str_len,
				    in->str + (in->str_len - (in->str_len < TR_POLICY_STR
							       ? in->str_len : TR_POLICY_STR)),
				    &h);
			if (kind == TR_PK_FILE && cfg->nglobs && (mask & cfg->glob_rules))
				tr_glob_hits(s, cfg, gen, kind, in->str, in->str_len, mask, &h);
			mask = tr_apply(mask, cfg, TR_F_PATH, &h);
		} else {
			mask = tr_absent(mask, cfg, TR_F_PATH);
		}
	}
	mask = tr_eval_who(s, cfg, gen, kind, in, mask);
	if (!in->daddr)
		mask = tr_absent(tr_absent(mask, cfg, TR_F_DADDR), cfg, TR_F_DPORT);
	if (mask && in->daddr && (cfg->fields & (1 << TR_F_DADDR))) {
		s->addr.prefixlen = 32 + 128;
		s->addr.sel = tr_sel(gen, kind, TR_F_DADDR);
		bpf_probe_read_kernel(s->addr.addr, 16, in->daddr);
		h.pos = h.neg = 0;
		tr_or(&h, bpf_map_lookup_elem(&tr_policy_cidr, &s->addr));
		mask = tr_apply(mask, cfg, TR_F_DADDR, &h);
	}
	if (mask && in->daddr && (cfg->fields & (1 << TR_F_DPORT))) {
		__u32 idx = gen * 65536 + (in->dport & 0xFFFF);

		h.pos = h.neg = 0;
		tr_or(&h, bpf_map_lookup_elem(&tr_policy_port, &idx));
		mask = tr_apply(mask, cfg, TR_F_DPORT, &h);
	}
	if (!mask)
		return 0;
	/* Several rules may match: enforcement wins, then ignore, then post;
	 * among equals the first in file order. */
	__u64 pick = mask & cfg->enforce;

	if (!pick)
		pick = mask & cfg->ignore;
	if (!pick)
		pick = mask;
	__u32 bit = tr_first_bit(pick);
	__u32 slot = (gen * TR_PK_MAX + kind) * TR_MAX_RULES + (bit & (TR_MAX_RULES - 1));
	struct tr_rule *rule = bpf_map_lookup_elem(&tr_policy_rules, &slot);
	__u64 *hits = bpf_map_lookup_elem(&tr_policy_hits, &slot);

	if (!rule)
		return 0;
	if (hits)
		*hits += 1;
	/* Counted as the rule's hit, then maybe kept back: only posts are. */
	struct tr_throttle_rule *thr = bpf_map_lookup_elem(&tr_throttle_rules, &slot);

	if (thr && thr->limit && thr->per_ms && rule->action == TR_ACT_POST &&
	    tr_throttled(slot, kind, in, rule, thr))
		return 0;
	s->out.policy_id = rule->policy_id;
	s->out.rule = rule->index;
	s->out.action = rule->action;
	/* DENY is compiled in only while the LSM programs are loaded (else it
	 * becomes SIGKILL): they refuse the call with -EPERM, no signal. */
	if (rule->action == TR_ACT_SIGKILL)
		bpf_send_signal(9);
	return 0;
}

/* A new request in the scratch, with the fields every evaluation has; the
 * caller adds the others. In map memory: the callers' stacks, with
 * tr_policy_decide's frame on top, have no room for it. NULL: no scratch. */
static __always_inline struct tr_policy_input *tr_policy_request(const char *str, __u32 len,
								  __u32 field, __u32 uid,
								  bool is_write)
{
	struct tr_policy_scratch *s =
		bpf_map_lookup_elem(&tr_policy_heap, (const void *)&tr_zero_key);

	if (!s)
		return NULL;
	__builtin_memset(&s->in, 0, sizeof(s->in));
	s->in.str = str;
	s->in.str_len = len;
	s->in.str_field = field;
	s->in.uid = uid;
	s->in.is_write = is_write;
	return &s->in;
}

/* Evaluate kind's rules (of generation gen) on the request `in`
 * (tr_policy_request's); fills `out`. */
static __always_inline void tr_policy_eval(__u32 kind, __u32 gen, struct tr_policy_input *in,
					   struct tr_verdict *out)
{
	out->action = TR_ACT_NONE;
	if (!in)
		return;
	tr_policy_decide(kind, gen);
	*out = ((struct tr_policy_scratch *)((void *)in - offsetof(struct tr_policy_scratch, in)))->out;
}

#endif /* TRACER_POLICY_BPF_H */
