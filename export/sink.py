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

from tracer.events import Event, Lost

_log = structlog.get_logger(component="export")

T = TypeVar("T")


def _never(item: object) -> bool:
    return False


class Output(Protocol):
    """Where a writer puts whole lines: a batch per call, so one write per batch."""

    def write_lines(self, lines: list[bytes], /) -> object: ...

    def flush(self) -> object: ...


class StreamLines:
    """An Output over a binary stream (stdout): each batch is one write."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write_lines(self, lines: list[bytes], /) -> None:
        self._stream.write(b"".join(lines))

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

    When it is full, the oldest item makes room and is counted by kind.
    Pinned items (loss reports) are let in over capacity and never dropped:
    they are how loss becomes visible. After close(), take() drains what is
    left and then returns empty; put() only counts.
    """

    def __init__(
        self, capacity: int, kind: Callable[[T], str], pinned: Callable[[T], bool] = _never
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"queue capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._kind = kind
        self._pinned = pinned
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._closed = False
        self._woken = False

    def put(self, item: T) -> None:
        with self._cond:
            if self._closed:  # no consumer left to drain it
                self._dropped[self._kind(item)] += 1
                return
            q = self._items
            if len(q) >= self.capacity and not self._pinned(item):
                self._drop_oldest()
            q.append(item)
            if len(q) == 1:
                self._cond.notify()

    def put_many(self, items: list[T]) -> None:
        """put() of each item in order, under one lock and with at most one wake-up.

        A wake-up per item costs the consumer a futex round trip each time
        and the producer a third of its time; per batch it is noise.
        """
        if not items:
            return
        with self._cond:
            if self._closed:
                self._dropped.update(self._kind(i) for i in items)
                return
            q = self._items
            was_empty = not q
            if len(q) + len(items) <= self.capacity:
                q.extend(items)  # the usual case: room for all, no item-by-item test
            else:
                pinned = self._pinned
                for item in items:
                    if len(q) >= self.capacity and not pinned(item):
                        self._drop_oldest()
                    q.append(item)
            if was_empty:
                self._cond.notify()

    def _drop_oldest(self) -> None:
        q = self._items
        kept = []
        while q and self._pinned(q[0]):  # rare: a loss report at the head
            kept.append(q.popleft())
        if q:
            self._dropped[self._kind(q.popleft())] += 1
        q.extendleft(reversed(kept))

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
                return [q.popleft() for _ in range(max_items)]
            batch = list(q)
            q.clear()
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
            self._cond.notify()

    def __len__(self) -> int:
        return len(self._items)


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


def _encode_for(
    encode: Callable[[Event], bytes], events: list[Event], sinks: Sequence[EncodedSink]
) -> None:
    """Encode `events` once and queue them to every sink; a fault stops only these sinks."""
    try:
        items = [(ev, encode(ev)) for ev in events]
    except Exception as exc:  # noqa: BLE001 -- a sink fault must not stop capture
        for s in sinks:
            s.fail(exc, events)
        return
    for s in sinks:
        s.offer_encoded(items)


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
    ) -> None:
        self._encode = encode
        queue: DropOldest[Encoded] = DropOldest(capacity, _encoded_kind, pinned=_is_lost_encoded)
        super().__init__(name, handle, queue, on_close)

    def offer(self, event: Event) -> None:
        self.offer_many([event])

    def offer_many(self, events: list[Event]) -> None:
        _encode_for(self._encode, events, (self,))

    def offer_encoded(self, items: list[Encoded]) -> None:
        """Queue events already encoded (by a LineFanout)."""
        self._queue.put_many(items)

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
    ) -> None:
        self._out = out
        super().__init__(name, self._write, encode, capacity, on_close)

    def _write(self, batch: list[Encoded]) -> None:
        self._out.write_lines([line for _, line in batch])
        self._out.flush()


class LineFanout:
    """One sink over several EncodedSinks: each event is encoded once, for all of them.

    The JSON output and the event log write the same line for an event;
    encoding is most of a writer's per-event cost.
    """

    def __init__(self, encode: Callable[[Event], bytes], sinks: list[EncodedSink]) -> None:
        self.name = "+".join(s.name for s in sinks)
        self._encode = encode
        self.sinks = sinks

    def offer(self, event: Event) -> None:
        self.offer_many([event])

    def offer_many(self, events: list[Event]) -> None:
        _encode_for(self._encode, events, self.sinks)

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
