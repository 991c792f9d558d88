"""The ring buffer's reader in C (tracer/core/_ringsink.c), on a ring we write ourselves.

A memfd laid out as the kernel lays out a BPF ring buffer map for mmap (the
consumer's page, the producer's page, the data) lets each test place records,
headers and flag bits exactly where it wants: a record that wraps past the
end, a header in the last 8 bytes, a discarded record, one still reserved.
tests/test_ringbuf.py reads the kernel's own rings.
"""

from __future__ import annotations

import mmap
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tracer.core import _ringsink

PAGE = mmap.PAGESIZE
HEADER = 8
BUSY = 1 << 31
DISCARD = 1 << 30
_POS = struct.Struct("<Q")
_HDR = struct.Struct("<II")


def span(length: int) -> int:
    """Bytes a record takes in the ring: header and body, rounded up to 8."""
    return (length + HEADER + 7) & ~7


@dataclass
class FakeRing:
    """The producer's side, written as bpf_ringbuf_reserve/commit would."""

    fd: int
    mem: mmap.mmap
    size: int
    producer: int = 0

    @property
    def consumer(self) -> int:
        pos: int = _POS.unpack_from(self.mem, 0)[0]
        return pos

    def _write(self, pos: int, data: bytes) -> None:
        base, mask = 2 * PAGE, self.size - 1
        for i in range(0, len(data)):  # byte by byte: a record may wrap anywhere
            self.mem[base + ((pos + i) & mask)] = data[i]

    def reserve(self, body: bytes, flags: int = BUSY) -> int:
        """Write a record at the producer position; its header's position."""
        pos = self.producer
        assert pos + span(len(body)) - self.consumer <= self.size - 1, "ring full"
        self._write(pos, _HDR.pack(len(body) | flags, 0) + body)
        self.producer = pos + span(len(body))
        _POS.pack_into(self.mem, PAGE, self.producer)
        return pos

    def commit(self, pos: int, flags: int = 0) -> None:
        """Clear the busy bit of the record at `pos` (set `flags`, e.g. DISCARD)."""
        off = 2 * PAGE + (pos & (self.size - 1))
        word = _HDR.unpack_from(self.mem, off)[0] & ~BUSY
        struct.pack_into("<I", self.mem, off, word | flags)

    def add(self, body: bytes, flags: int = 0) -> int:
        pos = self.reserve(body)
        self.commit(pos, flags)
        return pos

    def straddles(self, pos: int, length: int) -> bool:
        start = (pos + HEADER) & (self.size - 1)
        return start + length > self.size


@pytest.fixture
def fake() -> Iterator[FakeRing]:
    size = 2 * PAGE
    fd = os.memfd_create("fake-ringbuf")
    os.ftruncate(fd, 2 * PAGE + size)
    mem = mmap.mmap(fd, 2 * PAGE + size)
    try:
        yield FakeRing(fd, mem, size)
    finally:
        mem.close()
        os.close(fd)


def _take(ring: _ringsink.Ring, limit: int = 0) -> list[bytes]:
    out: list[bytes] = []
    assert ring.consume(out, limit) == len(out)
    return out


def test_odd_sized_records_come_out_whole_across_many_wraps(fake: FakeRing) -> None:
    ring = _ringsink.Ring(fake.fd, fake.size)
    rng = random.Random(18)
    straddled = 0
    for _round in range(200):
        sent = []
        for _ in range(rng.randrange(1, 6)):
            body = rng.randbytes(rng.randrange(0, 700))
            pos = fake.add(body)
            straddled += fake.straddles(pos, len(body))
            sent.append(body)
        assert _take(ring) == sent
        assert fake.consumer == fake.producer
        assert ring.used() == 0
    assert fake.producer > 20 * fake.size
    assert straddled >= 20  # the two-piece copy ran, many times


def test_a_header_in_the_last_bytes_has_its_body_at_the_start(fake: FakeRing) -> None:
    ring = _ringsink.Ring(fake.fd, fake.size)
    fake.add(b"p" * (fake.size - 2 * HEADER))  # ends 8 bytes before the end
    assert len(_take(ring)) == 1
    assert fake.producer % fake.size == fake.size - HEADER
    fake.add(b"wrapped body")
    assert _take(ring) == [b"wrapped body"]


def test_a_discarded_record_is_skipped_and_its_space_freed(fake: FakeRing) -> None:
    ring = _ringsink.Ring(fake.fd, fake.size)
    fake.add(b"one")
    fake.add(b"dropped by the program", DISCARD)
    fake.add(b"two")
    assert _take(ring) == [b"one", b"two"]
    assert fake.consumer == fake.producer


def test_a_reserved_record_holds_back_every_later_one(fake: FakeRing) -> None:
    ring = _ringsink.Ring(fake.fd, fake.size)
    fake.add(b"before")
    pending = fake.reserve(b"not committed yet")
    fake.add(b"after")
    assert _take(ring) == [b"before"]
    assert fake.consumer == pending
    assert ring.used() == fake.producer - pending
    assert _take(ring) == []
    fake.commit(pending)
    assert _take(ring) == [b"not committed yet", b"after"]


def test_the_limit_counts_records_taken_not_discarded(fake: FakeRing) -> None:
    ring = _ringsink.Ring(fake.fd, fake.size)
    for i in range(5):
        fake.add(b"gone", DISCARD)
        fake.add(str(i).encode())
    assert _take(ring, 2) == [b"0", b"1"]
    assert _take(ring, 2) == [b"2", b"3"]
    assert _take(ring, 2) == [b"4"]
    assert fake.consumer == fake.producer


def test_records_are_appended_to_what_the_list_holds(fake: FakeRing) -> None:
    ring = _ringsink.Ring(fake.fd, fake.size)
    fake.add(b"new")
    out = [b"old"]
    assert ring.consume(out) == 1
    assert out == [b"old", b"new"]


def test_a_length_past_the_ring_is_refused_not_read(fake: FakeRing) -> None:
    ring = _ringsink.Ring(fake.fd, fake.size)
    fake.add(b"fine")
    _HDR.pack_into(fake.mem, 2 * PAGE + fake.producer, fake.size, 0)
    fake.producer += HEADER
    _POS.pack_into(fake.mem, PAGE, fake.producer)
    out: list[bytes] = []
    with pytest.raises(OSError, match="ring record"):
        ring.consume(out)
    assert out == [b"fine"]  # what came before it is kept


def test_a_closed_ring_refuses_to_consume(fake: FakeRing) -> None:
    ring = _ringsink.Ring(fake.fd, fake.size)
    fake.add(b"x")
    ring.close()
    assert ring.used() == 0
    with pytest.raises(ValueError, match="closed"):
        ring.consume([])
    ring.close()  # twice is fine


@pytest.mark.parametrize("size", [0, PAGE + 1, 3 * PAGE, -PAGE])
def test_a_size_that_is_not_a_power_of_two_pages_is_refused(fake: FakeRing, size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        _ringsink.Ring(fake.fd, size)


def test_a_bad_fd_is_an_os_error() -> None:
    with pytest.raises(OSError):
        _ringsink.Ring(-1, PAGE)
