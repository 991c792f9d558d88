"""The ring buffer's sample callback in C (tracer/core/_ringsink.c), called as libbpf calls it."""

from __future__ import annotations

import ctypes

from tracer.core import _ringsink

# libbpf's ring_buffer_sample_fn, called with the GIL held as
# ring_buffer__consume() calls it through a PyDLL (tracer/core/bpf.py).
_SAMPLE = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_callback = _SAMPLE(_ringsink.CALLBACK)


def _feed(batch: _ringsink.Batch, record: bytes) -> int:
    buf = ctypes.create_string_buffer(record, len(record))
    return int(_callback(batch.context, ctypes.addressof(buf), len(record)))


def test_each_record_is_copied_whole_in_order() -> None:
    b = _ringsink.Batch()
    records = [b"", b"\x00\x01\xff", b"x" * 70_000]
    assert [_feed(b, r) for r in records] == [0, 0, 0]
    assert b.pending == 3
    assert b.take() == records
    assert b.pending == 0 and b.take() == []


def test_a_full_batch_stops_the_loop_and_keeps_the_record() -> None:
    b = _ringsink.Batch(2)
    assert _feed(b, b"a") == 0
    assert _feed(b, b"b") == _ringsink.BATCH_FULL < 0
    b.limit = 3  # RingBuffer.batch_max
    assert _feed(b, b"c") == _ringsink.BATCH_FULL
    assert b.take() == [b"a", b"b", b"c"]
    assert _feed(b, b"d") == 0


def test_batches_are_separate() -> None:
    first, main = _ringsink.Batch(), _ringsink.Batch()
    _feed(first, b"1")
    _feed(main, b"2")
    assert (first.take(), main.take()) == ([b"1"], [b"2"])
