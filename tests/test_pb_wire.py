"""export/_pbwire.c writes the bytes upb writes.

The C encoder writes Event messages from the events' attributes by tables
built from the generated descriptors (export/pb.py). The oracle is the
upb-built message of tests/pb_reference.py (what export/pb.py built before):
each part the encoder writes (an event's head, each process whole, cut or
named in a lineage) must equal upb's deterministic serialization byte for
byte (deterministic: upb otherwise writes map entries in hash order; the C
encoder sorts them by key), and the whole event, parsed by the generated
code, must equal the reference message.
"""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc
from typing import ClassVar

import pytest
from factories import (
    BASH,
    HOSTILE,
    IN_POD,
    INIT,
    LS,
    SSHD,
    T0,
    events,
    exec_ev,
    mkproc,
    summary_ev,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pb_reference import (
    ancestor_message,
    cut_message,
    event_message,
    head_message,
    process_message,
)

from export import _pbwire as wire
from export.jsonl import ANCESTORS, CACHE_BYTES
from export.pb import (
    _ANCESTOR,
    _HEAD_ROWS,
    _HEADS,
    _PROCESS,
    _TAGS,
    MAX_EVENT_BYTES,
    Encoder,
    _cut,
)
from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core import text
from tracer.core.events import (
    Container,
    Event,
    ExitStatus,
    FileInfo,
    FileOpen,
    Lost,
    Pod,
    PolicyMatch,
    Process,
    ProcessExec,
    ProcessExit,
)


def upb(m: pb.Event | pb.Process | pb.Ancestor) -> bytes:
    return m.SerializeToString(deterministic=True)


def processes_of(ev: Event) -> list[Process]:
    if isinstance(ev, Lost):
        return []
    return [ev.process, *([ev.parent] if ev.parent else []), *ev.ancestors]


def check(ev: Event) -> None:
    """Every part the encoder writes of `ev`, and the whole, against upb."""
    assert _HEADS[type(ev)].encode(ev) == upb(head_message(ev))
    for p in processes_of(ev):
        assert _PROCESS.encode(p) == upb(process_message(p))
        assert _PROCESS.encode(_cut(p)) == upb(cut_message(p))
        assert _ANCESTOR.encode(p) == upb(ancestor_message(p))
    for ancestors in ANCESTORS:
        data = Encoder(ancestors).event_bytes(ev)
        if len(data) < MAX_EVENT_BYTES // 2:  # else cut: tests/test_hub.py
            assert pb.Event.FromString(data) == event_message(ev, ancestors)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_any_event_is_written_as_upb_writes_it(ev: Event) -> None:
    check(ev)


@settings(max_examples=100, deadline=None)
@given(events())
def test_a_summary_is_written_as_upb_writes_it(ev: Event) -> None:
    # factories.events() draws no policy_summary; take its processes.
    if not isinstance(ev, Lost):
        policy = PolicyMatch("storm", 3, "post", "high", ("T1", ""), "m", "monitor")
        check(summary_ev(ev.process, policy=policy, count=2**64 - 1, first=0))
        check(summary_ev(ev.process, policy=None, window_start=2**63 - 1))


ALL_CHARS = "".join(map(chr, range(256))) + "\u2603\U0001f600\uffff\U0010ffff"
# Every byte value as the kernel could hand it over, escaped as the daemon does.
ALL_BYTES, _ = text.decode(bytes(range(256)) + b"\xc3\x28\xff\xfe")
LABELS = {"": "", "b": "x" * 300, "a": ALL_CHARS, "\u00e9": "1", "z\x00": "", "A": "é"}


def hostile(**kw: object) -> Process:
    return dataclasses.replace(mkproc(4242, BASH), **kw)  # type: ignore[arg-type]


PROCESSES = {
    "every char": hostile(
        binary=ALL_CHARS, args=(ALL_CHARS, "", ALL_BYTES), cwd=ALL_CHARS, user=ALL_CHARS
    ),
    "every byte, escaped": hostile(binary=ALL_BYTES, args=(ALL_BYTES,), flags=("non_utf8",)),
    "4 KiB and 64 KiB args": hostile(args=("a" * 4096, "\u00e9" * 32768), binary="/" * 4096),
    "empty strings": hostile(
        exec_id="", user="", binary="", args=("",), cwd="", parent_exec_id="", flags=("",)
    ),
    "zeros, present where optional": hostile(
        pid=0,
        tid=0,
        uid=0,
        euid=0,
        gid=0,
        egid=0,
        auid=0,
        cgroup_id=0,
        start_time=0,
        binary_dev=0,
        binary_ino=0,
        mnt_ns=0,
    ),
    "None where a field has no presence: unset": hostile(args=None, cwd=None, tid=None),
    "unknown optionals": hostile(
        auid=None, user=None, parent_exec_id=None, binary_dev=None, binary_ino=None, mnt_ns=None
    ),
    "maximums": hostile(
        pid=2**32 - 1,
        uid=2**32 - 1,
        auid=2**32 - 1,
        cgroup_id=2**64 - 1,
        binary_ino=2**64 - 1,
        mnt_ns=2**32 - 1,
        start_time=2**63 - 1,
    ),
    "before 1970": hostile(start_time=-1),
    "container, empty": hostile(container=Container(id="", runtime="")),
    "container, named": hostile(container=Container("c" * 64, "cri-o", ALL_CHARS, "")),
    "pod, empty": hostile(pod=Pod(uid="")),
    "pod, hostile labels": hostile(
        container=Container("f" * 64, "containerd", "app", "img:1"),
        pod=Pod("u", ALL_CHARS, "", LABELS, "", "Deployment"),
    ),
    "pod, many labels": hostile(pod=Pod("u", labels={f"k{i}": str(i) for i in range(200)})),
    "factories' hostile process": HOSTILE,
    "factories' pod": IN_POD,
}


@pytest.mark.parametrize("name", list(PROCESSES))
def test_hostile_processes_are_written_as_upb_writes_them(name: str) -> None:
    p = PROCESSES[name]
    check(ProcessExec(T0, ALL_CHARS, p, p, (p, SSHD, INIT)))
    check(ProcessExit(-T0, "", p, None, (), ExitStatus(-(2**31), ALL_CHARS, True)))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21])
def test_lengths_on_every_varint_boundary(n: int) -> None:
    info = FileInfo("p" * n, ("O_RDONLY",) * min(n, 3), 0, -(2**31), "x" * n, "h", True, True)
    check(FileOpen(T0, "n1", LS, BASH, (), info, None))


def test_lost_counts_are_written_as_upb_writes_them() -> None:
    check(Lost(T0, "n1", {"": 0, "b": 2**32 - 1, "a": 1}, {ALL_CHARS: 7}))
    check(Lost(0, ""))


BAD = [
    ("pid over 32 bits", {"pid": 2**32}),
    ("negative uid", {"uid": -1}),
    ("cgroup over 64 bits", {"cgroup_id": 2**64}),
    ("lone surrogate", {"binary": "/bin/\udcff"}),
    ("lone surrogate in args", {"args": ("a", "\ud800")}),
    ("str where an int goes", {"tid": "1"}),
    ("int where a str goes", {"cwd": 5}),
]


@pytest.mark.parametrize("name,change", BAD, ids=[b[0] for b in BAD])
def test_what_upb_refuses_the_encoder_refuses(name: str, change: dict[str, object]) -> None:
    p = hostile(**change)
    with pytest.raises(Exception) as ref:
        upb(process_message(p))
    with pytest.raises(type(ref.value)):
        _PROCESS.encode(p)
    with pytest.raises(type(ref.value)):
        Encoder().event_bytes(ProcessExec(T0, "n1", p, None, ()))


def test_exit_codes_out_of_int32_are_refused() -> None:
    ev = ProcessExit(T0, "n1", LS, BASH, (), ExitStatus(2**31, None))
    with pytest.raises(ValueError):
        upb(head_message(ev))
    with pytest.raises(ValueError):
        _HEADS[ProcessExit].encode(ev)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(0, 3000)), min_size=1, max_size=60))
def test_the_process_cache_stays_within_its_bounds(procs: list[tuple[int, int]]) -> None:
    cache = wire.Cache(_PROCESS, 8, 4096)
    for pid, size in procs:
        p = mkproc(pid, BASH, args=("x" * size,))
        sized = cache.get(p)
        assert sized == varint(len(upb(process_message(p)))) + upb(process_message(p))
        assert cache.get(p) is sized  # written once
        assert cache.get(dataclasses.replace(p)) is not sized  # another image of the pid
        assert 1 <= cache.entries <= 8
        assert cache.held <= 4096 or cache.entries == 1


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def test_replacing_a_process_of_the_same_exec_id_does_not_grow_what_is_held() -> None:
    cache = wire.Cache(_PROCESS, 8, 1 << 20)
    p = mkproc(7, BASH, args=("x" * 1000,))
    cache.get(p)
    one = cache.held
    for _ in range(50):
        cache.get(dataclasses.replace(p))  # another image, the same exec_id
    assert (cache.entries, cache.held) == (1, one)


BIG = 32 << 10


def big_chain(chain: int, depth: int = 64) -> list[Process]:
    """A deep exec chain, each process with an argument of its own."""
    return [
        mkproc(1000 + k, BASH, exec_id=f"{chain}:{k}", args=(f"{chain}.{k}".ljust(BIG, "a"),))
        for k in range(depth)
    ]


@pytest.mark.parametrize("prepare", [_cut, None], ids=["cut", "brief"])
def test_an_entry_is_charged_the_process_it_keeps_alive(prepare: object) -> None:
    # A cut or brief process's bytes are small, but the entry holds the
    # whole process: charged by its whole size, 16 entries fill 1 MiB.
    table = _PROCESS if prepare else _ANCESTOR
    cache = wire.Cache(table, 1000, 1 << 20, prepare=prepare, measure=_PROCESS)
    for p in big_chain(0, 100):
        assert len(cache.get(p)) < 300
        assert cache.entries <= (1 << 20) // BIG and cache.held <= 1 << 20


@pytest.mark.parametrize("ancestors", ["full", "brief"])
def test_what_the_encoders_caches_keep_alive_is_bounded(ancestors: str) -> None:
    # Each cache is charged what its entries keep alive (CACHE_BYTES each);
    # 40 chains of 64 processes of 32 KiB arguments are 80 MiB.
    enc = Encoder(ancestors)
    tracemalloc.start()
    try:
        for chain in range(40):
            procs = big_chain(chain)
            enc.event_bytes(ProcessExec(T0, "n1", procs[0], procs[1], tuple(procs[2:])))
        del procs
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held <= 3 * CACHE_BYTES


def events_with(heads: dict[type, tuple[wire.Message, bool]], whole: wire.Cache) -> wire.Events:
    return wire.Events(
        heads=heads,
        whole=whole,
        cut=wire.Cache(_PROCESS, 4, 1 << 20),
        brief=wire.Cache(_ANCESTOR, 4, 1 << 20),
        ancestors=wire.ANCESTORS_FULL,
        tags=_TAGS,
        whole_bytes=1 << 19,
        max_bytes=1 << 20,
    )


class _Vanishing:
    """An object whose attribute empties the list that holds it, then collects."""

    type = "ev"
    holder: ClassVar[list[object]] = []
    freed = 0

    def __del__(self) -> None:
        _Vanishing.freed += 1

    @property
    def name(self) -> str:
        self.holder.clear()
        gc.collect()
        return "x" * 100

    @property
    def alive(self) -> str:
        """How many have been freed (read from itself, freed too, if not held)."""
        return str(_Vanishing.freed)


def test_a_list_emptied_while_written_is_not_read_freed() -> None:
    # The events' and repeated fields' attributes run Python code.
    head = wire.Message(((1, wire.STRING, 0, "name", None),))
    events = events_with({_Vanishing: (head, False)}, wire.Cache(_PROCESS, 4, 1 << 20))
    _Vanishing.holder[:] = [_Vanishing() for _ in range(8)]
    framed, written, _, _, failed = events.items(_Vanishing.holder, Lost)
    assert len(framed) == len(written) == 8 and not failed
    item = wire.Message(((1, wire.STRING, 0, "name", None), (2, wire.STRING, 0, "alive", None)))
    table = wire.Message(((1, wire.MESSAGE, wire.REPEATED, "holder", item),))
    _Vanishing.holder[:] = [_Vanishing() for _ in range(4)]
    _Vanishing.freed = 0
    # The first, which emptied the list, is written whole, alive while it
    # is (the other three are freed); then the list ends.
    assert table.encode(_Vanishing) == b"\x0a\x69\x0a\x64" + b"x" * 100 + b"\x12\x013"


def test_caches_and_events_are_initialized_once_and_only_with_initialized_caches() -> None:
    cache = wire.Cache(_PROCESS, 4, 100)
    with pytest.raises(RuntimeError, match="already"):
        cache.__init__(_ANCESTOR, 4, 100)  # type: ignore[misc]
    with pytest.raises(RuntimeError, match="initialized Caches"):
        events_with(dict(_HEAD_ROWS), wire.Cache.__new__(wire.Cache))
    events = events_with(dict(_HEAD_ROWS), cache)
    with pytest.raises(RuntimeError, match="already"):
        events.__init__({}, cache, cache, cache, 0, _TAGS, 1, 1)  # type: ignore[misc]
    assert pb.Event.FromString(events.encode(exec_ev())).process.pid == LS.pid


def test_events_keep_their_own_copy_of_the_heads() -> None:
    heads = dict(_HEAD_ROWS)
    events = events_with(heads, wire.Cache(_PROCESS, 4, 100))
    heads[ProcessExec] = "not a row"  # type: ignore[assignment]
    assert pb.Event.FromString(events.encode(exec_ev())).type == "process_exec"
