"""Kernel bytes to text (tracer/core/text.py) and to records (tracer/core/decode.py).

Pure Python: records are packed by hand with the struct layouts that
tracer/core/decode.py declares (tests/test_wire_layout.py checks those layouts
against the BPF side).
"""

from __future__ import annotations

import random

import pytest

from tracer.core import decode as wire
from tracer.core import text
from tracer.core.decode import (
    EXEC_DATA_OFFSET,
    EXEC_TAIL,
    EXEC_TRUNC_ARGS,
    EXEC_TRUNC_PATH,
    EXIT_SIZE,
    EXIT_TAIL,
    FORK_SIZE,
    HDR,
    KIND_EXEC,
    KIND_EXIT,
    KIND_FORK,
    TASK,
    VERDICT,
    ExecRecord,
    ExitRecord,
    ForkRecord,
    WireError,
    split_args,
)


def roundtrip(raw: bytes) -> bytes:
    """The bytes a consumer rebuilds from what decode() gave: unescape only flagged strings."""
    s, escaped = text.decode(raw)
    return text.encode(s) if escaped else s.encode("utf-8")


# -- text ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"/usr/bin/python3",
        b"C:\\path\\with\\backslashes",
        b"\\x41 looks like an escape but is plain text",
        "h\u00e9llo w\u00f6rld \u2603 \U0001f600".encode(),
        b"tab\tnewline\nesc\x1b[0m nul-free",
    ],
)
def test_valid_utf8_passes_through_unchanged_and_unflagged(raw: bytes) -> None:
    s, escaped = text.decode(raw)
    assert escaped is False
    assert s == raw.decode("utf-8")


def test_invalid_byte_is_escaped_as_hex_and_flagged() -> None:
    s, escaped = text.decode(b"ab\xffcd")
    assert escaped is True
    assert s == "ab\\xffcd"


def test_each_invalid_byte_is_escaped_lowercase_two_digits() -> None:
    s, escaped = text.decode(b"\x80\xc3\x28\xfe")  # \xc3 starts a sequence that ( breaks
    assert escaped
    assert s == "\\x80\\xc3(\\xfe"


def test_valid_utf8_next_to_invalid_bytes_is_kept_as_characters() -> None:
    s, escaped = text.decode("\u00e9".encode() + b"\xff" + "\u2603".encode())
    assert escaped
    assert s == "\u00e9\\xff\u2603"


def test_backslashes_doubled_only_in_escaped_strings() -> None:
    plain, plain_escaped = text.decode(b"a\\b")
    assert (plain, plain_escaped) == ("a\\b", False)

    mixed, mixed_escaped = text.decode(b"a\\b\xff")
    assert mixed_escaped
    assert mixed == "a\\\\b\\xff"


def test_literal_backslash_x_in_escaped_string_is_not_taken_for_an_escape() -> None:
    raw = b"\\x41\xff"
    s, escaped = text.decode(raw)
    assert escaped
    assert s == "\\\\x41\\xff"
    assert text.encode(s) == raw


def test_encoded_surrogate_bytes_are_escaped_not_passed_as_surrogates() -> None:
    raw = b"\xed\xb2\x80"  # what UTF-8 of U+DC80 would be: not valid UTF-8
    s, escaped = text.decode(raw)
    assert escaped
    assert s == "\\xed\\xb2\\x80"
    s.encode("utf-8")  # strict: no lone surrogates survive into the text
    assert text.encode(s) == raw


def _random_bytes(rng: random.Random) -> bytes:
    alphabet = [
        b"\\",
        b"\n",
        b"\x1b",
        b"x",
        b"\\x",
        b"\\\\",
        b"\xff",
        b"\x80",
        b"\xc3",
        "\u00e9".encode(),
        "\u2603".encode(),
        "\U0001f600".encode(),
        b"\0",
        b"A",
        b"7",
    ]
    parts: list[bytes] = []
    for _ in range(rng.randrange(0, 24)):
        if rng.random() < 0.5:
            parts.append(rng.choice(alphabet))
        else:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5))))
    return b"".join(parts)


def test_decode_is_reversible_for_random_bytes() -> None:
    rng = random.Random(20240611)
    escaped_seen = 0
    for _ in range(2000):
        raw = _random_bytes(rng)
        s, escaped = text.decode(raw)
        escaped_seen += escaped
        s.encode("utf-8")  # always valid text for JSON
        assert roundtrip(raw) == raw, raw
    # The generator must exercise both paths for the property to mean anything.
    assert 200 < escaped_seen < 2000


def test_decode_is_reversible_for_every_single_byte_and_pair_with_backslash() -> None:
    for b in range(256):
        for raw in (bytes([b]), b"\\" + bytes([b]), bytes([b]) + b"\\", bytes([b, 0xFF])):
            assert roundtrip(raw) == raw, raw


# -- split_args ------------------------------------------------------------


def test_split_args_empty_buffer_is_no_args() -> None:
    assert split_args(b"") == ()


def test_split_args_drops_only_the_last_terminator() -> None:
    assert split_args(b"ls\0-l\0/tmp\0") == (b"ls", b"-l", b"/tmp")


def test_split_args_keeps_empty_arguments() -> None:
    assert split_args(b"prog\0\0") == (b"prog", b"")  # prog ''
    assert split_args(b"prog\0\0x\0") == (b"prog", b"", b"x")  # prog '' x
    assert split_args(b"\0") == (b"",)  # a single empty argv[0]


def test_split_args_keeps_a_cut_last_argument() -> None:
    assert split_args(b"prog\0abc") == (b"prog", b"abc")
    assert split_args(b"abc") == (b"abc",)


# -- decode() of packed records ------------------------------------------

TASK_VALUES: dict[str, int | bytes] = {
    "ktime": 5_000_000_123,
    "start_boottime": 4_000_000_456,
    "cgroup_id": (1 << 63) + 17,
    "tgid": 4242,
    "tid": 4243,
    "ppid": 4000,
    "uid": 1000,
    "euid": 0,
    "gid": 1001,
    "egid": 1002,
    "auid": 1000,
    "comm": b"sh",
}


def pack_task(**overrides: int | bytes) -> bytes:
    v = {**TASK_VALUES, **overrides}
    return TASK.pack(
        v["ktime"],
        v["start_boottime"],
        v["cgroup_id"],
        v["tgid"],
        v["tid"],
        v["ppid"],
        v["uid"],
        v["euid"],
        v["gid"],
        v["egid"],
        v["auid"],
        v["comm"],
        v.get("flags", 0),
        0,  # pad
    )


def pack_exec(
    path: bytes, cwd: bytes, args: bytes, flags: int = 0, pad_to: int = 8, **task: int | bytes
) -> bytes:
    verdict = VERDICT.pack(0, 0, 0, 0)
    tail = EXEC_TAIL.pack(flags, len(path), len(cwd), len(args), 0, 0, 0, 0)
    body = pack_task(**task) + verdict + tail
    body += path + cwd + args
    size = HDR.size + len(body)
    rec = HDR.pack(KIND_EXEC, size) + body
    return rec + b"\0" * (-len(rec) % pad_to)  # ring-buffer records are padded


def pack_fork(**task: int | bytes) -> bytes:
    return HDR.pack(KIND_FORK, FORK_SIZE) + pack_task(**task)


def pack_exit(status: int, **task: int | bytes) -> bytes:
    return HDR.pack(KIND_EXIT, EXIT_SIZE) + pack_task(**task) + EXIT_TAIL.pack(status, 0)


def test_decode_exec_record() -> None:
    raw = pack_exec(b"/bin/ls", b"/home/u", b"ls\0-l\0\0", flags=EXEC_TRUNC_PATH)
    rec = wire.decode(raw)
    assert isinstance(rec, ExecRecord)
    t = rec.task
    assert (t.ktime, t.start_boottime, t.cgroup_id) == (
        5_000_000_123,
        4_000_000_456,
        (1 << 63) + 17,
    )
    assert (t.pid, t.tid, t.ppid) == (4242, 4243, 4000)
    assert (t.uid, t.euid, t.gid, t.egid, t.auid) == (1000, 0, 1001, 1002, 1000)
    assert t.comm == b"sh"  # NUL padding of the 16-byte comm removed
    assert rec.binary == b"/bin/ls"
    assert rec.cwd == b"/home/u"
    assert rec.args == (b"ls", b"-l", b"")
    assert rec.flags == EXEC_TRUNC_PATH
    assert rec.args_truncated is False


def test_decode_exec_with_truncated_args_flag_and_cut_argument() -> None:
    rec = wire.decode(pack_exec(b"/bin/echo", b"/", b"echo\0aaaa", flags=EXEC_TRUNC_ARGS))
    assert isinstance(rec, ExecRecord)
    assert rec.args_truncated is True
    assert rec.args == (b"echo", b"aaaa")


def test_decode_exec_with_empty_strings() -> None:
    rec = wire.decode(pack_exec(b"", b"", b""))
    assert isinstance(rec, ExecRecord)
    assert (rec.binary, rec.cwd, rec.args) == (b"", b"", ())


def test_decode_unset_auid_is_none_and_full_comm_is_kept() -> None:
    rec = wire.decode(pack_fork(auid=wire.AUID_UNSET, comm=b"0123456789abcdef"))
    assert isinstance(rec, ForkRecord)
    assert rec.task.auid is None
    assert rec.task.comm == b"0123456789abcdef"


def test_decode_fork_record() -> None:
    rec = wire.decode(pack_fork(tgid=7, tid=7, ppid=1))
    assert isinstance(rec, ForkRecord)
    assert (rec.task.pid, rec.task.tid, rec.task.ppid) == (7, 7, 1)


@pytest.mark.parametrize(
    ("status", "code", "signal", "core"),
    [
        (0, 0, None, False),
        (3 << 8, 3, None, False),
        (255 << 8, 255, None, False),
        (9, None, 9, False),  # SIGKILL
        (11 | 0x80, None, 11, True),  # SIGSEGV, core dumped
    ],
)
def test_decode_exit_record_status(
    status: int, code: int | None, signal: int | None, core: bool
) -> None:
    rec = wire.decode(pack_exit(status))
    assert isinstance(rec, ExitRecord)
    assert rec.status == status
    assert rec.code == code
    assert rec.signal == signal
    assert bool(rec.status & 0x80) is core


def test_decode_rejects_buffer_shorter_than_header() -> None:
    with pytest.raises(WireError, match="shorter than its header"):
        wire.decode(b"\x01\x00\x00")


def test_decode_rejects_record_larger_than_what_arrived() -> None:
    raw = pack_fork()
    with pytest.raises(WireError, match="arrived"):
        wire.decode(raw[:-1])


@pytest.mark.parametrize(
    ("kind", "minimum"),
    [(KIND_EXEC, EXEC_DATA_OFFSET), (KIND_FORK, FORK_SIZE), (KIND_EXIT, EXIT_SIZE)],
)
def test_decode_rejects_records_too_short_for_their_kind(kind: int, minimum: int) -> None:
    size = minimum - 1
    raw = HDR.pack(kind, size) + b"\0" * (size - HDR.size)
    with pytest.raises(WireError, match="too short"):
        wire.decode(raw)


def test_decode_rejects_exec_strings_that_overrun_the_record() -> None:
    raw = bytearray(pack_exec(b"/bin/ls", b"/", b"ls\0", pad_to=1))
    # Claim one more byte of args than the record holds.
    flags, plen, clen, alen, *rest = EXEC_TAIL.unpack_from(raw, wire.EXEC_TAIL_OFFSET)
    EXEC_TAIL.pack_into(raw, wire.EXEC_TAIL_OFFSET, flags, plen, clen, alen + 1, *rest)
    with pytest.raises(WireError, match="overrun"):
        wire.decode(bytes(raw))


def test_decode_exec_string_lengths_are_bounded_by_size_not_by_padding() -> None:
    # Padding after `size` must not be read as strings.
    raw = bytearray(pack_exec(b"/bin/ls", b"/", b"ls\0", pad_to=64))
    flags, plen, clen, alen, *rest = EXEC_TAIL.unpack_from(raw, wire.EXEC_TAIL_OFFSET)
    EXEC_TAIL.pack_into(raw, wire.EXEC_TAIL_OFFSET, flags, plen, clen, alen + 1, *rest)
    assert len(raw) > HDR.unpack_from(raw)[1] + 1
    with pytest.raises(WireError, match="overrun"):
        wire.decode(bytes(raw))


def test_decode_rejects_unknown_kind() -> None:
    raw = HDR.pack(99, FORK_SIZE) + pack_task()
    with pytest.raises(WireError, match="unknown record kind 99"):
        wire.decode(raw)
