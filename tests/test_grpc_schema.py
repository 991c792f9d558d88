"""One schema, two encodings: a JSON line equals protobuf's JSON mapping of the same Event.

export/jsonl.py builds JSON directly (fast); export/pb.py builds protobuf
messages. These tests hold them equal, field for field, on every shape an
event takes. tests/test_grpc_api.py does the same on real kernel events.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from factories import (
    BASH,
    CID,
    DOCKER,
    HOSTILE,
    IN_POD,
    IN_POD_NO_METADATA,
    INIT,
    LS,
    SSHD,
    T0,
    connect_ev,
    events,
    exec_ev,
    exit_ev,
    file_open_ev,
    mkproc,
    summary_ev,
)
from google.protobuf.json_format import MessageToDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.jsonl import ANCESTORS, Serializer
from export.pb import JSON_OPTIONS, Encoder
from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core.events import (
    LOST_COUNT_MAX,
    Event,
    ExitStatus,
    LossCounts,
    Lost,
    PolicyMatch,
    ProcessExec,
    ProcessExit,
)


def as_json(ev: Event, ancestors: str = "full") -> dict[str, Any]:
    out: dict[str, Any] = json.loads(Serializer(ancestors).line(ev))
    return out


def as_proto_json(ev: Event, ancestors: str = "full") -> dict[str, Any]:
    msg = Encoder(ancestors).message(ev)
    # Through the wire and back, as a client sees it.
    parsed = pb.Event.FromString(msg.SerializeToString())
    return MessageToDict(parsed, **JSON_OPTIONS)  # type: ignore[arg-type]


EVENTS: dict[str, Event] = {
    "in a pod": ProcessExec(time=T0, node="n1", process=IN_POD, parent=IN_POD, ancestors=(BASH,)),
    "in a pod without metadata": exec_ev(IN_POD_NO_METADATA),
    "in a container, no pod": exit_ev(DOCKER),
    "exec": exec_ev(),
    "exit by signal with core": exit_ev(),
    "exit with code 0": ProcessExit(
        time=T0,
        node="n1",
        process=LS,
        parent=BASH,
        ancestors=(SSHD, INIT),
        exit=ExitStatus(code=0, signal=None),
    ),
    "pid 1 without parent": ProcessExec(
        time=T0, node="n1", process=INIT, parent=None, ancestors=()
    ),
    "hostile strings, unknown user, max cgroup": ProcessExec(
        time=T0, node="n1", process=HOSTILE, parent=SSHD, ancestors=(INIT,)
    ),
    "whole second": exec_ev(mkproc(7, start_time=1_700_000_000_000_000_000), time=0),
    "milliseconds": exec_ev(mkproc(7, start_time=1_700_000_000_120_000_000), time=1_000_000),
    "microseconds": exec_ev(mkproc(7, start_time=1_700_000_000_000_001_000), time=1_000),
    "memfd binary, zero device": exec_ev(
        mkproc(8, binary="memfd:x", flags=("memfd",), binary_dev=0, binary_ino=0, mnt_ns=0)
    ),
    "policy summary": summary_ev(policy=PolicyMatch("storm", 0, "post")),
    "lost": Lost(time=T0, node="n1", kernel={"process_exec": 3}, daemon={"malformed": 1}),
    "lost, empty": Lost(time=T0, node="n1"),
    "lost, max count": Lost(time=T0, node="n1", daemon={"process_exit": LOST_COUNT_MAX}),
}


# Property-based: any event the daemon can build, every kind, with and
# without container, pod, policy and each optional field.
_ANY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_ANY
@given(events(), st.sampled_from(ANCESTORS))
def test_any_event_json_line_equals_protobuf_json_mapping(ev: Event, ancestors: str) -> None:
    assert as_json(ev, ancestors) == as_proto_json(ev, ancestors)


@_ANY
@given(st.lists(events(), min_size=1, max_size=4), st.sampled_from(ANCESTORS))
def test_any_events_as_the_hub_sends_them_parse_to_the_same_messages(
    evs: list[Event], ancestors: str
) -> None:
    """The hub joins cached bytes (processes serialized once, events framed by
    hand): a client's parse of those bytes is the message protobuf builds."""
    enc = Encoder(ancestors)
    resp = pb.GetEventsResponse.FromString(b"".join(enc.framed(ev) for ev in evs))
    assert list(resp.events) == [Encoder(ancestors).message(ev) for ev in evs]


@pytest.mark.parametrize("ancestors", ANCESTORS)
@pytest.mark.parametrize("name", list(EVENTS))
def test_json_line_equals_protobuf_json_mapping(name: str, ancestors: str) -> None:
    ev = EVENTS[name]
    assert as_json(ev, ancestors) == as_proto_json(ev, ancestors)


def test_brief_ancestors_name_each_ancestor_and_none_leaves_them_out() -> None:
    ev = EVENTS["exit with code 0"]  # ls, parent bash, ancestors sshd and init
    full, brief, none = (as_json(ev, a) for a in ("full", "brief", "none"))
    assert [a["exec_id"] for a in full["ancestors"]] == [SSHD.exec_id, INIT.exec_id]
    assert "lineage" not in full and "lineage" not in none
    assert brief["ancestors"] == none["ancestors"] == []
    assert brief["lineage"] == {
        "ancestors": [
            {"exec_id": p.exec_id, "pid": p.pid, "binary": p.binary} for p in (SSHD, INIT)
        ]
    }
    # The process and its parent stay whole.
    assert brief["process"] == none["process"] == full["process"]
    assert brief["parent"] == none["parent"] == full["parent"]
    # A process with no ancestors says so in brief mode too.
    assert as_json(EVENTS["pid 1 without parent"], "brief")["lineage"] == {"ancestors": []}
    with pytest.raises(ValueError, match="ancestors"):
        Serializer("some")
    with pytest.raises(ValueError, match="ancestors"):
        Encoder("some")


def test_the_details_are_under_the_key_named_by_the_type() -> None:
    for ev in EVENTS.values():
        d = as_json(ev)
        kinds = {"process_exec", "process_exit", "file_open", "connect", "policy_summary", "lost"}
        assert [k for k in d if k in kinds] == [d["type"]]


def test_the_oneof_set_is_the_type() -> None:
    for ev in EVENTS.values():
        msg = Encoder().message(ev)
        assert msg.WhichOneof("event") == msg.type == ev.type


def test_every_field_of_the_proto_is_in_the_json() -> None:
    # A field added to the proto must be added to export/jsonl.py too.
    for msg, json_fields in (
        (pb.Process, set(as_json(exec_ev(IN_POD))["process"])),
        (pb.Container, set(as_json(exec_ev(IN_POD))["process"]["container"])),
        (pb.Pod, set(as_json(exec_ev(IN_POD))["process"]["pod"])),
        (pb.Ancestor, set(as_json(exit_ev(), "brief")["lineage"]["ancestors"][0])),
        (pb.PolicyMatch, set(as_json(file_open_ev(policy=PolicyMatch("p", 0, "post")))["policy"])),
        (
            pb.FileOpen,
            set(as_json(file_open_ev(result=-2, error="ENOENT"))["file_open"])
            | set(as_json(file_open_ev(op="rename", source="/etc/.x"))["file_open"]),
        ),
        (pb.PolicySummary, set(as_json(summary_ev())["policy_summary"])),
    ):
        assert json_fields == set(msg.DESCRIPTOR.fields_by_name), msg


@pytest.mark.parametrize(
    "ev",
    [
        file_open_ev(op="rename", source="/etc/.x", path="/etc/cron.d/x", flags=()),
        file_open_ev(op="symlink", source="/tmp/evil", user_memory=True, resolved=False),
        file_open_ev(result=-2, error="ENOENT", resolved=False, user_memory=True),
        connect_ev(via="sendto", protocol="UDP", sock_type="SOCK_DGRAM", user_memory=True),
        connect_ev(via="fastopen"),
    ],
)
def test_new_names_and_sends_without_connect_encode_alike(ev: Event) -> None:
    """op, source, via, user_memory: the same in the JSON line and protobuf's JSON."""
    assert as_json(ev) == as_proto_json(ev)


def test_unknown_pod_and_container_fields_are_absent() -> None:
    p = as_json(exec_ev(IN_POD_NO_METADATA))["process"]
    assert p["container"] == {"id": CID, "runtime": "cri-o"}
    assert p["pod"] == {"uid": "6b2c0e7e-4a8f-4d59-9f0e-2b1f6e3c9a10", "labels": {}}
    assert "container" not in as_json(exec_ev())["process"]


def test_encoder_reuses_process_messages_but_not_across_copies() -> None:
    enc = Encoder()
    first = enc.message(exec_ev(LS))
    thread_exit = exit_ev(mkproc(200, BASH, binary="/bin/ls", args=("ls", "-l"), tid=205))
    assert enc.message(thread_exit).process.tid == 205
    assert enc.message(exec_ev(LS)).process == first.process


def test_framed_events_concatenate_into_a_response() -> None:
    enc = Encoder()
    evs = list(EVENTS.values())
    data = b"".join(enc.framed(ev) for ev in evs)
    resp = pb.GetEventsResponse.FromString(data)
    assert [m.type for m in resp.events] == [ev.type for ev in evs]
    assert list(resp.events) == [enc.message(ev) for ev in evs]


def test_loss_counts_never_cut_a_count() -> None:
    c = LossCounts()
    c.add({"process_exec": LOST_COUNT_MAX + 10, "process_exit": 2, "zero": 0})
    assert c.take() == {"process_exec": LOST_COUNT_MAX, "process_exit": 2}
    assert c  # the rest waits
    assert c.take() == {"process_exec": 10}
    assert not c
    assert c.take() == {}
