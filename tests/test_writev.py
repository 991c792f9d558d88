"""export._writev: every byte out, in order, whatever the batch size or a short write."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from export import StreamLines, _writev
from export._writev import _IOV_MAX, writev_all


def test_more_lines_than_iov_max_arrive_whole_and_in_order(tmp_path: Path) -> None:
    lines = [f"{i}:{'x' * (i % 7)}\n".encode() for i in range(3 * _IOV_MAX + 5)]
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        writev_all(fd, lines)
        writev_all(fd, [])
        writev_all(fd, [b"", b"last\n"])
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(lines) + b"last\n"


def test_short_writes_to_a_pipe_are_resumed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A blocking write to a pipe whose reader lags returns early, with what
    # it had written, when a signal arrives: a timer interrupts it often.
    lines = [bytes([65 + i % 26]) * 4093 + b"\n" for i in range(512)]
    r, w = os.pipe()
    got = bytearray()
    short = []
    real = os.writev

    def observed(fd: int, bufs: list[bytes]) -> int:
        n = real(fd, bufs)
        if n < sum(map(len, bufs)):
            short.append(n)
        return n

    monkeypatch.setattr(_writev.os, "writev", observed)

    def read() -> None:
        while chunk := os.read(r, 1 << 12):
            got.extend(chunk)
            time.sleep(0.0002)

    t = threading.Thread(target=read)
    t.start()
    old = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
    try:
        writev_all(w, lines)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(w)
        t.join(10)
        os.close(r)
    assert short, "no write was cut short: the test did not test resuming"
    assert bytes(got) == b"".join(lines)


def test_stream_lines_write_after_what_the_stream_buffered(tmp_path: Path) -> None:
    # Over a file descriptor the lines go out by writev: whatever was
    # written through the stream's own buffer must still come first.
    path = tmp_path / "out"
    with open(path, "wb") as stream:
        out = StreamLines(stream)
        stream.write(b"first\n")
        out.write_lines([b"a\n", b"b\n"])
        stream.write(b"between\n")
        out.write_lines([b"c\n"])
        out.flush()
    assert path.read_bytes() == b"first\na\nb\nbetween\nc\n"


def test_stream_lines_over_a_stream_without_a_descriptor_join_the_batch() -> None:
    stream = io.BytesIO()
    StreamLines(stream).write_lines([b"a\n", b"b\n"])
    assert stream.getvalue() == b"a\nb\n"
