"""Writes a compiled policy set into the BPF maps, atomically.

Every map is keyed by a generation (0 or 1). A new set is written into
the idle generation while the active one keeps enforcing; one word,
tr_policy_gen, then switches. Only after that is the old generation
cleared. If any write fails, what was written is removed and the active
set never changed.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from dataclasses import dataclass

from policy.compile import (
    F_DADDR,
    F_MAX,
    MAX_GLOBS,
    MAX_RULES,
    STR_FIELDS,
    STR_LEN,
    Compiled,
    Hits,
    RuleRef,
)
from policy.glob import GLOB_LEN
from policy.model import Kind, ThrottleBy
from policy.sieve import SLOTS as SIEVE_SLOTS
from policy.workload_map import WorkloadMap
from tracer.core import bpf
from tracer.core.decode import THROTTLE_AGGREGATE, THROTTLE_BY_CGROUP

KINDS = len(Kind)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HITS = struct.Struct("<QQ")
_CFG = struct.Struct(f"<Q{F_MAX}Q{F_MAX}QQQQII{4 * STR_FIELDS}Q{4 * STR_FIELDS}QQII")
_GLOB = struct.Struct(f"<QII{GLOB_LEN + 1}s")
_RULE = struct.Struct("<IHBB")
_STR_KEY = struct.Struct(f"<I{STR_LEN}s")
_LPM_STR_KEY = struct.Struct(f"<II{STR_LEN}s")
_ADDR_KEY = struct.Struct("<II16s")
_UID_KEY = struct.Struct("<II")
_BINARY = struct.Struct("<I256s")
_TAIL = struct.Struct("<256s")
_THROTTLE = struct.Struct("<IIQ")  # struct tr_throttle_rule


def _sel(gen: int, kind: int, fld: int) -> int:
    return gen << 16 | kind << 8 | fld


def _words(sets: list[int]) -> list[int]:
    """256-bit sets as the kernel's __u64[4] each, low word first."""
    return [(v >> (64 * i)) & 0xFFFF_FFFF_FFFF_FFFF for v in sets for i in range(4)]


def _hits(h: Hits) -> bytes:
    return _HITS.pack(h.pos, h.neg)


@dataclass(slots=True)
class RuleCount:
    rule: RuleRef
    hits: int  # events the rule selected, throttled ones included
    suppressed: int = 0  # of those, kept back by its throttle or aggregate


def _throttle(r: RuleRef) -> bytes:
    t = r.kernel_throttle
    if t is None:
        return bytes(_THROTTLE.size)
    flags = (THROTTLE_BY_CGROUP if t.by is ThrottleBy.CGROUP else 0) | (
        THROTTLE_AGGREGATE if t.aggregate else 0
    )
    return _THROTTLE.pack(t.events, flags, t.per_ms)


class PolicyMaps:
    """The policy maps of one loaded capture object."""

    def __init__(self, obj: bpf.BpfObject) -> None:
        self._gen_map = obj.map("tr_policy_gen")
        self._cfg = obj.map("tr_policy_cfg")
        self._rules = obj.map("tr_policy_rules")
        self._counts = obj.map("tr_policy_hits")
        self._exact = obj.map("tr_policy_exact")
        self._prefix = obj.map("tr_policy_prefix")
        self._suffix = obj.map("tr_policy_suffix")
        self._cidr = obj.map("tr_policy_cidr")
        self._port = obj.map("tr_policy_port")
        self._uid = obj.map("tr_policy_uid")
        self._binary = obj.map("tr_proc_binary")
        self._globs = obj.map("tr_policy_globs")
        self._binary_tail = obj.map("tr_proc_binary_tail")
        self._throttle = obj.map("tr_throttle_rules")
        self._suppressed = obj.map("tr_throttle_stats")  # first: per rule slot
        self._sieve = obj.map("tr_path_sieve")
        self.workloads = WorkloadMap(obj)
        self._lock = threading.Lock()
        self.active_gen = 0
        self._word = 0
        self.active: Compiled | None = None
        # What each generation holds, to clear it without iterating maps.
        self._written: dict[int, list[tuple[bpf.Map, bytes]]] = {0: [], 1: []}
        self._ports: dict[int, list[int]] = {0: [], 1: []}
        self._sieve_slots: dict[int, list[int]] = {0: [], 1: []}

    def _entries(self, c: Compiled, gen: int) -> list[tuple[bpf.Map, bytes, bytes]]:
        out: list[tuple[bpf.Map, bytes, bytes]] = []
        for (k, f, v), h in c.exact.items():
            out.append((self._exact, _STR_KEY.pack(_sel(gen, k, f), v), _hits(h)))
        for m, entries in ((self._prefix, c.prefix), (self._suffix, c.suffix)):
            for (k, f, v), h in entries.items():
                out.append((m, _LPM_STR_KEY.pack(32 + 8 * len(v), _sel(gen, k, f), v), _hits(h)))
        for (k, addr, bits), h in c.cidr.items():
            key = _ADDR_KEY.pack(32 + bits, _sel(gen, k, F_DADDR), addr)
            out.append((self._cidr, key, _hits(h)))
        for (k, f, u), h in c.uid.items():
            out.append((self._uid, _UID_KEY.pack(_sel(gen, k, f), u), _hits(h)))
        return out

    def _clear(self, gen: int) -> None:
        for m, key in self._written[gen]:
            with contextlib.suppress(FileNotFoundError):
                m.delete(key)
        self._written[gen] = []
        zero = _hits(Hits())
        for port in self._ports[gen]:
            self._port.update(_U32.pack(gen * 65536 + port), zero)
        self._ports[gen] = []
        for s in self._sieve_slots[gen]:
            self._sieve.update(_U32.pack(gen * SIEVE_SLOTS + s), _U64.pack(0))
        self._sieve_slots[gen] = []
        empty_cfg = bytes(_CFG.size)
        for kind in Kind:
            self._cfg.update(_U32.pack(gen * KINDS + kind.index), empty_cfg)

    def apply(self, c: Compiled) -> None:
        """Switch to `c`; on any failure the previous set stays in force."""
        with self._lock:
            gen = 1 - self.active_gen
            self._clear(gen)  # leftovers of a failed apply
            try:
                self._write(c, gen)
                self.workloads.set_generation(gen, c.workload)
            except BaseException:
                self._clear(gen)
                raise
            # The word counts applies; its low bit is the generation. Caches
            # of verdicts in the kernel (tr_sent) keep the word they were
            # made under, so a new set, even into the same generation,
            # evaluates afresh.
            word = (self._word + 1) & 0xFFFFFFFF
            assert word & 1 == gen
            self._gen_map.update(_U32.pack(0), _U32.pack(word))
            self._word = word
            old, self.active_gen, self.active = self.active_gen, gen, c
            self._clear(old)

    def _write(self, c: Compiled, gen: int) -> None:
        for m, key, value in self._entries(c, gen):
            m.update(key, value)
            self._written[gen].append((m, key))
        for port, h in c.port.items():
            self._port.update(_U32.pack(gen * 65536 + port), _hits(h))
            self._ports[gen].append(port)
        for s, rules in c.sieve.slots.items():
            self._sieve.update(_U32.pack(gen * SIEVE_SLOTS + s), _U64.pack(rules))
            self._sieve_slots[gen].append(s)
        ncpu = bpf.num_possible_cpus()
        for kind in Kind:
            t = c.kinds[kind]
            for i in range(MAX_RULES):
                slot = _U32.pack((gen * KINDS + kind.index) * MAX_RULES + i)
                self._counts.update(slot, _U64.pack(0) * ncpu)
                self._suppressed.update(slot, _U64.pack(0) * ncpu)
                if i < len(t.rules):
                    r = t.rules[i]
                    code = r.kernel_action.code
                    self._rules.update(slot, _RULE.pack(r.policy_id, r.index, code, 0))
                    self._throttle.update(slot, _throttle(r))
            for n, (bit, neg, pattern) in enumerate(t.globs):
                slot = _U32.pack((gen * KINDS + kind.index) * MAX_GLOBS + n)
                self._globs.update(slot, _GLOB.pack(bit, int(neg), len(pattern), pattern))
            # The cfg goes last: it is what makes the kind's rules live.
            self._cfg.update(
                _U32.pack(gen * KINDS + kind.index),
                _CFG.pack(
                    t.mask,
                    *t.free,
                    *t.constrained,
                    t.write_only,
                    t.enforce,
                    t.ignore,
                    t.fields,
                    t.suffix_fields,
                    *_words(t.exact_lens),
                    *_words(t.suffix_ends),
                    t.glob_rules,
                    len(t.globs),
                    0,
                ),
            )

    def counts(self) -> list[RuleCount]:
        """Hits of every rule of the active set since it was applied."""
        with self._lock:
            c, gen = self.active, self.active_gen
            if c is None:
                return []
            out = []
            for kind in Kind:
                for i, r in enumerate(c.kinds[kind].rules):
                    slot = _U32.pack((gen * KINDS + kind.index) * MAX_RULES + i)
                    total = sum(_U64.unpack(v)[0] for v in self._counts.lookup_percpu(slot))
                    kept = sum(_U64.unpack(v)[0] for v in self._suppressed.lookup_percpu(slot))
                    out.append(RuleCount(r, total, kept))
            return out

    def set_binary(self, tgid: int, path: bytes) -> None:
        """Seed tr_proc_binary for a process that started before the daemon."""
        self._binary.update(_U32.pack(tgid), _BINARY.pack(len(path), path[:STR_LEN]))
        if len(path) > STR_LEN:  # suffix selectors read the tail from its own map
            self._binary_tail.update(_U32.pack(tgid), _TAIL.pack(path[-STR_LEN:]))
