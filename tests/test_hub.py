"""The gRPC fan-out (export/hub.py) in process: queues, loss accounting, batching.

No gRPC here: a subscriber's batches() is what the server sends, so these
read it directly. tests/test_grpc_api.py covers the same over real sockets.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
import re2
from factories import LS, T0, exec_ev, exit_ev, mkproc
from structlog.testing import capture_logs

from export.filters import EventFilter
from export.hub import BATCH_BYTES, UNFILTERED, Hub, Subscriber, TooManySubscribers
from export.pb import CUT_FLAG, MAX_EVENT_BYTES, Encoder
from export.proto_gen import tracer_v1_pb2 as pb
from export.sink import DropOldest
from tracer.core.events import Event, Lost, Process, ProcessExec


def everything() -> EventFilter:
    return EventFilter()


def only(kind: str) -> EventFilter:
    return EventFilter.from_request(pb.GetEventsRequest(allow=[pb.Filter(event_types=[kind])]))


def make_hub(**kw: int) -> Hub:
    return Hub("n1", lambda: T0, **kw)


def ev_at(i: int) -> Event:
    return exec_ev(time=T0 + i) if i % 2 == 0 else exit_ev(time=T0 + i)


def read(sub: Subscriber) -> Iterator[pb.Event]:
    for data in sub.batches():
        yield from pb.GetEventsResponse.FromString(data).events


def test_a_slow_subscriber_loses_its_oldest_and_learns_the_exact_count() -> None:
    hub = make_hub()
    slow = hub.subscribe(everything(), capacity=10)
    fast = hub.subscribe(everything(), capacity=1000)
    evs = [ev_at(i) for i in range(25)]
    hub.fan_out(evs)  # the hub thread's step, here
    hub.close()
    got_slow = list(read(slow))
    got_fast = list(read(fast))
    # The fast one has everything, and no loss report.
    assert [e.time.ToNanoseconds() for e in got_fast] == [T0 + i for i in range(25)]
    # The slow one: a Lost first (what it lost is older than what it has), then the newest 10.
    assert got_slow[0].type == "lost"
    assert dict(got_slow[0].lost.daemon) == {"process_exec": 8, "process_exit": 7}
    assert dict(got_slow[0].lost.kernel) == {}
    assert [e.time.ToNanoseconds() for e in got_slow[1:]] == [T0 + i for i in range(15, 25)]
    assert hub.subscriber_lost == {"process_exec": 8, "process_exit": 7}


def test_loss_is_counted_only_for_events_the_subscriber_asked_for() -> None:
    hub = make_hub()
    exits = hub.subscribe(only("process_exit"), capacity=5)
    hub.fan_out([ev_at(i) for i in range(20)])  # 10 exits, 10 execs
    hub.close()
    got = list(read(exits))
    assert dict(got[0].lost.daemon) == {"process_exit": 5}
    assert [e.type for e in got[1:]] == ["process_exit"] * 5


def test_shared_loss_reaches_every_subscriber_even_an_idle_one() -> None:
    hub = make_hub()
    a = hub.subscribe(only("process_exit"))
    b = hub.subscribe(everything())
    hub.offer(Lost(time=T0, node="n1", kernel={"process_exec": 4}, daemon={"malformed": 1}))
    for sub in (a, b):
        first = next(read(sub))  # wakes the subscriber although no event came
        assert first.type == "lost"
        assert dict(first.lost.kernel) == {"process_exec": 4}
        assert dict(first.lost.daemon) == {"malformed": 1}
    hub.close()


def test_an_event_is_serialized_once_for_all_subscribers() -> None:
    hub = make_hub()
    subs = [hub.subscribe(everything()) for _ in range(3)]
    hub.fan_out([exec_ev()])
    items = [s.queue.take() for s in subs]
    assert items[0][0][1] is items[1][0][1] is items[2][0][1]  # the same bytes object
    hub.close()


def test_a_loss_within_a_batch_reaches_everyone_before_the_batch_and_is_not_an_event() -> None:
    hub = make_hub()
    plain, exits = hub.subscribe(everything()), hub.subscribe(only("process_exit"))
    lost = Lost(time=T0, node="n1", kernel={"process_exec": 2})
    evs = [ev_at(0), ev_at(1), lost, ev_at(2), ev_at(3)]
    hub.fan_out(evs)
    hub.close()
    got, got_exits = list(read(plain)), list(read(exits))
    assert [e.type for e in got] == ["lost", *(e.type for e in evs if e is not lost)]
    assert [e.time.ToNanoseconds() for e in got[1:]] == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert got[1:] == [Encoder().message(e) for e in evs if e is not lost]
    assert [e.type for e in got_exits] == ["lost", "process_exit", "process_exit"]
    assert dict(got[0].lost.kernel) == dict(got_exits[0].lost.kernel) == {"process_exec": 2}
    # A filtered subscriber gets the bytes framed for the plain ones.
    assert got_exits[1] == got[2]


def test_batches_stay_under_the_message_limit() -> None:
    hub = make_hub()
    sub = hub.subscribe(everything())
    big = mkproc(200, args=("x" * 8000,) * 1)
    evs = [exec_ev(big, time=T0 + i) for i in range(300)]  # ~2.4 MB in all
    hub.fan_out(evs)
    hub.close()
    sizes = []
    n = 0
    for data in sub.batches():
        sizes.append(len(data))
        n += len(pb.GetEventsResponse.FromString(data).events)
    assert n == 300
    assert len(sizes) > 1
    assert max(sizes) <= BATCH_BYTES


def test_too_many_subscribers_are_refused_and_leaving_frees_a_place() -> None:
    hub = make_hub(max_subscribers=2)
    a = hub.subscribe(everything())
    hub.subscribe(everything())
    with pytest.raises(TooManySubscribers):
        hub.subscribe(everything())
    hub.unsubscribe(a)
    assert hub.subscribers == 1
    hub.subscribe(everything())
    hub.close()


def test_a_disconnected_subscriber_gets_nothing_more() -> None:
    hub = make_hub()
    sub = hub.subscribe(everything())
    hub.unsubscribe(sub)
    hub.fan_out([exec_ev(LS)])
    assert list(read(sub)) == []
    assert hub.subscribers == 0
    hub.close()


def test_events_flow_through_the_hub_thread() -> None:
    hub = make_hub()
    sub = hub.subscribe(only("process_exec"))
    for i in range(100):
        hub.offer(ev_at(i))
    hub.close()  # fans out what is queued, then ends the stream
    got = list(read(sub))
    assert [e.time.ToNanoseconds() for e in got] == [T0 + i for i in range(0, 100, 2)]


def test_with_no_subscriber_nothing_is_queued_and_a_stream_starts_at_its_subscription() -> None:
    hub = make_hub()
    hub.offer_many([ev_at(i) for i in range(10)])
    assert hub.backlog == 0 and hub.take_dropped() == {}
    sub = hub.subscribe(everything())
    hub.offer_many([ev_at(i) for i in range(10, 14)])
    hub.close()
    assert [e.time.ToNanoseconds() for e in read(sub)] == [T0 + i for i in range(10, 14)]


def test_a_batch_past_capacity_drops_the_oldest_as_single_puts_would() -> None:
    q: DropOldest[int] = DropOldest(5, lambda i: "odd" if i % 2 else "even", lambda i: i < 0)
    q.put_many([0, 1, 2])
    # 5 fills the queue and pushes 0 out; the pinned -1 gets in over
    # capacity; 6 pushes 1 out.
    q.put_many([3, 4, 5, -1, 6])
    assert q.take() == [2, 3, 4, 5, -1, 6]
    assert q.take_dropped() == {"even": 1, "odd": 1}
    q.put_many([7, 8])  # room: nothing dropped
    assert q.take() == [7, 8] and q.take_dropped() == {}


def test_a_byte_bound_drops_the_oldest_until_the_newest_fits() -> None:
    q: DropOldest[str] = DropOldest(100, lambda s: s[0], lambda s: s == "L", len, 10)
    q.put_many(["a123", "b123"])
    q.put_many(["c123"])  # 12 bytes > 10: a goes
    assert q.take() == ["b123", "c123"]
    assert q.take_dropped() == {"a": 1}
    q.put_many(["d123456789"])  # a taken batch frees its bytes: exactly the bound fits
    assert q.take() == ["d123456789"] and q.take_dropped() == {}
    q.put_many(["e1", "L", "f1"])
    q.put("g" * 25)  # larger than the bound: gets in alone, past the pinned L
    assert q.take() == ["L", "g" * 25]
    assert q.take_dropped() == {"e": 1, "f": 1}
    q.put_many(["h1234", "i1234"])  # the oversize item left with its batch
    assert q.take() == ["h1234", "i1234"] and q.take_dropped() == {}


def test_drop_oldest_never_drops_a_pinned_item() -> None:
    q: DropOldest[str] = DropOldest(3, kind=lambda s: s[0], pinned=lambda s: s == "L")
    for item in ["L", "a1", "b1", "a2", "b2"]:
        q.put(item)
    assert q.take() == ["L", "a2", "b2"]
    assert q.take_dropped() == {"a": 1, "b": 1}
    for item in ["L", "L", "L", "L"]:  # over capacity, but kept
        q.put(item)
    assert q.take() == ["L"] * 4


def test_events_for_a_subscriber_that_left_are_not_its_loss() -> None:
    hub = make_hub()
    sub = hub.subscribe(everything())
    sub.close()  # the client went away; the hub has not unsubscribed it yet
    hub.fan_out([exec_ev(LS)])
    assert list(read(sub)) == []
    hub.unsubscribe(sub)
    assert hub.subscriber_lost == {}
    hub.close()


# -- slow filters, big events ---------------------------------------------------------

# About the largest program REGEX_MEM admits: it searches 8 Ki Cyrillic
# letters in most of a second (RE2's DFA runs out of its memory; the NFA is slow).
SLOW = r"(?:\pL{60})x"
LETTERS = "".join(chr(0x430 + i % 32) for i in range(8192))
# Its search finds the match only at the end, having scanned everything.
SLOW_MATCH = mkproc(400, args=("p", LETTERS + "x"))


def matching(**fields: list[str]) -> EventFilter:
    return EventFilter.from_request(pb.GetEventsRequest(allow=[pb.Filter(**fields)]))


def test_a_regex_filter_runs_on_its_subscribers_thread_and_delivers_in_order() -> None:
    hub = make_hub()
    f = matching(event_types=["process_exec"], args_regex=["^-l$"])
    sub = hub.subscribe(f)
    assert sub.inbox is not None  # not the hub thread's work
    for i in range(100):
        hub.offer(ev_at(i))
    hub.close()  # fans out, then the filter thread drains its inbox, then the stream ends
    assert [e.time.ToNanoseconds() for e in read(sub)] == [T0 + i for i in range(0, 100, 2)]
    f.release()


def test_a_slow_filter_delays_only_its_own_subscriber() -> None:
    hub = make_hub()
    f = matching(args_regex=[SLOW])
    slow = hub.subscribe(f)
    fast = hub.subscribe(only("process_exec"))
    # Enough slow events for the filter to take about two seconds on this
    # machine, however fast it is.
    t = time.monotonic()
    re2.search(SLOW, LETTERS)
    n = max(5, min(400, int(2.0 / max(time.monotonic() - t, 1e-4))))
    t0 = time.monotonic()
    hub.offer_many([exec_ev(mkproc(400, args=("p", LETTERS)), time=T0 + i) for i in range(n)])
    hub.offer(exec_ev(SLOW_MATCH, time=T0 + n))
    got_fast = []
    for e in read(fast):
        got_fast.append(e)
        if len(got_fast) == n + 1:
            break
    fast_s = time.monotonic() - t0
    got_slow = next(read(slow))  # the one event that matches, once its filter got there
    slow_s = time.monotonic() - t0
    assert got_slow.time.ToNanoseconds() == T0 + n
    assert slow_s > 0.5, f"the filter was not slow ({slow_s:.2f} s): the test tests nothing"
    assert fast_s < slow_s / 2, f"the fast subscriber waited {fast_s:.2f} s of {slow_s:.2f} s"
    hub.unsubscribe(slow)
    hub.close()
    f.release()


def test_events_a_slow_filter_could_not_examine_are_counted_as_unfiltered() -> None:
    hub = make_hub()
    f = matching(args_regex=[SLOW])
    sub = hub.subscribe(f, capacity=2)
    hub.offer_many([exec_ev(SLOW_MATCH, time=T0 + i) for i in range(12)])
    hub.close()
    got = list(read(sub))
    lost = [e for e in got if e.type == "lost"]
    received = [e.time.ToNanoseconds() for e in got if e.type != "lost"]
    dropped = sum(n for e in lost for n in e.lost.daemon.values())
    assert {k for e in lost for k in e.lost.daemon} == {UNFILTERED}
    assert dropped > 0 and len(received) + dropped == 12
    assert received == [T0 + i for i in range(12 - len(received), 12)]  # the newest
    assert hub.subscriber_lost == {UNFILTERED: dropped}
    f.release()


def test_a_subscriber_queue_is_bounded_in_bytes() -> None:
    hub = make_hub(subscriber_bytes=1 << 20)
    sub = hub.subscribe(everything())
    fat = mkproc(300, args=("p", "y" * 40_000))
    hub.fan_out([exec_ev(fat, time=T0 + i) for i in range(100)])  # 4 MB, 100 events
    assert 0 < sum(len(data) for _, data in list(sub.queue._items)) <= 1 << 20
    hub.close()
    got = list(read(sub))
    assert got[0].type == "lost"
    dropped = got[0].lost.daemon["process_exec"]
    received = [e.time.ToNanoseconds() for e in got[1:]]
    assert 0 < len(received) <= 26 and len(received) + dropped == 100
    assert received == [T0 + i for i in range(100 - len(received), 100)]


def chain(depth: int, arg_bytes: int) -> list[Process]:
    """Processes, the root first, each with one long argument."""
    procs: list[Process] = []
    for pid in range(1000, 1000 + depth):
        procs.append(
            mkproc(pid, procs[-1] if procs else None, args=("sh", f"{pid}" * (arg_bytes // 4)))
        )
    return procs


def test_an_event_with_a_deep_chain_of_long_arguments_is_cut_to_the_limit() -> None:
    procs = chain(66, 32 << 10)
    *older, parent, me = procs
    ev = ProcessExec(T0, "n1", me, parent, tuple(reversed(older)))
    enc = Encoder()
    data = enc.event_bytes(ev)
    assert len(data) <= MAX_EVENT_BYTES  # uncut: 2.1 MB
    m = pb.Event.FromString(data)
    assert m.process.args == list(me.args) and m.parent.args == list(parent.args)
    cut = [CUT_FLAG in a.flags for a in m.ancestors]
    whole = cut.index(True)
    assert whole > 5 and all(cut[whole:])  # nearest first, whole while they fit
    assert all(
        a.args == list(p.args)
        for a, p in zip(m.ancestors[:whole], ev.ancestors[:whole], strict=True)
    )
    # Cut ones keep who they are, so a client can find them by exec_id.
    assert [a.exec_id for a in m.ancestors] == [p.exec_id for p in ev.ancestors]
    assert all(not a.args and not a.cwd for a in m.ancestors[whole:])
    assert [a.parent_exec_id for a in m.ancestors] == [p.parent_exec_id or "" for p in ev.ancestors]
    # The same encoder writes a small event whole.
    small = pb.Event.FromString(enc.event_bytes(exec_ev()))
    assert not any(CUT_FLAG in p.flags for p in (small.process, small.parent, *small.ancestors))


@pytest.mark.parametrize("plain", [True, False], ids=["with a plain subscriber", "filtered only"])
def test_an_event_that_cannot_be_written_is_lost_and_the_stream_goes_on(plain: bool) -> None:
    hub = make_hub()
    subs = [hub.subscribe(everything())] if plain else []
    execs = hub.subscribe(only("process_exec"))  # framed by the plain ones' items, if any
    bad = exec_ev(dataclasses.replace(LS, args=("\udcff",)), time=T0 + 2)  # a lone surrogate
    batch = [exec_ev(time=T0), Lost(T0, "n1", kernel={"process_exec": 5}), bad, exit_ev()]
    with capture_logs() as logs:
        hub.offer_many([*batch, exec_ev(time=T0 + 3)])
        hub.offer_many([bad])
        hub.close()  # fans out what is queued: the hub thread must not have stopped
    assert hub.error is None
    assert hub.take_dropped() == {"process_exec": 2}  # the daemon's next Lost reports it
    assert [e["type"] for e in logs if "cannot be written" in e["event"]] == ["process_exec"]
    first, last = ("process_exec", T0), ("process_exec", T0 + 3)
    wanted = [(execs, [first, last]), *[(s, [first, ("process_exit", T0), last]) for s in subs]]
    for sub, want in wanted:
        got = list(read(sub))
        assert dict(got[0].lost.kernel) == {"process_exec": 5}
        # In order, each framed as itself (the items are matched to their events).
        assert [(e.type, e.time.ToNanoseconds()) for e in got[1:]] == want
