"""What a policy says, once parsed and checked: plain values, no YAML."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum

from tracer.core.labels import LabelSelector

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Kind(Enum):
    """Event kinds a rule can select, with their index in the BPF maps."""

    EXEC = ("exec", 0)
    FILE_OPEN = ("file_open", 1)
    CONNECT = ("connect", 2)
    PRIVILEGE_CHANGE = ("privilege_change", 3)
    FILE_ATTR = ("file_attr", 4)

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def index(self) -> int:
        return self.value[1]


class Action(Enum):
    POST = ("post", 1)
    IGNORE = ("ignore", 2)
    SIGKILL = ("sigkill", 3)
    DENY = ("deny", 4)

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def code(self) -> int:
        return self.value[1]


class Severity(Enum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Mode(Enum):
    ENFORCE = "enforce"
    MONITOR = "monitor"  # sigkill and deny rules post what they would have done


class Access(Enum):
    ANY = "any"
    WRITE = "write"


@dataclass(slots=True, frozen=True)
class StringMatch:
    """Values of one string selector (binary or path)."""

    exact: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()
    glob: tuple[str, ...] = ()  # file_open paths only (policy/glob.py)

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefix or self.suffix or self.glob)


@dataclass(slots=True, frozen=True)
class Selectors:
    """Everything a rule matches on; an empty selector does not constrain."""

    binary: StringMatch = StringMatch()
    not_binary: StringMatch = StringMatch()
    path: StringMatch = StringMatch()
    not_path: StringMatch = StringMatch()
    daddr: tuple[IPNetwork, ...] = ()
    not_daddr: tuple[IPNetwork, ...] = ()
    dport: tuple[tuple[int, int], ...] = ()  # inclusive ranges
    not_dport: tuple[tuple[int, int], ...] = ()
    uid: tuple[int, ...] = ()
    not_uid: tuple[int, ...] = ()
    euid: tuple[int, ...] = ()
    not_euid: tuple[int, ...] = ()
    # Who the process descends from: its parent's executable, and any of its
    # nearest ancestors' (exact and prefix values only).
    parent_binary: StringMatch = StringMatch()
    not_parent_binary: StringMatch = StringMatch()
    ancestor_binary: StringMatch = StringMatch()
    not_ancestor_binary: StringMatch = StringMatch()
    # Where the process runs (policy/workload.py): its pod's namespace and
    # labels (any of the label selectors), its container's name, and
    # whether it is in a container or pod at all (None: either).
    namespace: tuple[str, ...] = ()
    not_namespace: tuple[str, ...] = ()
    pod_labels: tuple[LabelSelector, ...] = ()
    not_pod_labels: tuple[LabelSelector, ...] = ()
    container: tuple[str, ...] = ()
    not_container: tuple[str, ...] = ()
    in_container: bool | None = None
    # privilege_change: only changes that make a uid 0 where none was
    to_root: bool = False


class ThrottleBy(Enum):
    PROCESS = "process"
    CGROUP = "cgroup"


@dataclass(slots=True, frozen=True)
class Throttle:
    """At most `events` posted per `per_ms` window and key; the rest counted
    in the kernel and reported in policy_summary events. `aggregate`: the
    key also holds what the event was about (path or peer, access), and
    `events` is 1. Only posting is throttled, never an enforcement."""

    events: int
    per_ms: int
    by: ThrottleBy = ThrottleBy.PROCESS
    aggregate: bool = False


@dataclass(slots=True, frozen=True)
class Rule:
    kind: Kind
    action: Action
    selectors: Selectors
    access: Access = Access.ANY
    description: str = ""
    line: int = 0  # where it starts in its file, for messages
    throttle: Throttle | None = None


@dataclass(slots=True, frozen=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]
    source: str = ""  # file it came from
    description: str = ""
    severity: Severity = Severity.INFO
    tags: tuple[str, ...] = ()
    message: str = ""  # what an event it selects means, for a person
    mode: Mode = Mode.ENFORCE
    line: int = 0  # of its name in its file, for messages


@dataclass(slots=True)
class PolicySet:
    policies: list[Policy] = field(default_factory=list)

    def rules_of(self, kind: Kind) -> list[tuple[Policy, int, Rule]]:
        """(policy, index in policy, rule) for kind, in priority order."""
        return [(p, i, r) for p in self.policies for i, r in enumerate(p.rules) if r.kind is kind]
