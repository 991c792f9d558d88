"""Secrets out of command lines, before any output sees them.

Command lines carry passwords and tokens (`mysql -pS3cret`, `curl -u
me:pass`, `--token=...`, `AWS_SECRET_ACCESS_KEY=... cmd`, URLs with
`user:pass@`) to every output, the seven-day event log and SIEMs. The
process cache builds each process image once (enrich/process_cache.py)
and passes its argv through a Redactor there: every event, every output
and every ancestor entry then carries the redacted argv, and the process
gets the `redacted` flag. The original is never kept.

A rule is RE2 (linear time whatever the pattern and the argument) in one
of two shapes, optionally only for some programs (basename of argv[0] or
of the binary):
- `arg`: a pattern searched in each argument; what its `secret` group
  matched becomes `***`;
- `flag`: a pattern an argument must match whole; the next argument is the
  secret (all of it, or what the `value` pattern's `secret` group matched).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import re2  # pyre2
import yaml

# RE2 or nothing: pyre2 would fall back to Python's backtracking `re`.
re2.set_fallback_notification(re2.FALLBACK_EXCEPTION)

MASK = "***"
MAX_RULES = 64
MAX_PATTERN = 1024  # bytes
_SECRET = "secret"
_KEYWORD = (
    r"(?:password|passwd|pwd|secret|token|api[-_]?key|access[-_]?key|private[-_]?key"
    r"|credentials?)"
)


class RedactError(ValueError):
    """A redaction rule or rules file that cannot be used; the message says why."""


@dataclass(slots=True, frozen=True)
class RedactRule:
    name: str
    arg: str | None = None  # searched in each argument; group `secret` is masked
    flag: str | None = None  # matched whole; the next argument is masked
    value: str | None = None  # with `flag`: what of the next argument to mask
    binaries: tuple[str, ...] = ()  # basenames; empty: every program


# The documented default set (README, "Secrets in command lines").
DEFAULT_RULES: tuple[RedactRule, ...] = (
    RedactRule("secret-option", arg=rf"(?i)^--?[\w.-]*{_KEYWORD}[\w.-]*=(?P<secret>.+)$"),
    RedactRule("secret-option-next", flag=rf"(?i)^--?[\w.-]*{_KEYWORD}[\w.-]*$"),
    RedactRule(
        "secret-variable",
        arg=rf"(?i)(?:^|[\s;&|'\"])[a-z_][\w]*{_KEYWORD}[\w]*=(?P<secret>[^\s;&|'\"]+)",
    ),
    RedactRule("url-credentials", arg=r"[A-Za-z][\w+.-]*://[^/\s:@]*:(?P<secret>[^/\s@]+)@"),
    RedactRule(
        "authorization-header",
        arg=r"(?i)authorization:\s*(?:bearer|basic|token|digest)\s+(?P<secret>\S+)",
    ),
    RedactRule(
        "password-p",
        arg=r"^-p(?P<secret>.+)$",
        binaries=("mysql", "mysqldump", "mysqladmin", "mariadb", "mariadb-dump", "sshpass"),
    ),
    RedactRule("sshpass-p", flag=r"^-p$", binaries=("sshpass",)),
    RedactRule(
        "user-password",
        flag=r"^(?:-u|--user|--proxy-user|--http-password|--ftp-password)$",
        value=r"^[^:]*:(?P<secret>.+)$",
        binaries=("curl", "wget"),
    ),
)


# Literals every default rule that applies to any program needs in the
# argument it looks at: most command lines have none, and a screen of plain
# literals spares them every rule. Rules from a file, and rules for named
# programs, are not screened.
_NONE: frozenset[str] = frozenset()
_SCREEN_WORDS = ("pass", "pwd", "secret", "token", "key", "credential", "://", "authorization")


def _may_hold_secret(text: str) -> bool:
    """Whether text has a screen word in any case the rules' (?i) matches.

    casefold() maps every character RE2 folds onto an ASCII letter of the
    words (the long s, the Kelvin sign) to that letter, but the Turkish
    dotted and dotless i, which are folded here too: the screen may pass
    more than the rules match, never less. Plain substring tests after it
    take a quarter of the time of an IGNORECASE regex.
    """
    t = text.casefold()
    if "\u0131" in t or "i\u0307" in t:
        t = t.replace("\u0131", "i").replace("i\u0307", "i")
    return any(map(t.__contains__, _SCREEN_WORDS))


@dataclass(slots=True, frozen=True)
class _Compiled:
    rule: RedactRule
    arg: Any
    flag: Any
    value: Any
    binaries: frozenset[str]


def _compile(pattern: str | None, rule: str, what: str, secret: bool) -> Any:
    if pattern is None:
        return None
    if len(pattern.encode()) > MAX_PATTERN:
        raise RedactError(f"rule {rule!r}: {what} is longer than {MAX_PATTERN} bytes")
    try:
        rx = re2.compile(pattern)
    except re2.error as exc:  # also what RE2 cannot do (lookaround, backreferences)
        raise RedactError(f"rule {rule!r}: {what} is not an RE2 regex: {exc}") from None
    if secret and _SECRET not in rx.groupindex:
        raise RedactError(f"rule {rule!r}: {what} has no (?P<secret>...) group to mask")
    return rx


def _masked(text: str, rx: Any) -> str:
    out, last = [], 0
    for m in rx.finditer(text):
        start, end = m.span(_SECRET)
        if start < 0 or start < last:
            continue
        out += [text[last:start], MASK]
        last = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


class Redactor:
    """Masks the secrets its rules find in a command line."""

    def __init__(self, rules: Sequence[RedactRule] = DEFAULT_RULES) -> None:
        self._screened = tuple(rules) == DEFAULT_RULES
        self._scoped = frozenset(b for r in rules for b in r.binaries)
        if len(rules) > MAX_RULES:
            raise RedactError(f"{len(rules)} redaction rules; at most {MAX_RULES}")
        self._rules = tuple(
            _Compiled(
                r,
                _compile(r.arg, r.name, "arg", secret=True),
                _compile(r.flag, r.name, "flag", secret=False),
                _compile(r.value, r.name, "value", secret=True),
                frozenset(r.binaries),
            )
            for r in rules
        )
        for c in self._rules:
            if (c.arg is None) == (c.flag is None):
                raise RedactError(f"rule {c.rule.name!r}: give it `arg` or `flag`, one of them")
            if c.value is not None and c.flag is None:
                raise RedactError(f"rule {c.rule.name!r}: `value` goes with `flag`")

    def args(self, binary: str, args: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
        """argv with its secrets masked, and whether anything was."""
        if len(args) < 2:
            return args, False  # argv[0] is the program itself
        scoped = self._scoped
        prog, name = binary.rpartition("/")[2], args[0].rpartition("/")[2]
        names = {prog, name} & scoped if prog in scoped or name in scoped else _NONE
        if self._screened and not names and not _may_hold_secret("\0".join(args[1:])):
            return args, False
        rules = [c for c in self._rules if not c.binaries or c.binaries & names]
        out = list(args)
        for i, a in enumerate(args):
            if i == 0:
                continue  # the program itself
            for c in rules:
                if c.arg is not None:
                    out[i] = _masked(out[i], c.arg)
                elif i + 1 < len(args) and c.flag.fullmatch(a):
                    nxt = out[i + 1]
                    out[i + 1] = _masked(nxt, c.value) if c.value is not None else MASK
        if out == list(args):
            return args, False
        return tuple(out), True


def load_rules(path: Path) -> list[RedactRule]:
    """Rules from a YAML file: `redact:` a list of {name, arg | flag [, value], binaries}."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
        doc = yaml.safe_load(data)
    except (OSError, yaml.YAMLError) as exc:
        raise RedactError(f"{path}: cannot read redaction rules: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"redact"} or not isinstance(doc["redact"], list):
        raise RedactError(f"{path}: expected one top-level `redact:` list of rules")
    return [_rule(path, i, item) for i, item in enumerate(doc["redact"])]


def _rule(path: Path, i: int, item: object) -> RedactRule:
    where = f"{path}: rule {i}"
    keys = {"name", "arg", "flag", "value", "binaries"}
    if not isinstance(item, dict) or not set(item) <= keys or "name" not in item:
        raise RedactError(f"{where}: a rule is a mapping with name and arg or flag ({keys})")
    if not all(isinstance(item.get(k), str | None) for k in ("name", "arg", "flag", "value")):
        raise RedactError(f"{where}: name, arg, flag and value are strings")
    binaries = item.get("binaries", [])
    if not isinstance(binaries, list) or not all(isinstance(b, str) for b in binaries):
        raise RedactError(f"{where}: binaries is a list of program names")
    return RedactRule(item["name"], item.get("arg"), item.get("flag"), item.get("value"),
                      tuple(binaries))


def redactor(rules_file: Path | None, enabled: bool) -> Redactor | None:
    """The daemon's: the default rules, a file's instead, or none."""
    if not enabled:
        return None
    rules: Iterable[RedactRule] = DEFAULT_RULES if rules_file is None else load_rules(rules_file)
    return Redactor(list(rules))
