"""Hostile input to the parsers and writers a local user or a forged log can reach.

Property-based (hypothesis), each bounded so `make test` pays seconds;
`bench/fuzz_long.sh` runs the same properties far longer. Each property
says what must hold whatever the input: no exception but the documented
one, nothing raw reaches a terminal, every line stays one valid line.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from factories import BOUNDED, events
from hypothesis import given
from hypothesis import strategies as st

from export.filters import FilterError, facts_of_dict
from export.jsonl import Serializer
from tracer.core import terminal
from tracer.core.events import Event
from tracer.core.labels import parse_selector

# What a forged or damaged log line may hold anywhere: any value orjson.loads
# can return (it reads big integers as floats, refuses infinities and lone
# surrogates).
_STR = st.text(st.characters(exclude_categories=("Cs",)))
_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _STR,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(_STR, inner, max_size=4),
    max_leaves=20,
)
_TYPES = st.sampled_from(["process_exec", "process_exit", "file_open", "connect", "lost", "x"])


def _unsafe(text: str) -> list[str]:
    return [ch for ch in text if not ch.isprintable()]


@BOUNDED
@given(st.text())
def test_escape_leaves_nothing_a_terminal_would_obey(text: str) -> None:
    shown = terminal.escape(text)
    assert _unsafe(shown) == []
    assert shown == text or "\\" in shown


@BOUNDED
@given(st.dictionaries(_STR, _JSON, max_size=6), _TYPES)
def test_a_forged_event_renders_as_one_safe_line_or_json(ev: dict[str, Any], kind: str) -> None:
    ev["type"] = kind
    line = terminal.compact(ev, color=False)
    assert "\n" not in line and _unsafe(line) == []
    raw = terminal.json_line(ev)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert _unsafe(raw.decode()[:-1]) == []
    assert json.loads(raw) == json.loads(orjson.dumps(ev))
    facts_of_dict(ev)  # filters read forged lines too (tracer events --from)


@BOUNDED
@given(events())
def test_every_event_is_one_json_line_that_parses_back(ev: Event) -> None:
    line = Serializer().line(ev)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    d = orjson.loads(line)
    assert d["type"] == ev.type and d["node"] == ev.node


@BOUNDED
@given(st.text(max_size=200))
def test_a_label_selector_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        reqs = parse_selector(text)
    except (FilterError, ValueError):
        return
    for r in reqs:
        r.matches({"app": "web"})
