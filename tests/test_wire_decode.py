"""file_open and connect records decoded in C (tracer/core/_wire.c) against
their Python model (tests/decode_ref.py): equal records for any field
values, and for truncated, overrunning or random bytes the same WireError
(message included), never a crash."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import struct

import decode_ref
import pytest
from factories import BOUNDED, BorrowedSlot
from hypothesis import given
from hypothesis import strategies as st

from tracer.core import _wire, build, decode
from tracer.core.decode import (
    CONNECT_SIZE,
    CONNECT_TAIL,
    CONNECT_TAIL_OFFSET,
    FILE_PATH_OFFSET,
    FILE_TAIL,
    FILE_TAIL_OFFSET,
    HDR,
    KIND_CONNECT,
    KIND_FILE_OPEN,
    TASK,
    TASK_OFFSET,
    VERDICT,
    VERDICT_OFFSET,
    ConnectRecord,
    FileOpenRecord,
    Task,
    Verdict,
    WireError,
)
from tracer.core.events import Connect, ConnectInfo, FileInfo, FileOpen


def _ints(fmt: str) -> st.SearchStrategy[int]:
    bits = {"B": 8, "H": 16, "I": 32, "Q": 64}
    if fmt == "q":
        return st.integers(-(2**63), 2**63 - 1)
    return st.integers(0, 2 ** bits[fmt] - 1)


def _fields(fields: tuple[tuple[str, str], ...]) -> st.SearchStrategy[list[object]]:
    return st.tuples(
        *(
            st.binary(min_size=int(f[:-1]), max_size=int(f[:-1])) if f.endswith("s") else _ints(f)
            for _, f in fields
        )
    ).map(list)


@st.composite
def _head(draw: st.DrawFn) -> bytes:
    """Task and verdict: any values (auid unset, comm without NUL included)."""
    task = draw(_fields(decode.TASK_FIELDS))
    if draw(st.booleans()):
        task[10] = decode.AUID_UNSET
    verdict = draw(st.sampled_from([(0, 0, 0, 0), (1, 2, 1, 0), (7, 63, 4, 9)]))
    return TASK.pack(*task) + VERDICT.pack(*verdict)


@st.composite
def file_open_records(draw: st.DrawFn) -> bytes:
    path = draw(st.binary(max_size=64) | st.binary(min_size=4096, max_size=4096))
    source = draw(st.binary(max_size=64))
    tail = draw(_fields(decode.FILE_TAIL_FIELDS))
    tail[5], tail[7] = len(path), len(source)  # path_len, source_len
    body = draw(_head()) + FILE_TAIL.pack(*tail) + path + source
    pad = draw(st.binary(max_size=8))  # the ring pads records; size excludes it
    return HDR.pack(KIND_FILE_OPEN, HDR.size + len(body)) + body + pad


@st.composite
def connect_records(draw: st.DrawFn) -> bytes:
    body = draw(_head()) + CONNECT_TAIL.pack(*draw(_fields(decode.CONNECT_TAIL_FIELDS)))
    pad = draw(st.binary(max_size=8))
    return HDR.pack(KIND_CONNECT, HDR.size + len(body)) + body + pad


# Where the u16 string lengths are: file_open's path_len and source_len, connect's path_len.
_FILE_LENGTHS = (
    FILE_TAIL_OFFSET + struct.calcsize("<qIIIH"),
    FILE_TAIL_OFFSET + struct.calcsize("<qIIIHHH"),
)
_CONNECT_PATH_LEN = CONNECT_TAIL_OFFSET + struct.calcsize("<qHHHHHH")


def _outcome(fn: object, raw: bytes) -> tuple[str, object]:
    try:
        return ("record", fn(raw))  # type: ignore[operator]
    except WireError as exc:
        return ("WireError", str(exc))


@BOUNDED
@given(file_open_records() | connect_records())
def test_the_c_record_equals_the_python_models(raw: bytes) -> None:
    rec = decode.decode(raw)
    assert isinstance(rec, FileOpenRecord | ConnectRecord)
    assert type(rec.task) is Task and type(rec.verdict) is Verdict
    assert rec == decode_ref.decode(raw)


@BOUNDED
@given(file_open_records() | connect_records(), st.data())
def test_a_damaged_record_is_the_same_wire_error_or_record(raw: bytes, data: st.DataObject) -> None:
    damaged = bytearray(raw)
    cut = data.draw(st.integers(0, len(raw)))
    # Damage the size and the string lengths, then cut anywhere.
    for offset in (4, *_FILE_LENGTHS, _CONNECT_PATH_LEN):
        if data.draw(st.booleans()) and offset + 2 <= len(damaged):
            damaged[offset : offset + 2] = data.draw(st.binary(min_size=2, max_size=2))
    damaged = damaged[:cut]
    assert _outcome(_c_or_ref_none, bytes(damaged)) == _outcome(decode_ref.decode, bytes(damaged))


def _c_or_ref_none(raw: bytes) -> object:
    # decode.decode raises the header errors for what C leaves to Python.
    return decode._C.decode(raw)


def test_random_bytes_of_either_kind_never_crash_and_match_the_model() -> None:
    rng = random.Random(18)
    for _ in range(20_000):
        n = rng.choice([rng.randrange(0, 16), rng.randrange(0, 600), rng.randrange(0, 9000)])
        raw = bytearray(rng.randbytes(n))
        if n >= HDR.size and rng.random() < 0.9:
            size = rng.choice([n, rng.randrange(0, n + 1), rng.randrange(0, 2**32)])
            HDR.pack_into(raw, 0, rng.choice([KIND_FILE_OPEN, KIND_CONNECT]), size)
        raw_b = bytes(raw)
        assert _outcome(_c_or_ref_none, raw_b) == _outcome(decode_ref.decode, raw_b)
        with contextlib.suppress(WireError):  # the header errors are decode.py's
            decode.decode(raw_b)


@pytest.mark.parametrize(
    ("kind", "minimum", "message"),
    [
        (KIND_FILE_OPEN, FILE_PATH_OFFSET, "file_open record of"),
        (KIND_CONNECT, CONNECT_SIZE, "connect record of"),
    ],
)
def test_a_record_too_short_for_its_kind_is_a_wire_error(
    kind: int, minimum: int, message: str
) -> None:
    raw = HDR.pack(kind, minimum - 1) + b"\0" * (minimum - 1 - HDR.size)
    with pytest.raises(WireError, match=f"{message} {minimum - 1} bytes is too short"):
        decode.decode(raw)


def test_the_c_offsets_are_the_python_layouts_checked_against_btf() -> None:
    # tests/test_wire_layout.py holds decode's offsets to the BTF; the C
    # reads bpf_probes/tracer.h itself: both must agree.
    assert _wire.FILE_PATH_OFFSET == FILE_PATH_OFFSET
    assert _wire.CONNECT_SIZE == CONNECT_SIZE
    assert _wire.VERDICT_OFFSET == VERDICT_OFFSET == TASK_OFFSET + TASK.size


def test_records_of_one_rule_share_one_verdict_and_any_buffer_decodes() -> None:
    raw = HDR.pack(KIND_CONNECT, CONNECT_SIZE) + b"\0" * (CONNECT_SIZE - HDR.size)
    raw = raw[:VERDICT_OFFSET] + VERDICT.pack(3, 4, 1, 0) + raw[VERDICT_OFFSET + VERDICT.size :]
    a, b = decode.decode(raw), decode.decode(bytearray(raw))
    c = decode.decode(memoryview(raw))  # type: ignore[arg-type]
    assert a == b == c
    assert a.verdict is b.verdict is c.verdict  # type: ignore[union-attr]
    assert a.verdict == Verdict(3, 4, 1)  # type: ignore[union-attr]


def test_a_class_without_the_named_slots_is_refused_at_import() -> None:
    class NoSlots:
        pass

    with pytest.raises(TypeError, match="is not a slot"):
        _wire.Decoder(NoSlots, FileOpenRecord, ConnectRecord, Verdict, WireError)


@pytest.mark.parametrize("made", ["_FILE_INFO", "_FILE_OPEN", "_CONNECT_INFO", "_CONNECT"])
def test_an_event_made_slot_by_slot_equals_the_one_its_init_makes(made: str) -> None:
    maker = getattr(build, made)
    cls = {"_FILE_INFO": FileInfo, "_FILE_OPEN": FileOpen}.get(made)
    cls = cls or {"_CONNECT_INFO": ConnectInfo, "_CONNECT": Connect}[made]
    # A distinct value per field: a slot filled from the wrong value shows.
    values = [object() for _ in dataclasses.fields(cls)]
    made_obj, init_obj = maker(*values), cls(*values)
    assert type(made_obj) is cls
    for f in dataclasses.fields(cls):
        assert getattr(made_obj, f.name) is getattr(init_obj, f.name), f.name
    with pytest.raises(TypeError, match="positional values"):
        maker(*values[:-1])


def test_a_class_whose_init_does_more_is_not_made_slot_by_slot() -> None:
    @dataclasses.dataclass(slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            raise ValueError

    with pytest.raises(TypeError, match="does more than set its fields"):
        build.slot_maker(Checked)


def test_a_slot_descriptor_of_another_class_is_refused() -> None:
    # Its offset is the other class's: it may lie past the object.
    with pytest.raises(TypeError, match=r"BorrowedSlot\.w is not a slot"):
        _wire.Maker(BorrowedSlot, ("x", "w"))


def test_a_slot_named_twice_is_refused() -> None:
    class One:
        __slots__ = ("a",)

    with pytest.raises(TypeError, match=r"One\.a is named twice"):
        _wire.Maker(One, ("a", "a"))


def test_a_record_class_with_a_field_the_c_does_not_fill_is_refused() -> None:
    fields = [(f.name, f.type) for f in dataclasses.fields(FileOpenRecord)]
    longer = dataclasses.make_dataclass(
        "FileOpenRecord", [*fields, ("inode", int, dataclasses.field(default=0))], slots=True
    )
    with pytest.raises(TypeError, match="attributes other than the 10 named"):
        _wire.Decoder(Task, longer, ConnectRecord, Verdict, WireError)


def test_a_decoder_is_initialized_once_and_whole() -> None:
    raw = HDR.pack(KIND_CONNECT, CONNECT_SIZE) + b"\0" * (CONNECT_SIZE - HDR.size)
    d = _wire.Decoder.__new__(_wire.Decoder)
    with pytest.raises(TypeError, match="Decoder is not initialized"):
        d.decode(raw)
    with pytest.raises(TypeError, match="Decoder is not initialized"):
        d.verdict(raw)
    # The task class was taken before the connect class was refused.
    with pytest.raises(TypeError, match="is not a slot"):
        d.__init__(Task, FileOpenRecord, object, Verdict, WireError)
    with pytest.raises(TypeError, match="Decoder is not initialized"):
        d.decode(raw)
    d.__init__(Task, FileOpenRecord, ConnectRecord, Verdict, WireError)
    assert d.decode(raw) == decode.decode(raw)
    with pytest.raises(TypeError, match="already initialized"):
        d.__init__(Task, FileOpenRecord, ConnectRecord, Verdict, WireError)


def test_a_maker_is_initialized_once() -> None:
    with pytest.raises(TypeError, match="Maker not initialized"):
        _wire.Maker.__new__(_wire.Maker)()
    maker = build.slot_maker(FileInfo)
    with pytest.raises(TypeError, match="already initialized"):
        maker.__init__(Connect, tuple(f.name for f in dataclasses.fields(Connect)))
