"""The C JSON line (export/_jsonline.c) and time stamp (tracer/core/rfc3339.h)
against their Python models: byte for byte what orjson makes of the whole
event as one dict, for hostile strings (every code point, control
characters, quotes, backslashes, escaped non-UTF-8 kernel bytes, 4 KiB
names), every int the fields can hold, and with every optional field left
out. A str orjson refuses must be refused the same way."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest
from factories import BOUNDED, LS, BorrowedSlot, connect_ev, file_open_ev, processes
from hypothesis import given
from hypothesis import strategies as st
from rfc3339_ref import rfc3339 as rfc3339_ref

from export._jsonline import Shape
from export.jsonl import (
    CONNECT_FIELDS,
    FILE_FIELDS,
    Serializer,
    details_dict,
    policy_dict,
    process_dict,
)
from tracer.core import text
from tracer.core.clock import rfc3339
from tracer.core.events import (
    Connect,
    ConnectInfo,
    FileInfo,
    FileOpen,
    PolicyMatch,
)


def reference_line(ev: FileOpen | Connect) -> bytes:
    """The line as orjson writes the event as one dict, the stamp from the Python model."""
    d: dict[str, object] = {
        "type": ev.type,
        "time": rfc3339_ref(ev.time),
        "node": ev.node,
        "process": process_dict(ev.process),
    }
    if ev.parent is not None:
        d["parent"] = process_dict(ev.parent)
    d["ancestors"] = [process_dict(a) for a in ev.ancestors]
    d[ev.type] = details_dict(ev)
    if ev.policy is not None:
        d["policy"] = policy_dict(ev.policy)
    return orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE)


# Strings that test escaping: any code point but lone surrogates (orjson
# refuses those: see below), the ones JSON escapes made likely, the text
# tracer.core.text makes of any kernel bytes, and 4 KiB names.
_SPECIAL = st.sampled_from(
    ['"', "\\", "\x00", "\x1f", "\x7f", "\n", "\b", "\u2028", "é", "\U0001f600"]
)
_CHARS = st.characters(exclude_categories=("Cs",)) | _SPECIAL
_HOSTILE = st.one_of(
    st.text(_CHARS, max_size=64),
    st.binary(max_size=64).map(lambda b: text.decode(b)[0]),
    st.tuples(st.text(_CHARS, min_size=1, max_size=3), st.integers(1, 4096)).map(
        lambda t: (t[0] * t[1])[:4096]
    ),
)
_INT = st.integers(-(2**63), 2**64 - 1)
_POLICY = st.none() | st.builds(
    PolicyMatch, name=_HOSTILE, rule=st.integers(0, 63), message=_HOSTILE
)


@st.composite
def _file_opens(draw: st.DrawFn) -> FileOpen:
    info = FileInfo(
        draw(_HOSTILE),
        tuple(draw(st.lists(_HOSTILE, max_size=3))),
        draw(_INT),
        draw(_INT),
        draw(st.none() | _HOSTILE),
        draw(_HOSTILE),
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.booleans()),
        draw(_HOSTILE),
        draw(st.none() | _HOSTILE),
        draw(st.booleans()),
    )
    return _event(draw, FileOpen, info)


@st.composite
def _connects(draw: st.DrawFn) -> Connect:
    maybe = st.none() | _HOSTILE
    info = ConnectInfo(
        draw(_HOSTILE),
        draw(maybe),
        draw(_HOSTILE),
        draw(maybe),
        draw(st.none() | _INT),
        draw(maybe),
        draw(st.none() | _INT),
        draw(maybe),
        draw(_INT),
        draw(maybe),
        draw(_HOSTILE),
        draw(_HOSTILE),
        draw(st.booleans()),
    )
    return _event(draw, Connect, info)


def _event(draw: st.DrawFn, cls: type, info: object) -> FileOpen | Connect:
    parent = draw(st.none() | processes())
    p = draw(processes(parent))
    ancestors = tuple(draw(st.lists(processes(), max_size=2))) if parent is not None else ()
    time = draw(st.integers(-(2**63), 2**63 - 1))
    ev: FileOpen | Connect = cls(time, draw(_HOSTILE), p, parent, ancestors, info, draw(_POLICY))
    return ev


@BOUNDED
@given(_file_opens() | _connects())
def test_the_c_line_is_orjsons_line_of_the_whole_event(ev: FileOpen | Connect) -> None:
    line = Serializer().line(ev)
    assert line == reference_line(ev)
    assert line.count(b"\n") == 1


@BOUNDED
@given(_file_opens() | _connects())
def test_both_lines_of_two_serializers_are_each_ones_own(ev: FileOpen | Connect) -> None:
    full, brief = Serializer("full"), Serializer("brief")
    assert full.lines(ev, brief) == (full.line(ev), Serializer("brief").line(ev))


def test_every_field_of_the_details_is_written_in_the_schemas_order() -> None:
    # One list makes both encodings; it must name every field, in the
    # dataclasses' order, which is the .proto's (tests/test_grpc_schema.py).
    for cls, fields in ((FileInfo, FILE_FIELDS), (ConnectInfo, CONNECT_FIELDS)):
        assert [n for n, _ in fields] == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("bad", ["\udc80", "a\ud800b"])
def test_a_lone_surrogate_is_refused_as_orjson_refuses_it(bad: str) -> None:
    for ev in (file_open_ev(LS, path=bad), connect_ev(LS, hook=bad)):
        with pytest.raises(TypeError) as c_error:
            Serializer().line(ev)
        with pytest.raises(TypeError) as reference_error:
            reference_line(ev)
        assert str(c_error.value) == str(reference_error.value)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_an_int_beyond_64_bits_is_refused_as_orjson_refuses_it(value: int) -> None:
    ev = file_open_ev(LS, mode=value)
    with pytest.raises(TypeError, match="64-bit"):
        Serializer().line(ev)
    with pytest.raises(TypeError, match="64-bit"):
        reference_line(ev)


def test_a_value_json_has_no_form_for_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable: float"):
        Serializer().line(file_open_ev(LS, mode=1.5))


def test_a_details_class_without_slots_is_read_by_getattr() -> None:
    # The shape reads slots directly; another class (a subclass with a
    # __dict__, a property) must still be read right.
    class Loose:
        def __init__(self) -> None:
            self.path, self.flags, self.mode, self.result = "/x", (), 1, 0
            self.error, self.hook, self.truncated, self.resolved = None, "h", False, True
            self.non_utf8, self.op, self.source, self.user_memory = False, "open", None, False

    ev = file_open_ev(LS)
    ev.file = Loose()  # type: ignore[assignment]
    assert Serializer().line(ev) == reference_line(ev)
    ev.file = FileInfo("/y", (), 2, 3, None, "h", False, True)
    assert Serializer().line(ev) == reference_line(ev)


@pytest.mark.parametrize(
    "args",
    [("File", "file", ()), ("file_open", "fi le", ()), ("file_open", "file", (('pa"th', False),))],
)
def test_a_shape_takes_only_names_it_can_write_unescaped(
    args: tuple[str, str, tuple[tuple[str, bool], ...]],
) -> None:
    with pytest.raises(ValueError, match=r"\[a-z0-9_\]"):
        Shape(*args)


def test_the_c_time_stamp_is_the_python_models_for_any_64_bit_time() -> None:
    rng = random.Random(18)
    cases = [0, -1, 1, 999_999_999, 10**9, -(2**63), 2**63 - 1, 1_764_157_783_123_000_000]
    for _ in range(100_000):
        ns = rng.randrange(-(2**63), 2**63)
        # Each fraction width: exact seconds, ms, us, ns.
        cases.append(ns - ns % 10 ** rng.choice([0, 3, 6, 9]))
    for ns in cases:
        assert rfc3339(ns) == rfc3339_ref(ns), ns


def test_a_time_beyond_64_bits_is_an_overflow_error() -> None:
    with pytest.raises(OverflowError):
        rfc3339(2**63)
    ev = file_open_ev(LS)
    ev.time = 2**63
    with pytest.raises(OverflowError):
        Serializer().line(ev)


def test_the_second_cached_in_c_follows_every_change_of_second() -> None:
    base = 1_764_157_783 * 10**9
    for ns in (base, base + 1, base + 10**9, base - 1, base + 10**9 - 1, base):
        assert rfc3339(ns) == rfc3339_ref(ns)


class _Ev:
    __slots__ = ("file", "time")

    def __init__(self, details: object) -> None:
        self.time, self.file = 0, details


_LINE = b'{"type":"t","time":"1970-01-01T00:00:00Z","t":%s}\n'


def test_a_slot_descriptor_of_another_class_is_read_by_getattr() -> None:
    # Its offset is the other class's: read from this object it is another slot.
    two = BorrowedSlot()
    two.x, two.y = 1, 2
    with pytest.raises(TypeError, match="doesn't apply to a 'BorrowedSlot' object"):
        Shape("t", "file", (("w", False),)).line(_Ev(two), b"", b"")


def test_a_line_made_inside_a_line_leaves_the_outer_ones_slots_alone() -> None:
    # The inner line reads another class: the slots it looks up for it are
    # not the outer object's.
    class Inner:
        __slots__ = ("a", "b", "c", "d", "e", "f", "g", "x", "y")

        def __init__(self) -> None:
            for name in self.__slots__:
                setattr(self, name, 0)

    class Outer:
        # Sorted before y: Inner's offset of y lands on one of these.
        __slots__ = (*(f"m{i}" for i in range(10)), "y")

        def __init__(self) -> None:
            for name in self.__slots__:
                setattr(self, name, "wrong")
            self.y = 2

        @property
        def x(self) -> int:
            assert shape.line(_Ev(Inner()), b"", b"") == _LINE % b'{"x":0,"y":0}'
            return 1

    shape = Shape("t", "file", (("x", False), ("y", False)))
    assert shape.line(_Ev(Outer()), b"", b"") == _LINE % b'{"x":1,"y":2}'


def test_a_shape_is_initialized_once_and_whole() -> None:
    shape = Shape.__new__(Shape)
    with pytest.raises(TypeError, match="Shape is not initialized"):
        shape.line(_Ev(None), b"", b"")
    with pytest.raises(ValueError, match=r"\[a-z0-9_\]"):
        shape.__init__("t", "file", (("x", False), ("B", False)))
    with pytest.raises(TypeError, match="Shape is not initialized"):
        shape.line(_Ev(None), b"", b"")
    shape.__init__("t", "file", ())
    assert shape.line(_Ev(None), b"", b"") == _LINE % b"{}"
    with pytest.raises(TypeError, match="already initialized"):
        shape.__init__("t", "file", (("x", False),))
