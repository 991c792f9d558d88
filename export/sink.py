"""Fan-out targets that never block the capture path.

The pipeline thread hands each event to every sink with offer(), which
only appends to a bounded queue. A writer thread per sink serializes and
writes in batches. A sink that cannot keep up loses its oldest events,
counted by kind, and the daemon reports them in the next `lost` event.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Protocol

import structlog

from tracer.events import Event, Lost

_log = structlog.get_logger(component="export")


class Output(Protocol):
    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class Sink(Protocol):
    name: str

    def offer(self, event: Event) -> None: ...

    def take_dropped(self) -> dict[str, int]: ...

    @property
    def error(self) -> BaseException | None: ...

    def close(self) -> None: ...


class QueuedWriter:
    """A bounded queue drained by a thread that writes `encode(event)` to `out`."""

    def __init__(
        self,
        name: str,
        out: Output,
        encode: Callable[[Event], bytes],
        capacity: int = 65536,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self._out = out
        self._encode = encode
        self._capacity = capacity
        self._on_close = on_close
        self._queue: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    def offer(self, event: Event) -> None:
        with self._cond:
            if self._error is not None:  # no writer left to drain the queue
                self._dropped[event.type] += 1
                return
            q = self._queue
            # A Lost report always gets in: it is how loss becomes visible.
            if len(q) >= self._capacity and not isinstance(event, Lost):
                old = q.popleft()
                self._dropped[old.type] += 1
            q.append(event)
            if len(q) == 1:
                self._cond.notify()

    def take_dropped(self) -> dict[str, int]:
        with self._cond:
            out = dict(self._dropped)
            self._dropped.clear()
        return out

    @property
    def error(self) -> BaseException | None:
        return self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue and self._closing:
                    return
                batch = list(self._queue)
                self._queue.clear()
            try:
                for ev in batch:
                    self._out.write(self._encode(ev))
                self._out.flush()
            except BaseException as exc:  # noqa: BLE001 -- reported; the daemon stops
                self._error = exc
                _log.error("sink failed", sink=self.name, error=str(exc))
                with self._cond:
                    self._dropped.update(e.type for e in batch)
                    self._closing = True
                    self._dropped.update(e.type for e in self._queue)
                    self._queue.clear()
                return

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._on_close is not None:
            self._on_close()
