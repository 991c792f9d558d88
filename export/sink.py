"""Fan-out targets that never block the capture path.

The pipeline thread hands each event to every sink with offer(), which
only appends to a bounded queue. A thread per sink takes the queue in
batches (a writer serializes and writes them; the gRPC hub fans them out
to subscribers' own queues of the same kind). A sink that cannot keep up
loses its oldest events, counted by kind, and the daemon reports them in
the next `lost` event.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import BinaryIO, Generic, Protocol, TypeVar

import structlog

from export._writev import writev_all
from export.config import QUEUE_BYTES
from tracer.core.events import Event, Lost

_log = structlog.get_logger(component="export")

T = TypeVar("T")


def _never(item: object) -> bool:
    return False


class Output(Protocol):
    """Where a writer puts whole lines: a batch per call, so one write per batch."""

    def write_lines(self, lines: list[bytes], /) -> object: ...

    def flush(self) -> object: ...


class StreamLines:
    """An Output over a binary stream (stdout): each batch is one write.

    Over a file descriptor, that is a writev(2) (export/_writev.py): joining
    the batch copied every line under the GIL, most of the writer thread's
    CPU (0.65 of ~1 us an event of 4.6 KB, bench/pipeline_cost.py).
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (OSError, ValueError):  # io.UnsupportedOperation: an in-memory stream
            self._fd = None

    def write_lines(self, lines: list[bytes], /) -> None:
        if self._fd is None:
            self._stream.write(b"".join(lines))
            return
        self._stream.flush()  # what went through the stream's buffer goes first
        writev_all(self._fd, lines)

    def flush(self) -> None:
        self._stream.flush()


class Sink(Protocol):
    name: str

    def offer(self, event: Event) -> None: ...

    def offer_many(self, events: list[Event]) -> None: ...

    def take_dropped(self) -> dict[str, int]: ...

    @property
    def error(self) -> BaseException | None: ...

    def close(self) -> None: ...


class DropOldest(Generic[T]):
    """A bounded FIFO whose put() never blocks, for one consumer thread.

    Bounded in items and, given `size`, in bytes: a count alone let 65,536
    lines of 50 KB (a deep ancestry of long command lines, which any user
    can arrange) take 3 GB. When it is full, the oldest items make room and
    are counted by kind; one item larger than the whole byte bound still
    gets in, alone. Pinned items (loss reports) are let in over the bounds
    and never dropped: they are how loss becomes visible. After close(),
    take() drains what is left and then returns empty; put() only counts.
    """

    def __init__(
        self,
        capacity: int,
        kind: Callable[[T], str],
        pinned: Callable[[T], bool] = _never,
        size: Callable[[T], int] | None = None,
        max_bytes: int = 0,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"queue capacity must be positive, got {capacity}")
        if size is not None and max_bytes <= 0:
            raise ValueError(f"queue byte bound must be positive, got {max_bytes}")
        self.capacity = capacity
        self._kind = kind
        self._pinned = pinned
        self._size = size
        self.max_bytes = max_bytes if size is not None else 0
        self._bytes = 0  # of the queued items, when sized
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._closed = False
        self._woken = False

    def put(self, item: T) -> None:
        self.put_many([item])

    def put_many(self, items: list[T], nbytes: int | None = None) -> None:
        """put() of each item in order, under one lock and with at most one wake-up.

        A wake-up per item costs the consumer a futex round trip each time
        and the producer a third of its time; per batch it is noise.
        `nbytes`, the items' total size, saves summing it again when the
        caller knows it.
        """
        if not items:
            return
        size = self._size
        if size is not None and nbytes is None:
            nbytes = sum(map(size, items))
        with self._cond:
            if self._closed:  # no consumer left to drain it
                self._dropped.update(self._kind(i) for i in items)
                return
            q = self._items
            was_empty = not q
            if len(q) + len(items) <= self.capacity and (
                size is None or self._bytes + (nbytes or 0) <= self.max_bytes
            ):
                q.extend(items)  # the usual case: room for all, no item-by-item test
                self._bytes += nbytes or 0
            else:
                for item in items:
                    self._make_room(item)
            if was_empty:
                self._cond.notify()

    def _make_room(self, item: T) -> None:
        """Append item, first dropping the oldest unpinned items while it does not fit."""
        q = self._items
        n = self._size(item) if self._size is not None else 0
        limit = self.max_bytes - n if self._size is not None else None
        if not self._pinned(item):
            # One out per one in: pinned items over capacity stay extra.
            if len(q) >= self.capacity:
                self._drop_oldest()
            while limit is not None and self._bytes > limit and self._drop_oldest():
                pass
        q.append(item)
        self._bytes += n

    def _drop_oldest(self) -> bool:
        """Drop the oldest unpinned item; False if every item is pinned."""
        q = self._items
        kept = []
        while q and self._pinned(q[0]):  # rare: a loss report at the head
            kept.append(q.popleft())
        dropped = bool(q)
        if dropped:
            old = q.popleft()
            self._dropped[self._kind(old)] += 1
            if self._size is not None:
                self._bytes -= self._size(old)
        q.extendleft(reversed(kept))
        return dropped

    def take(self, max_items: int = 0) -> list[T]:
        """Wait for items and return them, oldest first (at most max_items if > 0).

        Returns empty when closed and drained, or when wake() was called.
        """
        with self._cond:
            while not self._items and not self._closed and not self._woken:
                self._cond.wait()
            self._woken = False
            q = self._items
            if 0 < max_items < len(q):
                batch = [q.popleft() for _ in range(max_items)]
                if self._size is not None:
                    self._bytes -= sum(map(self._size, batch))
                return batch
            batch = list(q)
            q.clear()
            self._bytes = 0
            return batch

    def wake(self) -> None:
        """Make the consumer's take() return now, with or without items."""
        with self._cond:
            self._woken = True
            self._cond.notify()

    def take_dropped(self) -> dict[str, int]:
        with self._cond:
            out = dict(self._dropped)
            self._dropped.clear()
        return out

    @property
    def has_dropped(self) -> bool:
        """Whether take_dropped() has anything to return (a hint: no lock taken)."""
        return bool(self._dropped)

    def count_dropped(self, items: list[T]) -> None:
        """Count items the consumer took but could not deliver."""
        with self._cond:
            self._dropped.update(self._kind(i) for i in items)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, discard: bool = False) -> None:
        """No more puts (later ones are only counted); with discard, forget what is queued.

        Discarding is for a consumer that is gone, whose items were not
        lost to anyone: they are not counted.
        """
        with self._cond:
            self._closed = True
            if discard:
                self._items.clear()
                self._bytes = 0
            self._cond.notify()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_bytes(self) -> int:
        """Bytes of the queued items (0 for a queue bounded in items only)."""
        return self._bytes


def _event_kind(ev: Event) -> str:
    return ev.type


def _is_lost(ev: Event) -> bool:
    return isinstance(ev, Lost)


class _Drained(Generic[T]):
    """A DropOldest queue of T drained by a thread that calls `handle(batch)`.

    If handle raises, the sink stops: the error is kept for the daemon to
    report, and the failed batch and everything after it is counted as
    dropped.
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[list[T]], object],
        queue: DropOldest[T],
        on_close: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self._handle = handle
        self._on_close = on_close
        self._queue = queue
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    def take_dropped(self) -> dict[str, int]:
        return self._queue.take_dropped()

    @property
    def backlog(self) -> int:
        """Events offered and not yet handled."""
        return len(self._queue)

    @property
    def backlog_bytes(self) -> int:
        return self._queue.queued_bytes

    @property
    def capacity(self) -> tuple[int, int]:
        """The queue's bounds: events, and bytes (0: bounded in events only)."""
        return self._queue.capacity, self._queue.max_bytes

    @property
    def error(self) -> BaseException | None:
        return self._error

    def _fail(self, exc: BaseException, lost: list[T]) -> None:
        """Stop for good: keep the error, count `lost` and all still queued as dropped."""
        self._error = exc
        _log.error("sink failed", sink=self.name, error=str(exc))
        q = self._queue
        q.count_dropped(lost)
        q.close()
        q.count_dropped(q.take())  # nothing will write these

    def _run(self) -> None:
        q = self._queue
        while True:
            batch = q.take()
            if not batch and q.closed:
                return
            try:
                self._handle(batch)
            except BaseException as exc:  # noqa: BLE001 -- reported; the daemon stops
                self._fail(exc, batch)
                return

    def close(self, timeout: float = 10.0) -> None:
        """Handle what is queued, then stop."""
        self._queue.close()
        self._thread.join(timeout)
        if self._on_close is not None:
            self._on_close()


class QueuedWorker(_Drained[Event]):
    """A sink whose thread takes the events themselves, a batch at a time."""

    def __init__(
        self,
        name: str,
        handle: Callable[[list[Event]], object],
        capacity: int = 65536,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        queue: DropOldest[Event] = DropOldest(capacity, _event_kind, pinned=_is_lost)
        super().__init__(name, handle, queue, on_close)

    def offer(self, event: Event) -> None:
        self._queue.put(event)

    def offer_many(self, events: list[Event]) -> None:
        self._queue.put_many(events)


# An event and its JSON line, as queued for the threads that write lines.
Encoded = tuple[Event, bytes]


def _encoded_kind(item: Encoded) -> str:
    return item[0].type


def _is_lost_encoded(item: Encoded) -> bool:
    return isinstance(item[0], Lost)


def _encoded_size(item: Encoded) -> int:
    return len(item[1])


def _encode_for(
    encode: Callable[[Event], bytes], events: list[Event], sinks: Sequence[EncodedSink]
) -> None:
    """Encode `events` once and queue them to every sink; a fault stops only these sinks."""
    try:
        lines = [encode(ev) for ev in events]
    except Exception as exc:  # noqa: BLE001 -- a sink fault must not stop capture
        for s in sinks:
            s.fail(exc, events)
        return
    _offer_lines(events, lines, sinks)


def _offer_lines(events: list[Event], lines: list[bytes], sinks: Sequence[EncodedSink]) -> None:
    items = list(zip(events, lines, strict=True))
    nbytes = sum(map(len, lines))
    for s in sinks:
        s.offer_encoded(items, nbytes)


class EncodedSink(_Drained[Encoded]):
    """A sink whose thread takes events with their JSON lines.

    Lines are encoded by the thread that offers them, and the writer
    thread only writes. Under the GIL a second Python thread adds no
    parallelism, only hand-off: encoding on the writer thread cost twice
    as much CPU (cold caches, reference counts bouncing between cores:
    bench/pipeline_cost.py), while a write releases the GIL. Several such
    sinks share one encoding through LineFanout.
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[list[Encoded]], object],
        encode: Callable[[Event], bytes],
        capacity: int = 65536,
        on_close: Callable[[], object] | None = None,
        max_bytes: int = QUEUE_BYTES,
    ) -> None:
        self._encode = encode
        queue: DropOldest[Encoded] = DropOldest(
            capacity, _encoded_kind, _is_lost_encoded, _encoded_size, max_bytes
        )
        super().__init__(name, handle, queue, on_close)

    def offer(self, event: Event) -> None:
        self.offer_many([event])

    def offer_many(self, events: list[Event]) -> None:
        _encode_for(self._encode, events, (self,))

    def offer_encoded(self, items: list[Encoded], nbytes: int | None = None) -> None:
        """Queue events already encoded (by a LineFanout); nbytes: their lines' total."""
        self._queue.put_many(items, nbytes)

    def fail(self, exc: BaseException, events: list[Event]) -> None:
        """Stop: `events` could not be encoded for this sink (counted as dropped)."""
        lost = [(ev, b"") for ev in events]
        if self._error is None:
            self._fail(exc, lost)
        else:
            self._queue.count_dropped(lost)


class QueuedWriter(EncodedSink):
    """A sink that writes `encode(event)` to `out`, a batch at a time."""

    def __init__(
        self,
        name: str,
        out: Output,
        encode: Callable[[Event], bytes],
        capacity: int = 65536,
        on_close: Callable[[], object] | None = None,
        max_bytes: int = QUEUE_BYTES,
    ) -> None:
        self._out = out
        super().__init__(name, self._write, encode, capacity, on_close, max_bytes=max_bytes)

    def _write(self, batch: list[Encoded]) -> None:
        self._out.write_lines([line for _, line in batch])
        self._out.flush()


class Fanout:
    """One sink over several EncodedSinks, whose lines it encodes (offer_many)."""

    def __init__(self, sinks: list[EncodedSink]) -> None:
        self.name = "+".join(s.name for s in sinks)
        self.sinks = sinks

    def offer(self, event: Event) -> None:
        self.offer_many([event])

    def offer_many(self, events: list[Event]) -> None:
        raise NotImplementedError

    def take_dropped(self) -> dict[str, int]:
        out: collections.Counter[str] = collections.Counter()
        for s in self.sinks:
            out.update(s.take_dropped())
        return dict(out)

    @property
    def error(self) -> BaseException | None:
        return next((s.error for s in self.sinks if s.error is not None), None)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


class LineFanout(Fanout):
    """Each event is encoded once, for all of the sinks.

    The JSON output and the event log write the same line for an event;
    encoding is most of a writer's per-event cost.
    """

    def __init__(self, encode: Callable[[Event], bytes], sinks: list[EncodedSink]) -> None:
        super().__init__(sinks)
        self._encode = encode

    def offer_many(self, events: list[Event]) -> None:
        _encode_for(self._encode, events, self.sinks)


class PairFanout(Fanout):
    """Two groups of sinks writing two lines of each event, made together by `encode`.

    Serializer.lines: the JSON output with fewer ancestors (--ancestors) and
    the event log with all of them share the time, the details and the policy.
    """

    def __init__(
        self,
        encode: Callable[[Event], tuple[bytes, bytes]],
        first: list[EncodedSink],
        second: list[EncodedSink],
    ) -> None:
        super().__init__([*first, *second])
        self._encode = encode
        self._groups = (first, second)

    def offer_many(self, events: list[Event]) -> None:
        try:
            pairs = [self._encode(ev) for ev in events]
        except Exception as exc:  # noqa: BLE001 -- a sink fault must not stop capture
            for s in self.sinks:
                s.fail(exc, events)
            return
        for i, group in enumerate(self._groups):
            _offer_lines(events, [pair[i] for pair in pairs], group)
