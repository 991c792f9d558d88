"""The gRPC fan-out: one hub thread, and bounded queues per subscriber.

The pipeline thread offers each event to the hub once, whatever the number
of subscribers: a non-blocking put into the hub's own bounded queue (a
QueuedWorker, like the JSON output's). The hub thread never runs a
subscriber's regex; what it does depends on the subscriber's filter:

- none: the hub serializes the event once, for all such subscribers, and
  puts the same bytes into each one's queue;
- only set lookups (event types, pids, namespaces): the hub evaluates it,
  which costs about as much as the put, and queues what matches;
- regexes, label selectors or container ids (anything that can take long):
  the hub puts the event into the subscriber's inbox, and the subscriber's
  own filter thread evaluates the filter, serializes what matches and
  queues that. A slow filter slows only its owner. The hub gathers each
  event's facts once for all filters, and the filter threads share what
  they serialize (_Framed), so an event is still serialized once.

A subscriber's queue is a DropOldest bounded in events and in bytes: when
its client reads too slowly, its oldest events go, counted by kind, and its
next batch starts with a `lost` event that says how many. Nobody else waits
or loses anything. Only events that passed the filter are queued, so the
count is exact and a narrow filter is not crowded out by events it would
have discarded. An inbox is bounded the same way; when a filter cannot keep
up, the oldest events in its inbox go without having been examined, and
are counted under `unfiltered` (some of them might not have matched).
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence

import structlog

from export.config import SUBSCRIBER_QUEUE_BYTES
from export.filters import EventFilter, Facts, facts_of_event
from export.pb import MAX_EVENT_BYTES, Encoder
from export.sink import DropOldest, QueuedWorker
from tracer.core.events import Event, LossCounts, Lost

_log = structlog.get_logger(component="grpc")

# A message carries at most this many events, and goes over this size only
# for a single event, itself at most MAX_EVENT_BYTES: gRPC clients refuse
# messages over 4 MiB by default.
BATCH_EVENTS = 1024
BATCH_BYTES = 1 << 20
assert MAX_EVENT_BYTES <= BATCH_BYTES
# Serialized events a subscriber may fall behind by, beside the count.
SUBSCRIBER_BYTES = SUBSCRIBER_QUEUE_BYTES
# What an event counts for in an inbox's byte bound: not serialized yet, it
# is mostly its processes, the process cache's, shared by every event that
# names them.
_INBOX_EVENT_BYTES = 1024
UNFILTERED = "unfiltered"  # the loss key of events an inbox dropped unexamined

Item = tuple[str, bytes]  # (event type, the event framed as GetEventsResponse.events)


def _item_kind(item: Item) -> str:
    return item[0]


def _item_size(item: Item) -> int:
    return len(item[1])


# Serialized events the filter threads share, at most.
_SHARED_BYTES = 16 << 20

InboxItem = tuple[Event, Facts]


def _unfiltered(item: InboxItem) -> str:
    return UNFILTERED


def _inbox_size(item: InboxItem) -> int:
    return _INBOX_EVENT_BYTES


class _Framed:
    """Framed events the filter threads share: one that several filters let
    through is serialized once. Bounded in bytes; emptied when full. The
    threads race only to serialize an event twice."""

    def __init__(self, framed: Callable[[Event], bytes], max_bytes: int) -> None:
        self._framed = framed
        self._max = max_bytes
        self._bytes = 0
        # id -> (the event, kept so that its id is not reused, its bytes)
        self._by_id: dict[int, tuple[Event, bytes]] = {}

    def __call__(self, ev: Event) -> bytes:
        hit = self._by_id.get(id(ev))
        if hit is not None and hit[0] is ev:
            return hit[1]
        data = self._framed(ev)
        if self._bytes + len(data) > self._max:
            self._by_id, self._bytes = {}, 0
        self._by_id[id(ev)] = (ev, data)
        self._bytes += len(data)
        return data


class TooManySubscribers(Exception):
    pass


class Subscriber:
    """One GetEvents call: its filter, its queues and the losses it has not been told of."""

    def __init__(
        self, sid: int, hub: Hub, event_filter: EventFilter, capacity: int, max_bytes: int
    ) -> None:
        self.id = sid
        self.filter = event_filter
        self.queue: DropOldest[Item] = DropOldest(
            capacity, _item_kind, size=_item_size, max_bytes=max_bytes
        )
        self._hub = hub
        self._lock = threading.Lock()
        self._kernel = LossCounts()
        self._daemon = LossCounts()
        self._gone = False  # the client left: nothing it missed is its loss
        self.kinds = event_filter.kinds  # None: any event type may pass
        self.inbox: DropOldest[InboxItem] | None = None
        if event_filter.costly:
            self.inbox = DropOldest(capacity, _unfiltered, size=_inbox_size, max_bytes=max_bytes)
            threading.Thread(
                target=self._filter_inbox, name=f"grpc-filter-{sid}", daemon=True
            ).start()

    @property
    def backlog(self) -> int:
        return len(self.queue) + (len(self.inbox) if self.inbox is not None else 0)

    def add_loss(self, kernel: dict[str, int], daemon: dict[str, int]) -> None:
        """Loss that concerns every subscriber (the kernel's, the hub's own)."""
        with self._lock:
            self._kernel.add(kernel)
            self._daemon.add(daemon)
        self.queue.wake()

    def _take_loss(self) -> Lost | None:
        own = self.queue.take_dropped()
        if self.inbox is not None:
            own.update(self.inbox.take_dropped())
        with self._lock:
            self._daemon.add(own)
            if not self._kernel and not self._daemon:
                return None
            kernel, daemon = self._kernel.take(), self._daemon.take()
        self._hub.count_subscriber_loss(own)
        return Lost(time=self._hub.now(), node=self._hub.node, kernel=kernel, daemon=daemon)

    def _filter_inbox(self) -> None:
        """The filter thread: inbox -> filter -> queue, until the inbox is closed and drained."""
        inbox, matches, framed = self.inbox, self.filter.matches, self._hub.shared_framed
        assert inbox is not None
        try:
            while True:
                events = inbox.take(BATCH_EVENTS)
                if not events:
                    if inbox.closed:
                        return
                    continue
                try:
                    items: list[Item] = []
                    nbytes = 0
                    for ev, facts in events:
                        if matches(facts):
                            data = framed(ev)
                            items.append((ev.type, data))
                            nbytes += len(data)
                except Exception as exc:  # noqa: BLE001 -- counted; the stream goes on
                    _log.error("subscriber filter failed", id=self.id, error=str(exc))
                    inbox.count_dropped(events)
                    continue
                if items:
                    self.queue.put_many(items, nbytes)
                elif inbox.has_dropped:
                    self.queue.wake()  # batches() reports the loss now, not at the next match
        finally:
            # batches() ends after what is queued (or at once: the client is gone).
            self.queue.close(discard=self._gone)

    def offer_unfiltered(self, events: list[InboxItem]) -> None:
        """Queue events for the filter thread (the hub thread calls this)."""
        assert self.inbox is not None
        kinds = self.kinds
        if kinds is not None:
            events = [e for e in events if e[1].kind in kinds]
        self.inbox.put_many(events, len(events) * _INBOX_EVENT_BYTES)

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
                parts.append(self._hub.encoder.framed(lost))
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
        if self.inbox is not None:
            # The filter thread closes the queue once the inbox is drained.
            self.inbox.close(discard=discard)
            if not discard:
                return
        self.queue.close(discard=discard)


class _Groups:
    """The subscribers, by what the hub thread does for them. Replaced, never mutated."""

    __slots__ = ("all", "inline", "plain", "threaded")

    def __init__(self, subs: tuple[Subscriber, ...]) -> None:
        self.all = subs
        self.plain = tuple(s for s in subs if s.filter.passes_everything)
        self.inline = tuple(s for s in subs if not s.filter.passes_everything and s.inbox is None)
        self.threaded = tuple(s for s in subs if s.inbox is not None)


class Hub(QueuedWorker):
    """A sink that fans events out to gRPC subscribers."""

    def __init__(
        self,
        node: str,
        now: Callable[[], int],
        capacity: int = 65536,
        subscriber_capacity: int = 16384,
        max_subscribers: int = 32,
        subscriber_bytes: int = SUBSCRIBER_BYTES,
        ancestors: str = "full",
    ) -> None:
        """`ancestors`: --ancestors, one of export.jsonl.ANCESTORS."""
        self.node = node
        self.now = now
        self.subscriber_capacity = subscriber_capacity
        self.subscriber_bytes = subscriber_bytes
        self.max_subscribers = max_subscribers
        # Shared by the hub thread and the subscribers' filter threads.
        self.encoder = Encoder(ancestors)
        self.shared_framed = _Framed(self.encoder.framed, _SHARED_BYTES)
        self._lock = threading.Lock()
        # Replaced, never mutated: the hub thread reads it without the lock.
        self._groups = _Groups(())
        self._ids = itertools.count(1)
        self.subscriber_lost: collections.Counter[str] = collections.Counter()
        self._unwritable_kinds: set[str] = set()  # logged once each
        super().__init__("grpc", self.fan_out, capacity)

    @property
    def _subs(self) -> tuple[Subscriber, ...]:
        return self._groups.all

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def subscriber_backlog(self) -> int:
        """Events queued for the subscriber furthest behind."""
        return max((s.backlog for s in self._subs), default=0)

    def subscribe(self, event_filter: EventFilter, capacity: int | None = None) -> Subscriber:
        with self._lock:
            if len(self._subs) >= self.max_subscribers:
                raise TooManySubscribers(
                    f"{len(self._subs)} subscribers already (--grpc-max-subscribers)"
                )
            sub = Subscriber(
                next(self._ids),
                self,
                event_filter,
                capacity or self.subscriber_capacity,
                self.subscriber_bytes,
            )
            self._groups = _Groups((*self._subs, sub))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._groups = _Groups(tuple(s for s in self._subs if s is not sub))
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
        g = self._groups
        if not g.all:
            return
        items: list[Item] | None = None  # for every plain subscriber
        nbytes = 0
        events: Sequence[Event] = batch
        if g.plain:
            written = self.encoder.items(batch)
            items, events, losses = written.framed, written.written, written.losses
            nbytes = written.nbytes
            self._unwritable(written.failed)
        else:
            losses = [ev for ev in batch if isinstance(ev, Lost)]
            if losses:
                events = [ev for ev in batch if not isinstance(ev, Lost)]
        # Before the batch's events: a subscriber reports loss ahead of them.
        for lost in losses:
            for s in g.all:
                s.add_loss(lost.kernel, lost.daemon)
        if items is not None:
            for s in g.plain:
                s.queue.put_many(items, nbytes)
        if g.inline or g.threaded:
            self._filter(events, items, g.inline, g.threaded)

    def _unwritable(self, failed: list[tuple[Event, Exception]]) -> None:
        """Events that cannot be written: lost, as the hub's own drops are
        (the daemon's next Lost tells every subscriber), and each kind's
        first error logged. The stream goes on without them."""
        if not failed:
            return
        self._queue.count_dropped([ev for ev, _ in failed])
        for ev, exc in failed:
            if ev.type not in self._unwritable_kinds:
                self._unwritable_kinds.add(ev.type)
                _log.error("an event cannot be written", type=ev.type, error=repr(exc))

    def _filter(
        self,
        events: Sequence[Event],
        items: list[Item] | None,
        inline: tuple[Subscriber, ...],
        threaded: tuple[Subscriber, ...],
    ) -> None:
        """Events to the subscribers with a filter; `items`: the events
        already framed for the plain ones, if any, one for each."""
        assert items is None or len(items) == len(events)
        framed = self.encoder.framed
        matched: dict[Subscriber, list[Item]] = {s: [] for s in inline}
        examined: list[InboxItem] = []
        for i, ev in enumerate(events):
            facts = facts_of_event(ev)  # once for every filter
            data = items[i][1] if items is not None else None
            for s in inline:
                if s.filter.matches(facts):
                    if data is None:
                        try:
                            data = framed(ev)
                        except Exception as exc:  # noqa: BLE001 -- counted; the stream goes on
                            self._unwritable([(ev, exc)])
                            break
                    matched[s].append((ev.type, data))
            else:  # written, or not needed yet: the filter threads may take it
                if threaded:
                    examined.append((ev, facts))
        for s, mine in matched.items():
            s.queue.put_many(mine)
        for s in threaded:
            s.offer_unfiltered(examined)

    def close(self, timeout: float = 10.0) -> None:
        """Fan out what is queued, then end every subscriber's stream after its last event."""
        super().close(timeout)
        with self._lock:
            subs, self._groups = self._subs, _Groups(())
        for s in subs:
            s.close(discard=False)
