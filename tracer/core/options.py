"""Settings the command line shows: a dataclass field that carries its flag, help and choices.

The CLI builds its flags from these fields (tracer/config.py), so each
default and each set of choices is written once, beside the setting it
belongs to, and `--help` states the default the code really uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_KEY = "tracer.option"


@dataclass(slots=True, frozen=True)
class Option:
    flag: str
    help: str
    choices: Sequence[str] = ()
    parse: Callable[[str], Any] | None = None  # text -> value; ValueError names the problem
    metavar: str | None = None
    repeat: bool = False  # a repeatable flag, collected into a tuple

    def shown(self, default: object) -> str:
        """The help text with the default, as a person would write it."""
        if self.repeat or default is None or default == () or "(default:" in self.help:
            return self.help
        return f"{self.help} (default: {self._show(default)})"

    def _show(self, value: object) -> str:
        """A default as the flag would take it: sizes in K/M/G, durations with a unit."""
        if self.parse is parse_size and isinstance(value, int):
            for suffix, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
                if value >= size and value % size == 0:
                    return f"{value // size}{suffix}"
        if self.parse is parse_duration and isinstance(value, float):
            for suffix, secs in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
                if value >= secs and value % secs == 0:
                    return f"{value / secs:g}{suffix}"
            return f"{value * 1000:g}ms"
        return str(value)


def option(
    default: Any = dataclasses.MISSING,
    *,
    flag: str,
    help: str,
    choices: Sequence[str] = (),
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    repeat: bool = False,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that the command line sets with `flag`."""
    meta = {_KEY: Option(flag, help, tuple(choices), parse, metavar, repeat)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_of(f: dataclasses.Field[Any]) -> Option | None:
    opt = f.metadata.get(_KEY)
    return opt if isinstance(opt, Option) else None


def field_default(cls: type, name: str) -> Any:
    """The default a settings class gives `name` (its factory's value when it has one)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    raise KeyError(f"{cls.__name__} has no setting {name}")


_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024)."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = 1
    if t and t[-1] in _UNITS:
        mult, t = _UNITS[t[-1]], t[:-1]
    try:
        return int(t) * mult
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 16777216 or 16M)") from None


_DURATIONS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0))


def parse_duration(text: str) -> float:
    """Seconds, with an optional ms/s/m/h/d suffix."""
    t = text.strip().lower()
    unit = 1.0
    for suffix, mult in _DURATIONS:
        if t.endswith(suffix):
            t, unit = t.removesuffix(suffix), mult
            break
    try:
        return float(t) * unit
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 1s, 500ms, 7d)") from None

