"""The gRPC fan-out: one hub thread, and a bounded queue per subscriber.

The pipeline thread offers each event to the hub once, whatever the number
of subscribers: a non-blocking put into the hub's own bounded queue (a
QueuedWorker, like the JSON output's). The hub thread evaluates each
subscriber's filter, serializes the event at most once (only if someone
wants it), and puts the same bytes into the queue of each subscriber whose
filter it matches.

A subscriber's queue is a DropOldest: when its client reads too slowly,
its oldest events go, counted, and its next batch starts with a `lost`
event that says how many. Nobody else waits or loses anything. Filtering
before queueing is what makes that count exact: it counts only events the
subscriber asked for, and a narrow filter is not crowded out by events it
would have discarded.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable, Iterator

from export.filters import EventFilter, facts_of_event
from export.pb import Encoder, frame, lost_message
from export.sink import DropOldest, QueuedWorker
from tracer.core.events import Event, LossCounts, Lost

# A message carries at most this many events, and goes over this size only
# for a single event: gRPC clients refuse messages over 4 MiB by default.
BATCH_EVENTS = 1024
BATCH_BYTES = 1 << 20

Item = tuple[str, bytes]  # (event type, the event framed as GetEventsResponse.events)


def _item_kind(item: Item) -> str:
    return item[0]


class TooManySubscribers(Exception):
    pass


class Subscriber:
    """One GetEvents call: its filter, its queue and the losses it has not been told of."""

    def __init__(self, sid: int, hub: Hub, event_filter: EventFilter, capacity: int) -> None:
        self.id = sid
        self.filter = event_filter
        self.queue: DropOldest[Item] = DropOldest(capacity, _item_kind)
        self._hub = hub
        self._lock = threading.Lock()
        self._kernel = LossCounts()
        self._daemon = LossCounts()
        self._gone = False  # the client left: nothing it missed is its loss

    def add_loss(self, kernel: dict[str, int], daemon: dict[str, int]) -> None:
        """Loss that concerns every subscriber (the kernel's, the hub's own)."""
        with self._lock:
            self._kernel.add(kernel)
            self._daemon.add(daemon)
        self.queue.wake()

    def _take_loss(self) -> Lost | None:
        own = self.queue.take_dropped()
        with self._lock:
            self._daemon.add(own)
            if not self._kernel and not self._daemon:
                return None
            kernel, daemon = self._kernel.take(), self._daemon.take()
        self._hub.count_subscriber_loss(own)
        return Lost(time=self._hub.now(), node=self._hub.node, kernel=kernel, daemon=daemon)

    def batches(self) -> Iterator[bytes]:
        """Serialized GetEventsResponse messages, until close().

        Blocks while there is nothing to send; the gRPC thread that runs it
        for the call blocks in turn while the client does not read, which is
        when the queue fills and drops.
        """
        q = self.queue
        while True:
            items = q.take(BATCH_EVENTS)
            if self._gone:
                return
            lost = self._take_loss()
            if not items and lost is None:
                if q.closed:
                    return
                continue
            parts: list[bytes] = []
            size = 0
            if lost is not None:
                # First: what it lost is older than anything still queued.
                parts.append(frame(lost_message(lost).SerializeToString()))
            for _, data in items:
                if parts and size + len(data) > BATCH_BYTES:
                    yield b"".join(parts)
                    parts, size = [], 0
                parts.append(data)
                size += len(data)
            yield b"".join(parts)

    def close(self, discard: bool = True) -> None:
        """Stop: discard what is queued (the client is gone), or let batches() drain it."""
        if discard:
            self._gone = True
        self.queue.close(discard=discard)


class Hub(QueuedWorker):
    """A sink that fans events out to gRPC subscribers."""

    def __init__(
        self,
        node: str,
        now: Callable[[], int],
        capacity: int = 65536,
        subscriber_capacity: int = 16384,
        max_subscribers: int = 32,
    ) -> None:
        self.node = node
        self.now = now
        self.subscriber_capacity = subscriber_capacity
        self.max_subscribers = max_subscribers
        self._encoder = Encoder()
        self._lock = threading.Lock()
        # Replaced, never mutated: the hub thread reads it without the lock.
        self._subs: tuple[Subscriber, ...] = ()
        self._ids = itertools.count(1)
        self.subscriber_lost: collections.Counter[str] = collections.Counter()
        super().__init__("grpc", self.fan_out, capacity)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def subscriber_backlog(self) -> int:
        """Events queued for the subscriber furthest behind."""
        return max((len(s.queue) for s in self._subs), default=0)

    def subscribe(self, event_filter: EventFilter, capacity: int | None = None) -> Subscriber:
        with self._lock:
            if len(self._subs) >= self.max_subscribers:
                raise TooManySubscribers(
                    f"{len(self._subs)} subscribers already (--grpc-max-subscribers)"
                )
            sub = Subscriber(
                next(self._ids), self, event_filter, capacity or self.subscriber_capacity
            )
            self._subs = (*self._subs, sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)
        sub.close()

    def count_subscriber_loss(self, counts: dict[str, int]) -> None:
        if counts:
            with self._lock:
                self.subscriber_lost.update(counts)

    def offer_many(self, events: list[Event]) -> None:
        # Nobody subscribed: nothing to queue. A stream starts with the
        # events after its subscription, so none is lost to anyone.
        if self._subs:
            super().offer_many(events)

    def offer(self, event: Event) -> None:
        self.offer_many([event])

    def fan_out(self, batch: list[Event]) -> None:
        """The hub thread's work on one batch (tests call it directly)."""
        subs = self._subs
        if not subs:
            return
        encode = self._encoder.framed
        for ev in batch:
            if isinstance(ev, Lost):
                for s in subs:
                    s.add_loss(ev.kernel, ev.daemon)
                continue
            facts = None
            item: Item | None = None
            for s in subs:
                if not s.filter.passes_everything:
                    if facts is None:
                        facts = facts_of_event(ev)
                    if not s.filter.matches(facts):
                        continue
                if item is None:
                    item = (ev.type, encode(ev))
                s.queue.put(item)

    def close(self, timeout: float = 10.0) -> None:
        """Fan out what is queued, then end every subscriber's stream after its last event."""
        super().close(timeout)
        with self._lock:
            subs, self._subs = self._subs, ()
        for s in subs:
            s.close(discard=False)
