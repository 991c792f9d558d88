"""A PolicySet to the contents of the kernel's policy maps.

Rules of one event kind are numbered in priority order (file order, then
rule order) and each becomes one bit of a u64; a map entry holds the bits
of the rules that list its value. Prefix tries return only the longest
stored match, so each prefix entry also carries the bits of every shorter
stored prefix of it; the lookup then yields the union.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from policy.glob import head as glob_head
from policy.model import (
    Access,
    Action,
    IPNetwork,
    Kind,
    Mode,
    PolicySet,
    Rule,
    Selectors,
    Severity,
    StringMatch,
    Throttle,
)
from policy.parse import PolicyError
from policy.sieve import Sieve
from policy.workload import constrains

MAX_RULES = 64  # TR_MAX_RULES
STR_LEN = 252  # TR_POLICY_STR: bytes of a string value the kernel compares
# Map capacities, as declared in bpf_probes/policy.bpf.h.
CAPACITY = {"exact": 4096, "prefix": 4096, "suffix": 4096, "cidr": 4096, "uid": 1024}

# enum tr_field (tracer.h); the fields with string values come first.
F_BINARY, F_PATH, F_PARENT_BINARY, F_ANCESTOR_BINARY, F_DADDR, F_DPORT, F_UID, F_EUID = range(8)
F_MAX = 8
STR_FIELDS = 4
F_GLOB_HEAD = F_MAX  # glob heads' pseudo-field in the prefix trie (TR_F_GLOB_HEAD)
MAX_GLOBS = 16  # per event kind (TR_GLOBS)
# Bit of tr_kind_cfg.fields for rules with workload selectors: they are
# decided per cgroup in user space (policy/workload_map.py), not by a field map.
F_WORKLOAD = 9  # TR_F_WORKLOAD

Key = tuple[int, int, bytes]  # kind, field, value
_BY_INDEX = {k.index: k for k in Kind}


@dataclass(slots=True)
class Hits:
    pos: int = 0
    neg: int = 0

    def add(self, bit: int, negative: bool) -> None:
        if negative:
            self.neg |= bit
        else:
            self.pos |= bit

    def merge(self, other: Hits) -> None:
        self.pos |= other.pos
        self.neg |= other.neg


@dataclass(slots=True, frozen=True)
class RuleRef:
    """What the daemon needs to name a kernel verdict."""

    policy_id: int
    policy: str
    index: int  # position in its policy
    kind: Kind
    action: Action  # what the rule does, or in monitor mode would do
    source: str
    line: int
    description: str
    severity: Severity = Severity.INFO
    tags: tuple[str, ...] = ()
    message: str = ""
    mode: Mode = Mode.ENFORCE
    throttle: Throttle | None = None

    @property
    def kernel_throttle(self) -> Throttle | None:
        """The throttle the kernel applies: to posting only, never to an enforcement."""
        return self.throttle if self.kernel_action is Action.POST else None

    @property
    def kernel_action(self) -> Action:
        """What the kernel does: in monitor mode a sigkill or deny rule only posts.
        It keeps its enforcing rank (KindTable.enforce), so the event is named
        after the rule that would have acted, as in enforce mode."""
        if self.mode is Mode.MONITOR and self.action in (Action.SIGKILL, Action.DENY):
            return Action.POST
        return self.action


@dataclass(slots=True)
class KindTable:
    rules: list[RuleRef] = field(default_factory=list)
    free: list[int] = field(default_factory=lambda: [0] * F_MAX)
    constrained: list[int] = field(default_factory=lambda: [0] * F_MAX)
    write_only: int = 0
    enforce: int = 0
    ignore: int = 0
    fields: int = 0
    # Per string field, 256-bit sets: the lengths of its exact values and
    # the last bytes of its suffix values (the kernel skips a lookup that
    # no value could answer).
    exact_lens: list[int] = field(default_factory=lambda: [0] * STR_FIELDS)
    suffix_ends: list[int] = field(default_factory=lambda: [0] * STR_FIELDS)
    # (rule bit, a not_path value, pattern) per glob, in slot order.
    globs: list[tuple[int, bool, bytes]] = field(default_factory=list)
    glob_rules: int = 0

    @property
    def mask(self) -> int:
        return (1 << len(self.rules)) - 1

    @property
    def suffix_fields(self) -> int:
        """Bit per string field with suffix values."""
        return sum(1 << fld for fld, ends in enumerate(self.suffix_ends) if ends)


@dataclass(slots=True)
class Compiled:
    kinds: dict[Kind, KindTable] = field(default_factory=lambda: {k: KindTable() for k in Kind})
    exact: dict[Key, Hits] = field(default_factory=dict)
    prefix: dict[Key, Hits] = field(default_factory=dict)  # value: the prefix bytes
    suffix: dict[Key, Hits] = field(default_factory=dict)  # value: the suffix, reversed
    cidr: dict[tuple[int, bytes, int], Hits] = field(default_factory=dict)  # kind, addr16, bits
    port: dict[int, Hits] = field(default_factory=dict)  # connect only
    uid: dict[tuple[int, int, int], Hits] = field(default_factory=dict)  # kind, field, uid
    sieve: Sieve = field(default_factory=Sieve)  # file_open's positive path values
    policies: dict[int, str] = field(default_factory=dict)  # policy_id -> name
    warnings: list[str] = field(default_factory=list)
    # Per kind, (rule bit, selectors) of the rules with workload selectors.
    workload: dict[Kind, list[tuple[int, Selectors]]] = field(
        default_factory=lambda: {k: [] for k in Kind}
    )


def _mapped(net: IPNetwork) -> tuple[bytes, int]:
    """The 16-byte key and prefix bits of a network, IPv4 as ::ffff:a.b.c.d."""
    if isinstance(net, ipaddress.IPv4Network):
        return b"\0" * 10 + b"\xff\xff" + net.network_address.packed, 96 + net.prefixlen
    return net.network_address.packed, net.prefixlen


def _close_prefixes(entries: dict[Key, Hits]) -> None:
    """Give every entry the bits of each shorter stored prefix of it."""
    by_sel: dict[tuple[int, int], list[bytes]] = {}
    for kind, fld, value in entries:
        by_sel.setdefault((kind, fld), []).append(value)
    for (kind, fld), values in by_sel.items():
        values.sort(key=len)
        for i, longer in enumerate(values):
            for shorter in values[:i]:
                if longer.startswith(shorter) and shorter != longer:
                    entries[(kind, fld, longer)].merge(entries[(kind, fld, shorter)])


def _close_cidrs(entries: dict[tuple[int, bytes, int], Hits]) -> None:
    keys = sorted(entries, key=lambda k: k[2])
    for i, (kind, addr, bits) in enumerate(keys):
        net = ipaddress.IPv6Network((addr, bits))
        for k2, a2, b2 in keys[:i]:
            if k2 == kind and b2 < bits and net.subnet_of(ipaddress.IPv6Network((a2, b2))):
                entries[(kind, addr, bits)].merge(entries[(k2, a2, b2)])


class _Compiler:
    def __init__(self, out: Compiled) -> None:
        self.out = out

    def strings(self, kind: int, fld: int, m: StringMatch, bit: int, neg: bool) -> None:
        o = self.out
        t = o.kinds[_BY_INDEX[kind]]
        # Negative values only take rules out: the sieve needs the positive.
        sieve = o.sieve if fld == F_PATH and kind == Kind.FILE_OPEN.index and not neg else None
        for s in m.exact:
            b = s.encode()
            o.exact.setdefault((kind, fld, b), Hits()).add(bit, neg)
            t.exact_lens[fld] |= 1 << len(b)
            if sieve is not None:
                sieve.head(b, bit, prefix=False)
        for s in m.prefix:
            b = s.encode()
            o.prefix.setdefault((kind, fld, b), Hits()).add(bit, neg)
            if sieve is not None:
                sieve.head(b, bit, prefix=True)
        for s in m.suffix:
            b = s.encode()
            o.suffix.setdefault((kind, fld, b[::-1]), Hits()).add(bit, neg)
            t.suffix_ends[fld] |= 1 << b[-1]
            if sieve is not None:
                sieve.suffix(b, bit)
        for s in m.glob:
            # The head selects which globs run; a not_path glob must run too.
            h = glob_head(s).encode()
            o.prefix.setdefault((kind, F_GLOB_HEAD, h), Hits()).add(bit, False)
            t.globs.append((bit, neg, s.encode()))
            t.glob_rules |= bit
            if sieve is not None:
                sieve.head(h, bit, prefix=True)

    def rule(self, table: KindTable, r: Rule, bit: int) -> None:
        k, sel = r.kind.index, r.selectors
        used: dict[int, tuple[bool, bool]] = {  # field -> (positive, negative)
            F_BINARY: (bool(sel.binary), bool(sel.not_binary)),
            F_PATH: (bool(sel.path), bool(sel.not_path)),
            F_DADDR: (bool(sel.daddr), bool(sel.not_daddr)),
            F_DPORT: (bool(sel.dport), bool(sel.not_dport)),
            F_UID: (bool(sel.uid), bool(sel.not_uid)),
            F_EUID: (bool(sel.euid), bool(sel.not_euid)),
            F_PARENT_BINARY: (bool(sel.parent_binary), bool(sel.not_parent_binary)),
            F_ANCESTOR_BINARY: (bool(sel.ancestor_binary), bool(sel.not_ancestor_binary)),
        }
        for fld, (pos, neg) in used.items():
            if not pos:
                table.free[fld] |= bit
            if pos or neg:
                table.constrained[fld] |= bit
                table.fields |= 1 << fld
        self.strings(k, F_BINARY, sel.binary, bit, False)
        self.strings(k, F_BINARY, sel.not_binary, bit, True)
        self.strings(k, F_PATH, sel.path, bit, False)
        self.strings(k, F_PATH, sel.not_path, bit, True)
        self.strings(k, F_PARENT_BINARY, sel.parent_binary, bit, False)
        self.strings(k, F_PARENT_BINARY, sel.not_parent_binary, bit, True)
        self.strings(k, F_ANCESTOR_BINARY, sel.ancestor_binary, bit, False)
        self.strings(k, F_ANCESTOR_BINARY, sel.not_ancestor_binary, bit, True)
        for nets, neg in ((sel.daddr, False), (sel.not_daddr, True)):
            for net in nets:
                addr, bits = _mapped(net)
                self.out.cidr.setdefault((k, addr, bits), Hits()).add(bit, neg)
        for ranges, neg in ((sel.dport, False), (sel.not_dport, True)):
            for lo, hi in ranges:
                for p in range(lo, hi + 1):
                    self.out.port.setdefault(p, Hits()).add(bit, neg)
        for fld, uids, neg in (
            (F_UID, sel.uid, False),
            (F_UID, sel.not_uid, True),
            (F_EUID, sel.euid, False),
            (F_EUID, sel.not_euid, True),
        ):
            for u in uids:
                self.out.uid.setdefault((k, fld, u), Hits()).add(bit, neg)
        # One mask serves both: the kernel passes "a write" for file_open
        # and "to root" for privilege_change (priv.bpf.h).
        if r.access is Access.WRITE or sel.to_root:
            table.write_only |= bit
        if constrains(sel):
            self.out.workload[r.kind].append((bit, sel))
            table.fields |= 1 << F_WORKLOAD


def compile_policies(ps: PolicySet, lsm_active: bool, first_policy_id: int = 1) -> Compiled:
    """Compile, checking every limit; raises PolicyError naming the rule at fault."""
    out = Compiled()
    c = _Compiler(out)
    for pid, pol in enumerate(ps.policies, start=first_policy_id):
        out.policies[pid] = pol.name
    ids = {name: pid for pid, name in out.policies.items()}
    for kind in Kind:
        table = out.kinds[kind]
        for pol, idx, r in ps.rules_of(kind):
            if len(table.rules) == MAX_RULES:
                raise PolicyError(
                    pol.source,
                    r.line,
                    f"more than {MAX_RULES} {kind.label} rules in the policy set",
                )
            action = r.action
            if action is Action.DENY and not lsm_active:
                out.warnings.append(
                    f"{pol.source}:{r.line}: policy {pol.name!r}: deny needs BPF-LSM, which this "
                    "kernel does not offer; the rule kills the process instead (sigkill)"
                )
                action = Action.SIGKILL
            if action is Action.DENY and kind not in (Kind.FILE_OPEN, Kind.CONNECT):
                # An exec is stopped by killing the new image; a privilege or
                # attribute change is seen after the call, by a tracepoint.
                action = Action.SIGKILL
            bit = 1 << len(table.rules)
            table.rules.append(
                RuleRef(
                    ids[pol.name],
                    pol.name,
                    idx,
                    kind,
                    action,
                    pol.source,
                    r.line,
                    r.description,
                    pol.severity,
                    pol.tags,
                    pol.message,
                    pol.mode,
                    r.throttle,
                )
            )
            c.rule(table, r, bit)
            if action in (Action.SIGKILL, Action.DENY):
                table.enforce |= bit
            elif action is Action.IGNORE:
                table.ignore |= bit
    for kind, t in out.kinds.items():
        if len(t.globs) > MAX_GLOBS:
            raise PolicyError(
                "policy set", 0, f"{len(t.globs)} {kind.label} globs; the kernel holds {MAX_GLOBS}"
            )
    _close_prefixes(out.prefix)
    _close_prefixes(out.suffix)
    _close_cidrs(out.cidr)
    for name, cap in CAPACITY.items():
        n = len(getattr(out, name))
        if n > cap:
            raise PolicyError(
                "policy set", 0, f"{n} {name} values exceed the kernel map's {cap} entries"
            )
    return out
