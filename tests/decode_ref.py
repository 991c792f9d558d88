"""The Python model of the file_open and connect decoding done in C
(tracer/core/_wire.c), which the tests hold the C to: what decode.py did
before it was C, from the Python wire layouts (decode.*_FIELDS, checked
against the BTF by tests/test_wire_layout.py)."""

from __future__ import annotations

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
    VERDICT,
    VERDICT_OFFSET,
    ConnectRecord,
    FileOpenRecord,
    Verdict,
    WireError,
    _task,
)


def _verdict(buf: bytes) -> Verdict:
    policy_id, rule, action, _ = VERDICT.unpack_from(buf, VERDICT_OFFSET)
    return Verdict(policy_id, rule, action)


def decode(buf: bytes) -> FileOpenRecord | ConnectRecord | None:
    """The record, WireError, or None for a header or kind it leaves to decode.py."""
    if len(buf) < HDR.size:
        return None
    kind, size = HDR.unpack_from(buf)
    if size > len(buf):
        return None
    if kind == KIND_FILE_OPEN:
        if size < FILE_PATH_OFFSET:
            raise WireError(f"file_open record of {size} bytes is too short")
        ret, oflags, mode, flags, hook, plen, op, slen = FILE_TAIL.unpack_from(
            buf, FILE_TAIL_OFFSET
        )
        end = FILE_PATH_OFFSET + plen + slen
        if end > size:
            raise WireError(f"file_open strings overrun the record ({end} > {size})")
        path = buf[FILE_PATH_OFFSET : FILE_PATH_OFFSET + plen]
        source = buf[FILE_PATH_OFFSET + plen : end]
        return FileOpenRecord(
            _task(buf), _verdict(buf), ret, oflags, mode, flags, hook, path, op, source
        )
    if kind == KIND_CONNECT:
        if size < CONNECT_SIZE:
            raise WireError(f"connect record of {size} bytes is too short")
        (ret, fam, proto, stype, hook, dport, sport, plen, via, cflags, daddr, saddr, upath) = (
            CONNECT_TAIL.unpack_from(buf, CONNECT_TAIL_OFFSET)
        )
        return ConnectRecord(
            _task(buf),
            _verdict(buf),
            ret,
            fam,
            proto,
            stype,
            hook,
            dport,
            sport,
            daddr,
            saddr,
            upath[: min(plen, len(upath))],
            via,
            cflags,
        )
    return None
