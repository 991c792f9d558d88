"""One serialization of an event for two writer threads.

The JSON-lines output and the event log write the same bytes for every
event. Serializing is most of a writer's per-event work, and writer
threads share the interpreter lock with the capture thread, so doing it
twice costs capture throughput. Whichever writer reaches an event first
serializes it and leaves the bytes; the other takes them. Both usually
run a few events apart, so little is held; when one falls far behind, at
most `limit` lines are kept (the oldest go) and it serializes the rest
itself. Lock-free: each step is one atomic dict operation under the GIL,
and a race only costs a second serialization.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable

from tracer.events import Event


class SharedLines:
    """Hands out one `line` function per writer (two at most)."""

    def __init__(self, encode: Callable[[Event], bytes], limit: int = 8192) -> None:
        self._encode = encode
        self._limit = limit
        # id(event) -> (event, line). The entry keeps the event alive, so
        # no other object can have its id while the entry exists.
        self._lines: OrderedDict[int, tuple[Event, bytes]] = OrderedDict()
        self._counts: list[int] = []  # events each writer has asked for

    def writer(self) -> Callable[[Event], bytes]:
        me = len(self._counts)
        if me == 2:
            raise ValueError("SharedLines serves two writers")
        self._counts.append(0)
        other = 1 - me
        counts = self._counts
        lines = self._lines
        encode = self._encode
        limit = self._limit

        def line(ev: Event) -> bytes:
            counts[me] += 1
            hit = lines.pop(id(ev), None)
            if hit is not None:
                return hit[1]
            data = encode(ev)
            # Only the writer ahead leaves lines: the one behind would leave
            # lines of events the other has passed, which nobody takes.
            if len(counts) == 2 and counts[me] >= counts[other]:
                lines[id(ev)] = (ev, data)
                if len(lines) > limit:
                    with contextlib.suppress(KeyError):  # emptied by the other meanwhile
                        lines.popitem(last=False)
            return data

        return line
