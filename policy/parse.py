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
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

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
)

# Longest string the kernel-side maps hold (TR_POLICY_STR - 1 in tracer.h).
MAX_STRING = 251
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})$")
# An ATT&CK technique id, T1003 or T1003.008; a tag that starts like one must be one.
ATTACK_RE = re.compile(r"^T\d{4}(\.\d{3})?$")
_LOOKS_ATTACK = re.compile(r"^[Tt]\d")
TAG_RE = re.compile(r"^[\w.:/+-]{1,64}$")
MAX_TAGS = 16
MAX_MESSAGE = 256

# Who did it: every event kind accepts these, each also as not_...
_ACTOR = frozenset(
    f"{neg}{name}"
    for name in ("binary", "parent_binary", "ancestor_binary", "uid", "euid")
    for neg in ("", "not_")
)
# Which selectors each event kind accepts.
_SELECTORS: dict[Kind, frozenset[str]] = {
    Kind.EXEC: _ACTOR,
    Kind.FILE_OPEN: _ACTOR | {"path", "not_path"},
    Kind.CONNECT: _ACTOR | {"daddr", "not_daddr", "dport", "not_dport", "path", "not_path"},
}
_STRING_SELECTORS = frozenset(
    f"{neg}{name}" for name in ("binary", "path", "parent_binary", "ancestor_binary")
    for neg in ("", "not_")
)
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
        if absolute and not s.startswith("/"):
            raise self.fail(node, f"{what} {s!r} must be an absolute path")
        return s

    def string_match(self, node: Node, what: str) -> StringMatch:
        if isinstance(node, (ScalarNode, SequenceNode)):  # shorthand: exact values
            return StringMatch(
                exact=self.each(node, what, lambda n: self.path_string(n, what, True))
            )
        m = self.mapping(node, what, frozenset({"exact", "prefix", "suffix"}))
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
        )

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

    def selectors(self, node: Node, kind: Kind) -> Selectors:
        m = self.mapping(node, f"match of a {kind.label} rule", _SELECTORS[kind])
        kw: dict[str, object] = {}
        for key, v in m.items():
            if key in _STRING_SELECTORS:
                sm = self.string_match(v, key)
                if key.endswith("ancestor_binary") and sm.suffix:
                    raise self.fail(v, f"{key} takes exact and prefix values, not suffix")
                kw[key] = sm
            elif key in ("daddr", "not_daddr"):
                kw[key] = self.each(v, key, partial(self.cidr, what=key))
            elif key in ("dport", "not_dport"):
                kw[key] = self.each(v, key, partial(self.port_range, what=key))
            else:
                kw[key] = self.each(v, key, partial(self.integer, what=key, lo=0, hi=0xFFFFFFFE))
        return Selectors(**kw)  # type: ignore[arg-type]

    # -- rules and policies -------------------------------------------

    def rule(self, node: Node) -> Rule:
        m = self.mapping(
            node, "a rule", frozenset({"event", "match", "action", "access", "description"})
        )
        if "event" not in m:
            raise self.fail(node, "a rule needs `event` (exec, file_open or connect)")
        ev = self.string(m["event"], "event")
        if ev not in _KINDS:
            raise self.fail(m["event"], f"unknown event {ev!r} (exec, file_open or connect)")
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


def parse_text(text: str, source: str) -> list[Policy]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise PolicyError(source, line, f"invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, 0, f"invalid YAML: {exc}") from None
    if root is None:
        raise PolicyError(source, 1, "empty file: expected `policies:`")
    r = _Reader(source)
    top = r.mapping(root, "the file", frozenset({"policies"}))
    if "policies" not in top:
        raise PolicyError(source, 1, "expected a top-level `policies:` list")
    return list(r.each(top["policies"], "policies", r.policy))


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
            if strict:
                _refuse_shared(f)
            docs.append((str(f), f.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(str(f), 0, f"cannot read: {exc}") from None
    return docs


def _refuse_shared(f: Path) -> None:
    """Refuse a policy file that a user other than root could change: by
    writing it, or by replacing it (or a symlink to it) in any directory
    up to / (as sshd's StrictModes checks its files)."""
    path = f.resolve()
    named = Path(os.path.abspath(f))  # a symlink's own directories count too
    for part in dict.fromkeys((path, *path.parents, *named.parents)):
        st = part.stat()
        is_dir = part != path
        if is_dir and st.st_mode & stat.S_ISVTX and st.st_uid == 0:
            continue  # sticky, as /tmp: others cannot replace what is not theirs
        who = (
            f"its owner, uid {st.st_uid}" if st.st_uid != 0
            else f"its group, gid {st.st_gid}" if st.st_mode & stat.S_IWGRP and st.st_gid != 0
            else "everyone" if st.st_mode & stat.S_IWOTH
            else None
        )
        if who is not None:
            what = f"directory {part}" if is_dir else "the file"
            raise PolicyError(
                str(f), 0,
                f"{what} can be changed by {who} (mode {stat.S_IMODE(st.st_mode):04o}), "
                "not only root; whoever changes a policy decides what this daemon "
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
