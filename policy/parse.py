"""YAML policy files to policy.model values, with file:line in every error.

A file holds `policies:`, a list of named policies; each has `rules:`.
The schema is in the README ("Policies"). Every key is checked: an
unknown one is an error, not ignored, since a typo in a security policy
that silently matches nothing is worse than a refusal.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import yaml
from yaml.events import AliasEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from policy.glob import problem as glob_problem
from policy.model import (
    Access,
    Action,
    IPNetwork,
    Kind,
    Mode,
    Policy,
    PolicySet,
    Rule,
    Selectors,
    Severity,
    StringMatch,
    Throttle,
    ThrottleBy,
)
from tracer.core import safefile
from tracer.core.labels import LabelSelector, parse_selector
from tracer.core.options import parse_duration

# Longest string the kernel-side maps hold (TR_POLICY_STR - 1 in tracer.h).
MAX_STRING = 251
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})$")
# An ATT&CK technique id, T1003 or T1003.008; a tag that starts like one must be one.
ATTACK_RE = re.compile(r"^T\d{4}(\.\d{3})?$")
_LOOKS_ATTACK = re.compile(r"^[Tt]\d")
TAG_RE = re.compile(r"^[\w.:/+-]{1,64}$")
MAX_TAGS = 16
MAX_MESSAGE = 256
# A throttle's window is whole milliseconds (the kernel counts in those), a
# day at most; it posts at most TR_THROTTLE_LIMIT_MAX events per window.
MAX_WINDOW_MS = 86_400_000
MAX_THROTTLE_EVENTS = (1 << 24) - 1
_DURATION_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float"))

# Who did it: every event kind accepts these, each also as not_...
_ACTOR = frozenset(
    f"{neg}{name}"
    for name in ("binary", "parent_binary", "ancestor_binary", "uid", "euid")
    for neg in ("", "not_")
)
# Where it runs (policy/workload.py): every event kind accepts these too.
_WORKLOAD = frozenset(
    f"{neg}{name}" for name in ("namespace", "container", "pod_labels") for neg in ("", "not_")
) | {"in_container"}
# Which selectors each event kind accepts.
_SELECTORS: dict[Kind, frozenset[str]] = {
    Kind.EXEC: _ACTOR | _WORKLOAD,
    Kind.FILE_OPEN: _ACTOR | _WORKLOAD | {"path", "not_path"},
    Kind.CONNECT: _ACTOR
    | _WORKLOAD
    | {"daddr", "not_daddr", "dport", "not_dport", "path", "not_path"},
    Kind.PRIVILEGE_CHANGE: _ACTOR | {"to_root"},
    Kind.FILE_ATTR: _ACTOR | {"path", "not_path"},
}
_EVENT_NAMES = ", ".join(k.label for k in Kind)
# A namespace or container name: an RFC 1123 label, as Kubernetes requires.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Values of one workload selector: they are matched in user space, once per
# cgroup and policy set, but a list that long is a mistake, not a policy.
MAX_WORKLOAD_VALUES = 256
_STRING_SELECTORS = frozenset(
    f"{neg}{name}" for name in ("binary", "path", "parent_binary", "ancestor_binary")
    for neg in ("", "not_")
)
# Bounds on what a file may make the parser do (PyYAML's composer recurses
# once per level, and aliases make a small file a large graph). A policy
# set is a few kilobytes; the kernel maps hold 4,096 values each, a few
# hundred KB of YAML at most. At the bounds a parse takes about 0.6 s.
MAX_BYTES = 1 << 20
MAX_NODES = 25_000
MAX_DEPTH = 64
_KINDS = {k.label: k for k in Kind}
_ACTIONS = {a.label: a for a in Action}
T = TypeVar("T")


class PolicyError(ValueError):
    """A policy that cannot be loaded; the message starts with file:line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        super().__init__(f"{source}:{line}: {message}")


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: Node, message: str) -> PolicyError:
        return PolicyError(self.source, node.start_mark.line + 1, message)

    def mapping(self, node: Node, what: str, allowed: frozenset[str]) -> dict[str, Node]:
        if not isinstance(node, MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, Node] = {}
        for k, v in node.value:
            key = self.string(k, f"a key of {what}")
            if key not in allowed:
                raise self.fail(
                    k, f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})"
                )
            if key in out:
                raise self.fail(k, f"duplicate key {key!r} in {what}")
            out[key] = v
        return out

    def sequence(self, node: Node, what: str) -> list[Node]:
        if isinstance(node, ScalarNode) and node.tag != "tag:yaml.org,2002:null":
            return [node]  # a single value where a list is expected
        if not isinstance(node, SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)

    def string(self, node: Node, what: str) -> str:
        if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.fail(node, f"{what} must be a string")
        return str(node.value)

    def integer(self, node: Node, what: str, lo: int, hi: int) -> int:
        if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            raise self.fail(node, f"{what} must be an integer")
        try:
            value = int(node.value, 0)
        except ValueError:
            raise self.fail(node, f"{what} {node.value!r} is not an integer") from None
        if not lo <= value <= hi:
            raise self.fail(node, f"{what} {value} is out of range {lo}..{hi}")
        return value

    def duration_ms(self, node: Node, what: str) -> int:
        if not isinstance(node, ScalarNode) or node.tag not in _DURATION_TAGS:
            raise self.fail(node, f"{what} must be a duration such as 1s or 500ms")
        try:
            ms = parse_duration(str(node.value)) * 1000
        except ValueError as exc:
            raise self.fail(node, f"{what}: {exc}") from None
        if not 1 <= ms <= MAX_WINDOW_MS:  # also false for nan
            raise self.fail(node, f"{what} {node.value!r} is not between 1ms and 1d")
        if ms != int(ms):
            raise self.fail(node, f"{what} {node.value!r} is not a whole number of milliseconds")
        return int(ms)

    def each(self, node: Node, what: str, item: Callable[[Node], T]) -> tuple[T, ...]:
        values = tuple(item(n) for n in self.sequence(node, what))
        if not values:
            raise self.fail(node, f"{what} is empty: leave the selector out to match anything")
        return values

    # -- selectors ---------------------------------------------------

    def path_string(self, node: Node, what: str, absolute: bool) -> str:
        s = self.string(node, what)
        if not s:
            raise self.fail(node, f"{what} is empty")
        if "\0" in s:
            raise self.fail(node, f"{what} contains a NUL byte")
        if len(s.encode()) > MAX_STRING:
            raise self.fail(
                node, f"{what} is {len(s.encode())} bytes; the kernel-side limit is {MAX_STRING}"
            )
        # memfd:NAME is how exec and open events name a memfd (no path).
        if absolute and not s.startswith(("/", "memfd:")):
            raise self.fail(node, f"{what} {s!r} must be an absolute path or memfd:NAME")
        return s

    def string_match(self, node: Node, what: str) -> StringMatch:
        if isinstance(node, (ScalarNode, SequenceNode)):  # shorthand: exact values
            return StringMatch(
                exact=self.each(node, what, lambda n: self.path_string(n, what, True))
            )
        m = self.mapping(node, what, frozenset({"exact", "prefix", "suffix", "glob"}))
        return StringMatch(
            exact=self.each(m["exact"], f"{what}.exact", lambda n: self.path_string(n, what, True))
            if "exact" in m
            else (),
            prefix=self.each(
                m["prefix"], f"{what}.prefix", lambda n: self.path_string(n, what, True)
            )
            if "prefix" in m
            else (),
            suffix=self.each(
                m["suffix"], f"{what}.suffix", lambda n: self.path_string(n, what, False)
            )
            if "suffix" in m
            else (),
            glob=self.each(m["glob"], f"{what}.glob", lambda n: self.glob(n, what))
            if "glob" in m
            else (),
        )

    def glob(self, node: Node, what: str) -> str:
        g = self.path_string(node, f"{what}.glob", True)
        bad = glob_problem(g)
        if bad is not None:
            raise self.fail(node, f"{what}.glob {g!r}: {bad}")
        return g

    def cidr(self, node: Node, what: str) -> IPNetwork:
        text = self.string(node, what)
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise self.fail(node, f"{what}: bad CIDR {text!r}: {exc}") from None

    def port_range(self, node: Node, what: str) -> tuple[int, int]:
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:int":
            p = self.integer(node, what, 0, 65535)
            return p, p
        text = self.string(node, what)
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
        if not m:
            raise self.fail(node, f"{what}: {text!r} is neither a port nor a range like 8000-8100")
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi > 65535 or lo > hi:
            raise self.fail(node, f"{what}: range {text!r} is not within 0..65535, low to high")
        return lo, hi

    def dns_label(self, node: Node, what: str) -> str:
        name = self.string(node, what)
        if not _DNS_LABEL.match(name):
            raise self.fail(
                node, f"{what} {name!r}: a Kubernetes name is 1-63 of a-z 0-9 -, "
                "starting and ending with a letter or digit"
            )
        return name

    def label_selector(self, node: Node, what: str) -> LabelSelector:
        text = self.string(node, what)
        if not text.strip():
            raise self.fail(node, f"{what} is empty: leave the selector out to match any pod")
        try:
            return parse_selector(text)
        except ValueError as exc:
            raise self.fail(node, f"{what}: bad label selector {text!r}: {exc}") from None

    def workload(self, key: str, v: Node) -> object:
        if key == "in_container":
            if not isinstance(v, ScalarNode) or v.tag != "tag:yaml.org,2002:bool":
                raise self.fail(v, "in_container must be true or false")
            return v.value.lower() in ("true", "yes", "on")
        item = self.label_selector if key.endswith("pod_labels") else self.dns_label
        values = self.each(v, key, partial(item, what=key))
        if len(values) > MAX_WORKLOAD_VALUES:
            raise self.fail(
                v, f"{key} has {len(values)} values; a selector holds at most {MAX_WORKLOAD_VALUES}"
            )
        return values

    def selectors(self, node: Node, kind: Kind) -> Selectors:
        m = self.mapping(node, f"match of a {kind.label} rule", _SELECTORS[kind])
        kw: dict[str, object] = {}
        for key, v in m.items():
            if key in _WORKLOAD:
                kw[key] = self.workload(key, v)
            elif key in _STRING_SELECTORS:
                sm = self.string_match(v, key)
                if key.endswith("ancestor_binary") and sm.suffix:
                    raise self.fail(v, f"{key} takes exact and prefix values, not suffix")
                if sm.glob and (kind is not Kind.FILE_OPEN or not key.endswith("path")):
                    # One more kind with globs costs every connect program
                    # stack it does not have (the 512-byte limit).
                    raise self.fail(v, f"{key}: globs are for file_open paths only")
                kw[key] = sm
            elif key == "to_root":
                if not isinstance(v, ScalarNode) or v.tag != "tag:yaml.org,2002:bool":
                    raise self.fail(v, "to_root must be true or false")
                kw[key] = yaml.SafeLoader.bool_values[v.value.lower()]
            elif key in ("daddr", "not_daddr"):
                kw[key] = self.each(v, key, partial(self.cidr, what=key))
            elif key in ("dport", "not_dport"):
                kw[key] = self.each(v, key, partial(self.port_range, what=key))
            else:
                kw[key] = self.each(v, key, partial(self.integer, what=key, lo=0, hi=0xFFFFFFFE))
        return Selectors(**kw)  # type: ignore[arg-type]

    # -- rules and policies -------------------------------------------

    def throttle(self, m: dict[str, Node], action: Action) -> Throttle | None:
        if "throttle" in m and "aggregate" in m:
            raise self.fail(m["aggregate"], "a rule takes throttle or aggregate, not both")
        key = "throttle" if "throttle" in m else "aggregate" if "aggregate" in m else None
        if key is None:
            return None
        if action is Action.IGNORE:
            raise self.fail(m[key], f"{key} on an ignore rule: it posts nothing to throttle")
        if key == "aggregate":
            return Throttle(1, self.duration_ms(m[key], "aggregate"), aggregate=True)
        usage = "throttle needs numbers: {events: N, per: DURATION}, e.g. {events: 10, per: 1s}"
        if not isinstance(m[key], MappingNode):
            raise self.fail(m[key], usage)
        t = self.mapping(m[key], "throttle", frozenset({"events", "per", "by"}))
        if "events" not in t or "per" not in t:
            raise self.fail(m[key], usage)
        return Throttle(
            self.integer(t["events"], "throttle.events", 1, MAX_THROTTLE_EVENTS),
            self.duration_ms(t["per"], "throttle.per"),
            self.choice(t["by"], "throttle.by", {b.value: b for b in ThrottleBy})
            if "by" in t
            else ThrottleBy.PROCESS,
        )

    def rule(self, node: Node) -> Rule:
        m = self.mapping(
            node,
            "a rule",
            frozenset(
                {"event", "match", "action", "access", "description", "throttle", "aggregate"}
            ),
        )
        if "event" not in m:
            raise self.fail(node, f"a rule needs `event` ({_EVENT_NAMES})")
        ev = self.string(m["event"], "event")
        if ev not in _KINDS:
            raise self.fail(m["event"], f"unknown event {ev!r} ({_EVENT_NAMES})")
        kind = _KINDS[ev]
        act = self.string(m["action"], "action") if "action" in m else "post"
        if act not in _ACTIONS:
            raise self.fail(
                m.get("action", node), f"unknown action {act!r} (post, ignore, sigkill, deny)"
            )
        access = Access.ANY
        if "access" in m:
            text = self.string(m["access"], "access")
            if kind is not Kind.FILE_OPEN:
                raise self.fail(m["access"], "access applies to file_open rules only")
            if text not in ("any", "write"):
                raise self.fail(m["access"], f"access must be any or write, not {text!r}")
            access = Access(text)
        return Rule(
            kind=kind,
            action=_ACTIONS[act],
            selectors=self.selectors(m["match"], kind) if "match" in m else Selectors(),
            access=access,
            description=self.string(m["description"], "description") if "description" in m else "",
            line=node.start_mark.line + 1,
            throttle=self.throttle(m, _ACTIONS[act]),
        )

    def tag(self, node: Node) -> str:
        t = self.string(node, "a tag")
        if _LOOKS_ATTACK.match(t) and not ATTACK_RE.match(t):
            raise self.fail(node, f"tag {t!r} is not an ATT&CK technique id (T1003, T1003.008)")
        if not TAG_RE.match(t):
            raise self.fail(node, f"tag {t!r}: use 1-64 letters, digits and . _ : / + -")
        return t

    def choice(self, node: Node, what: str, choices: dict[str, T]) -> T:
        text = self.string(node, what)
        if text not in choices:
            raise self.fail(node, f"{what} must be one of {', '.join(choices)}, not {text!r}")
        return choices[text]

    def policy(self, node: Node) -> Policy:
        m = self.mapping(
            node,
            "a policy",
            frozenset({"name", "description", "rules", "severity", "tags", "message", "mode"}),
        )
        if "name" not in m:
            raise self.fail(node, "a policy needs a `name`")
        name = self.string(m["name"], "name")
        if not NAME_RE.match(name):
            raise self.fail(m["name"], f"policy name {name!r}: use 1-63 of a-z 0-9 . _ -")
        if "rules" not in m:
            raise self.fail(node, f"policy {name!r} has no `rules`")
        tags = self.each(m["tags"], "tags", self.tag) if "tags" in m else ()
        if len(tags) > MAX_TAGS:
            raise self.fail(m["tags"], f"{len(tags)} tags; a policy has at most {MAX_TAGS}")
        message = self.string(m["message"], "message") if "message" in m else ""
        if len(message) > MAX_MESSAGE:
            raise self.fail(m["message"], f"message is longer than {MAX_MESSAGE} characters")
        return Policy(
            name=name,
            rules=self.each(m["rules"], "rules", self.rule),
            source=self.source,
            description=self.string(m["description"], "description") if "description" in m else "",
            severity=self.choice(m["severity"], "severity", {s.value: s for s in Severity})
            if "severity" in m
            else Severity.INFO,
            tags=tuple(dict.fromkeys(tags)),
            message=message,
            mode=self.choice(m["mode"], "mode", {x.value: x for x in Mode})
            if "mode" in m
            else Mode.ENFORCE,
            line=m["name"].start_mark.line + 1,
        )


class _Loader(yaml.SafeLoader):
    """Composes nodes only, refusing anchors and aliases and bounding nodes and depth.

    A policy needs none of YAML's references, and a reference is how a
    small file becomes a large graph. Nesting is checked before PyYAML's
    recursive composer descends, so no file reaches Python's recursion
    limit.
    """

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self._source = source
        self._depth = 0
        self._nodes = 0

    def _refuse(self, event: NodeEvent, message: str) -> PolicyError:
        mark = event.start_mark
        return PolicyError(self._source, mark.line + 1 if mark is not None else 0, message)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event: NodeEvent = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            raise self._refuse(event, f"alias *{event.anchor} is not accepted: write the value out")
        if event.anchor is not None:
            raise self._refuse(
                event, f"anchor &{event.anchor} is not accepted: policies use no YAML references"
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise self._refuse(event, f"more than {MAX_NODES} YAML values in one file")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._refuse(event, f"nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text: str, source: str) -> Node | None:
    if len(text) > MAX_BYTES:  # characters, at least as many bytes
        raise PolicyError(source, 0, f"larger than {MAX_BYTES} bytes: not a policy file")
    try:
        loader = _Loader(text, source)
    except yaml.reader.ReaderError as exc:  # checked up front, for the whole text
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise PolicyError(
            source, line, f"invalid YAML: character U+{exc.character:04X} is not allowed"
        ) from None
    try:
        node: Node | None = loader.get_single_node()
        return node
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise PolicyError(source, line, f"invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, 0, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def parse_text(text: str, source: str) -> list[Policy]:
    """The policies of one YAML document; PolicyError (file:line: problem) for any other input."""
    try:
        root = _compose(text, source)
        if root is None:
            raise PolicyError(source, 1, "empty file: expected `policies:`")
        r = _Reader(source)
        top = r.mapping(root, "the file", frozenset({"policies"}))
        if "policies" not in top:
            raise PolicyError(source, 1, "expected a top-level `policies:` list")
        return list(r.each(top["policies"], "policies", r.policy))
    except PolicyError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:
        # Not expected: the checks above cover what a file can say. Still a
        # refusal of the file, never an exception that stops the daemon.
        raise PolicyError(source, 0, f"cannot be read as a policy ({type(exc).__name__})") from None


def read_documents(paths: list[Path], strict: bool = False) -> list[tuple[str, str]]:
    """(file name, text) of each file named and of each directory's *.yaml
    and *.yml, sorted. `strict` (the daemon's own loading): refuse a file
    that a user other than root could change, since whoever changes a
    policy decides what a root daemon sees and kills."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted([*p.glob("*.yaml"), *p.glob("*.yml")]))
        else:
            files.append(p)
    docs = []
    for f in files:
        try:
            data = _read_strict(f) if strict else _read(f)
            docs.append((str(f), data.decode("utf-8")))
        except UnicodeDecodeError as exc:
            raise PolicyError(
                str(f), 0, f"not UTF-8 text: {exc.reason} at byte {exc.start}"
            ) from None
        except OSError as exc:
            raise PolicyError(str(f), 0, f"cannot read: {exc}") from None
    return docs


def _read(f: Path) -> bytes:
    with open(f, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise PolicyError(str(f), 0, f"larger than {MAX_BYTES} bytes: not a policy file")
    return data


def _read_strict(f: Path) -> bytes:
    """The bytes of a policy file only root could have written, checked on the
    descriptor they are read from.

    A symlink is followed only when root owns it (a ConfigMap volume is a
    chain of root's links); then the file it names is opened with
    O_NOFOLLOW, so a link swapped in after the checks fails the open.
    """
    named = Path(os.path.abspath(f))
    try:
        if named.is_symlink() and os.lstat(named).st_uid != 0:
            raise PolicyError(
                str(f), 0,
                f"the symlink is owned by uid {os.lstat(named).st_uid}, not root: its owner can "
                "point it at any file; whoever changes a policy decides what this daemon "
                "sees and kills",
            )
        path = named.resolve(strict=True)
        fd = os.open(path, safefile.READ_FLAGS)
    except OSError as exc:
        if safefile.is_link_error(exc):
            raise PolicyError(
                str(f), 0, "changed while being opened (now a symlink); refused"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(str(f), 0, f"is {safefile.kind(st.st_mode)}, not a regular file")
        _refuse_shared(f, st, path, named)
        chunks = []
        size = 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        raise PolicyError(str(f), 0, f"larger than {MAX_BYTES} bytes: not a policy file")
    return b"".join(chunks)


def _refuse_shared(f: Path, st: os.stat_result, path: Path, named: Path) -> None:
    """Refuse a policy file that a user other than root could change: by
    writing it, or by replacing it (or a symlink to it) in any directory
    up to / (as sshd's StrictModes checks its files)."""
    problem = None
    who = safefile.changed_by(st)
    if who is not None:
        problem = f"the file can be changed by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        # A symlink's own directories count too: they decide where it points.
        problem = safefile.shared_directory([path.parent, named.parent])
    if problem is not None:
        raise PolicyError(
            str(f), 0,
            f"{problem}, not only root; whoever changes a policy decides what this daemon "
            "sees and kills",
        )


def parse_documents(docs: list[tuple[str, str]]) -> PolicySet:
    """Every policy of (file name, YAML text) pairs, all or nothing."""
    out = PolicySet()
    seen: dict[str, str] = {}  # name -> where
    for source, text in docs:
        for pol in parse_text(text, source):
            if pol.name in seen:
                raise PolicyError(
                    source, pol.line, f"policy {pol.name!r} is also defined at {seen[pol.name]}"
                )
            seen[pol.name] = f"{source}:{pol.line}"
            out.policies.append(pol)
    return out


def parse_files(paths: list[Path], strict: bool = False) -> PolicySet:
    """Every policy of every file (directories: their *.yaml, sorted), all or nothing."""
    return parse_documents(read_documents(paths, strict))
