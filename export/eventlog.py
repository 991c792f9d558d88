"""The durable event log: every event, as JSON lines, in rotated segments on disk.

A sink like the others (export/sink.py): events arrive with their lines
from the JSON-lines Serializer, encoded once for the JSON output and the
log (LineFanout), so a segment holds exactly the lines of an export file.
A writer thread compresses each batch into a zstd frame of its own and
appends it to the current segment, so a crash of the daemon loses only
what was still queued, and every segment, the open one too, is a
sequence of whole frames that any zstd reader takes. Compressing as it
writes, the log puts 0.2-1% of the JSON's bytes on the node's disk, not
all of them and then again compressed. Every flush interval the file
goes to the disk (fdatasync), so a power cut loses at most that
interval; a segment is never written again once closed, so earlier
segments cannot be damaged. A power cut can leave the last frame torn:
readers take what precedes it and say so (forensics/log.py).

The writer keeps the index rows of the open segment in memory (one dict
update per event, no I/O on its behalf) and writes them as the segment's
sidecar (forensics/index.py) when it closes it; a separate thread adds
closed segments to the directory's lookup database and applies retention
(total size, age).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import structlog
import zstandard

from export._writev import writev_all
from export.config import QUEUE_BYTES, EventLogConfig
from export.jsonl import Serializer
from export.sink import Encoded, EncodedSink
from forensics import store
from forensics.index import HAS_EXEC, HAS_EXIT, Fields, IndexBuilder, scan, write_sidecar
from forensics.log import SEGMENT_RE, Problems, Segment, segment_name
from tracer.core import safefile
from tracer.core.events import Event, Lost, Process, ProcessEvent, ProcessExec, ProcessExit

_log = structlog.get_logger(component="eventlog")

# On our lines (the same ancestry over and over) zstd packs 5x tighter
# than gzip -3 at a sixth of its CPU; in frames of a batch, level 1 keeps
# level 3's ratio (0.33 against 0.32%) at 15% less CPU (BENCHMARKS.md).
_COMPRESS_LEVEL = 1
_CHUNK = 4 << 20
# A batch is a frame, up to this much JSON: a writer that fell behind takes
# its whole queue (65,536 lines of ~5 KB) and must not join it in one piece.
_FRAME_BYTES = 4 << 20


def _compressor() -> zstandard.ZstdCompressor:
    """One per thread (they are not thread-safe). The checksum lets a reader
    tell a damaged copy from a good one."""
    return zstandard.ZstdCompressor(level=_COMPRESS_LEVEL, write_checksum=True)


_BITS = {ProcessExec: HAS_EXEC, ProcessExit: HAS_EXIT}


def _fields(p: Process) -> Fields:
    pod = p.pod
    return (
        p.exec_id,
        p.pid,
        p.parent_exec_id,
        p.binary,
        p.start_time,
        p.flags,
        pod.namespace if pod is not None else None,
        pod.name if pod is not None else None,
    )


def _lineage(ev: ProcessEvent) -> Iterator[Fields]:
    if ev.parent is not None:
        yield _fields(ev.parent)
        for a in ev.ancestors:
            yield _fields(a)


def _private_directory(d: Path) -> None:
    """The log directory: root's, 0700 (made so, or fixed), not a link, in directories only
    root can change. Every line names processes and holds their command lines."""
    d.parent.mkdir(parents=True, exist_ok=True)
    os.close(safefile.open_private_dir(d))
    shared = safefile.shared_directory([d.parent])
    if shared is not None:
        raise safefile.UnsafeFile(
            f"event log {d}: {shared}, not only root: they could swap the log for a link; "
            "use a directory only root can change, like the default /var/lib/tracer/events"
        )


@dataclass(slots=True)
class _Open:
    seq: int
    path: Path
    f: BinaryIO
    opened: float
    size: int = 0  # of JSON: what the segment size limit counts, what a reader holds in memory
    disk: int = 0  # compressed: what retention counts
    dirty: bool = False
    index: IndexBuilder = field(default_factory=IndexBuilder)


class EventLog(EncodedSink):
    """The event-log sink."""

    def __init__(
        self,
        config: EventLogConfig,
        capacity: int = 65536,
        encode: Callable[[Event], bytes] | None = None,
        max_bytes: int = QUEUE_BYTES,
    ) -> None:
        """`encode`: the JSON-lines serializer's line(); a LineFanout encodes for it instead."""
        self.config = config
        d = config.directory
        _private_directory(d)
        # One writer per directory: a second daemon on the same log would
        # interleave segments.
        self._lock_fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(f"event log {d} is in use by another tracer daemon") from None
        for tmp in d.glob("events-*.tmp"):  # a compression or sidecar a crash interrupted
            tmp.unlink()
        segments = self._segments()
        self._next_seq = max((seg.seq for seg in segments), default=0) + 1
        self._last_sync = time.monotonic()
        self._z = _compressor()  # the writer thread's
        self._closing: queue.Queue[Segment | None] = queue.Queue()
        for seg in segments:
            # The open segment of a crash (no sidecar), or one an older
            # version left uncompressed: indexed and compressed now.
            if not seg.compressed or not seg.sidecar.exists():
                self._closing.put(seg)
        self._cur = self._open()
        self._stopped = threading.Event()
        self._closer = threading.Thread(target=self._close_loop, name="eventlog-close", daemon=True)
        self._closer.start()
        super().__init__(
            "eventlog",
            self._write,
            encode or Serializer().line,
            capacity,
            on_close=self._finish,
            max_bytes=max_bytes,
        )
        self._ticker = threading.Thread(target=self._tick, name="eventlog-flush", daemon=True)
        self._ticker.start()

    # -- the writer thread ------------------------------------------------------

    def _segments(self) -> list[Segment]:
        out = []
        for p in self.config.directory.iterdir():
            m = SEGMENT_RE.match(p.name)
            if m is not None:
                out.append(Segment(p, int(m[1])))
        return sorted(out, key=lambda seg: seg.seq)

    def _open(self) -> _Open:
        seq = self._next_seq
        self._next_seq += 1
        path = self.config.directory / segment_name(seq, compressed=True)
        fd = os.open(path, os.O_WRONLY | safefile.CREATE_FLAGS, 0o600)
        f = open(fd, "wb", buffering=0)  # frames go out whole
        return _Open(seq, path, f, time.monotonic())

    def _write(self, batch: list[Encoded]) -> None:
        cur = self._cur
        limit = self.config.segment_bytes
        out: list[bytes] = []
        size = cur.size
        framed = size  # where the lines in `out` start
        last: Process | None = None
        row: list[Any] = []
        for ev, data in batch:
            out.append(data)
            size += len(data)
            if size - framed >= _FRAME_BYTES:  # a backlog: frames of bounded memory
                self._append(cur, out)
                out.clear()
                framed = size
            if isinstance(ev, Lost):
                cur.index.note_time(ev.time)
            elif ev.process is last and type(ev) not in _BITS:
                # The same process as the event before (a burst of opens or
                # connects): only its last-seen time moves.
                if ev.time > row[5]:
                    row[5] = ev.time
                cur.index.note_time(ev.time)
            else:
                last = p = ev.process
                row = cur.index.note(ev.time, _BITS.get(type(ev), 0), _fields(p), _lineage(ev))
            if size >= limit:  # between two lines: a line is never split
                if out:
                    self._append(cur, out)
                cur.size = size
                out.clear()
                self._rotate()
                cur = self._cur
                size = framed = 0
                last = None
        if out:
            self._append(cur, out)
        cur.size = size
        if batch:
            cur.dirty = True
        now = time.monotonic()
        if cur.dirty and now - self._last_sync >= self.config.flush_interval_s:
            self._sync(cur)
        if cur.size and now - cur.opened >= self.config.segment_age_s:
            self._rotate()

    def _append(self, cur: _Open, lines: list[bytes]) -> None:
        """One frame: readable on its own, so a crash tears at most the last one.
        (zstd releases the GIL while it compresses.)"""
        frame = self._z.compress(b"".join(lines))
        writev_all(cur.f.fileno(), [frame])
        cur.disk += len(frame)

    def _sync(self, cur: _Open) -> None:
        os.fdatasync(cur.f.fileno())
        cur.dirty = False
        self._last_sync = time.monotonic()

    def _rotate(self) -> None:
        old = self._cur
        self._seal(old)
        self._cur = self._open()

    def _seal(self, cur: _Open) -> None:
        """Close a segment for good: synced, its sidecar written, queued for the database."""
        self._sync(cur)
        cur.f.close()
        seg = Segment(cur.path, cur.seq)
        write_sidecar(seg.sidecar, cur.index.sidecar(seg.plain_name))
        self._closing.put(seg)

    def _tick(self) -> None:
        # The writer only runs when events arrive; this makes it flush a
        # quiet log on time too.
        while not self._stopped.wait(self.config.flush_interval_s):
            self._queue.wake()  # take() returns, handle([]) runs: the timed flush

    def _finish(self) -> None:
        """After the writer thread ended (close()): seal, stop."""
        self._stopped.set()
        cur = self._cur
        if self.error is None and cur.size:
            self._seal(cur)
        elif not cur.size:  # a run that wrote nothing (a failed start) leaves nothing
            cur.f.close()
            cur.path.unlink()
        self._closing.put(None)
        self._closer.join(60)
        os.close(self._lock_fd)

    # -- the closing thread -----------------------------------------------------

    def _close_loop(self) -> None:
        # At the lowest priority this takes idle CPU and gives way to
        # capture in a burst, catching up after it. (Linux nice is per thread.)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        db: sqlite3.Connection | None = None
        while True:
            # Whatever is queued goes into the database in one transaction.
            batch = [self._closing.get()]
            while batch[-1] is not None:
                try:
                    batch.append(self._closing.get_nowait())
                except queue.Empty:
                    break
            segs = [seg for seg in batch if seg is not None]
            try:
                if segs and db is None:
                    db = store.connect(self.config.directory / store.DB_NAME)
                if db is not None and segs:
                    with store.transaction(db):
                        for seg in segs:
                            try:
                                self._close(seg, db)
                            except OSError as exc:
                                _log.error(
                                    "closing a log segment failed",
                                    segment=str(seg.path),
                                    error=str(exc),
                                )
                        self._retain(db)
            except (OSError, sqlite3.Error) as exc:
                # The segments stay readable as they are; readers index what
                # the database lacks.
                _log.error(
                    "adding log segments to the index failed",
                    segments=[str(seg.path) for seg in segs],
                    error=str(exc),
                )
            if batch[-1] is None:
                if db is not None:
                    db.close()
                return

    def _close(self, seg: Segment, db: sqlite3.Connection) -> None:
        """A closed segment into the directory's lookup database (forensics/store.py),
        indexed first if a crash left it without its sidecar, and compressed
        if an older version wrote it as plain JSON lines."""
        if not seg.sidecar.exists():  # left by a crash: index it from its lines
            problems = Problems(out=None)
            b = scan(seg, problems)
            write_sidecar(seg.sidecar, b.sidecar(seg.plain_name))
            if problems.count:
                _log.warning(
                    "a segment left by a crash has unreadable lines (a torn last frame or line?)",
                    segment=str(seg.path),
                    lines=problems.count,
                )
        if not seg.compressed:
            self._compress(seg)
        # Readers add the segment themselves if this is lost.
        side = seg.sidecar.read_bytes()
        store.add_segment(db, seg.plain_name, len(side), orjson.loads(side))

    def _compress(self, seg: Segment) -> None:
        path = seg.path
        packed = path.with_name(segment_name(seg.seq, compressed=True))
        tmp = packed.with_name(packed.name + ".tmp")
        tmp.unlink(missing_ok=True)  # a crash's: made anew, never adopted
        raw_fd = os.open(tmp, os.O_WRONLY | safefile.CREATE_FLAGS, 0o600)
        with open(path, "rb") as src, open(raw_fd, "wb") as raw:
            # Large chunks: each read and write takes the GIL back, a wait of
            # up to a switch interval while the capture thread is busy.
            _compressor().copy_stream(
                src, raw, size=os.fstat(src.fileno()).st_size, read_size=_CHUNK, write_size=_CHUNK
            )
            raw.flush()
            os.fdatasync(raw.fileno())
        os.replace(tmp, packed)
        # The original goes only once its compressed copy is on disk; a
        # crash in between leaves both, and readers take the original.
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        path.unlink()

    def _retain(self, db: sqlite3.Connection) -> None:
        """Delete the oldest closed segments past the size or the age limit.

        A compressed segment's mtime is when it was closed, not before its
        last event, so age by mtime never deletes events younger than max-age.
        """
        cfg = self.config
        cur = self._cur  # the writer's; a segment it seals meanwhile counts as open once more
        closed = [seg.path for seg in self._segments() if seg.compressed and seg.seq < cur.seq]
        stats = {p: p.stat() for p in closed}
        total = sum(st.st_size for st in stats.values()) + cur.disk
        oldest_kept = time.time() - cfg.max_age_s
        for p in closed:
            too_big = total > cfg.max_bytes
            if not too_big and stats[p].st_mtime >= oldest_kept:
                break
            store.drop_segment(db, Segment(p).plain_name)
            Segment(p).sidecar.unlink(missing_ok=True)
            p.unlink(missing_ok=True)
            total -= stats[p].st_size
            _log.info("log segment expired", segment=p.name, reason="size" if too_big else "age")
