"""OCSF and ECS output (export/ocsf.py, export/ecs.py, export/siem.py), checked against the
published schemas.

OCSF: the OCSF 1.3.0 schema pydantic-ocsf bundles, and its pydantic models
of the classes: each class's required attributes present, every attribute
emitted known to its class or object (with the profiles the event lists),
of its type, and every enumerated id one the schema has.

ECS: Elastic's own field definitions (npm @elastic/ecs, 8.11 and 9.4, put
under build/ecs by `make ecs-defs`, which `make test` runs): every field
emitted outside `tracer.*` exists in both, with the value ECS's type
wants, and the categorization fields hold allowed values.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ocsf
import orjson
import pytest
from conftest import Daemon, new_marker, tracer_cmd
from factories import BASH, INIT, LS, SSHD, T0, events, exec_ev, exit_ev, mkproc, summary_ev
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export import FormatSerializer, Serializer, convert, mapper_for
from export.ecs import EcsMapper
from export.ocsf import PARENT_DEPTH, OcsfMapper
from tracer.core.events import (
    Connect,
    ConnectInfo,
    Container,
    Credentials,
    Event,
    ExitStatus,
    FileAttr,
    FileAttrInfo,
    FileInfo,
    FileOpen,
    Lost,
    Pod,
    PolicyMatch,
    PrivilegeChange,
    PrivilegeInfo,
    Process,
    ProcessExec,
    ProcessExit,
)

REPO = Path(__file__).resolve().parent.parent
JsonDict = dict[str, Any]

# -- events of every kind, with and without container, pod, policy -------------

CONTAINER = Container(id="3f2a" * 16, runtime="containerd", name="app", image="nginx:1.27")
POD = Pod(
    uid="6b2c0e7e-4a8f-4d59-9f0e-2b1f6e3c9a10",
    namespace="shop",
    name="web-5d8f9c7b6-x1",
    labels={"app": "web", "tier": "front"},
    workload="web",
    workload_kind="Deployment",
)
BARE_CONTAINER = Container(id="9e" * 32, runtime="docker")
POST = PolicyMatch(
    "credential-files", 0, "post", "high", ("T1003.008", "creds"), "credential file read"
)
KILL = PolicyMatch("no-exfil", 2, "sigkill")
DENY = PolicyMatch("protect-keys", 1, "deny", "critical")
WOULD_KILL = PolicyMatch("no-exfil", 2, "sigkill", mode="monitor")


def _in(c: Container | None, pod: Pod | None) -> tuple[Process, Process, tuple[Process, ...]]:
    """LS and its parent BASH (with their ancestors) in a container or pod, or not."""
    if c is None:
        return LS, BASH, (SSHD, INIT)
    bash = mkproc(100, SSHD, container=c, pod=pod)
    ls = mkproc(200, bash, binary="/bin/ls", args=("ls", "-l"), container=c, pod=pod)
    return ls, bash, (SSHD, INIT)


def _open(
    policy: PolicyMatch | None, where: tuple[Container | None, Pod | None], **kw: Any
) -> FileOpen:
    p, parent, anc = _in(*where)
    f = {
        "path": "/etc/shadow",
        "flags": ("O_RDONLY", "O_CLOEXEC"),
        "mode": 0,
        "result": 3,
        "error": None,
        "hook": "tracepoint/sys_exit_openat",
        "truncated": False,
        "resolved": True,
    } | kw
    return FileOpen(
        time=T0,
        node="n1",
        process=p,
        parent=parent,
        ancestors=anc,
        file=FileInfo(**f),
        policy=policy,
    )


def _connect(
    policy: PolicyMatch | None, where: tuple[Container | None, Pod | None], **kw: Any
) -> Connect:
    p, parent, anc = _in(*where)
    c = {
        "family": "AF_INET",
        "protocol": "TCP",
        "sock_type": "SOCK_STREAM",
        "daddr": "10.1.2.3",
        "dport": 443,
        "saddr": "10.0.0.9",
        "sport": 40312,
        "unix_path": None,
        "result": 0,
        "error": None,
        "hook": "tracepoint/sys_connect",
    } | kw
    return Connect(
        time=T0,
        node="n1",
        process=p,
        parent=parent,
        ancestors=anc,
        connect=ConnectInfo(**c),
        policy=policy,
    )


_ROOT = Credentials(0, 0, 0, 0, 1000, 1000, 1000, 1000, (), ("CAP_SETUID",), ("CAP_SETUID",))
_USER = Credentials(*([1000] * 8), (), (), ())


def _privilege(
    policy: PolicyMatch | None, where: tuple[Container | None, Pod | None], op: str = "setuid",
) -> PrivilegeChange:
    p, parent, anc = _in(*where)
    changed = ("uid", "euid", "suid", "fsuid", "cap_permitted", "cap_effective")
    info = PrivilegeInfo(op, _USER, _ROOT, changed, True, "tracepoint/sys_exit")
    return PrivilegeChange(T0, "n1", p, parent, anc, info, policy)


def _attr(
    policy: PolicyMatch | None, where: tuple[Container | None, Pod | None], chmod: bool = True
) -> FileAttr:
    p, parent, anc = _in(*where)
    info = FileAttrInfo(
        "chmod" if chmod else "chown",
        "fchmodat" if chmod else "fchown",
        "/tmp/x/payload",
        0o4755 if chmod else None,
        None if chmod else 0,
        None,
        None if chmod else 0o100644,
        "tracepoint/sys_exit",
        False,
        not chmod,
        False,
        not chmod,
    )
    return FileAttr(T0, "n1", p, parent, anc, info, policy)


def _exec(policy: PolicyMatch | None, where: tuple[Container | None, Pod | None]) -> ProcessExec:
    p, parent, anc = _in(*where)
    return ProcessExec(time=T0, node="n1", process=p, parent=parent, ancestors=anc, policy=policy)


def _exit(
    where: tuple[Container | None, Pod | None], code: int | None, signal: str | None
) -> ProcessExit:
    p, parent, anc = _in(*where)
    return ProcessExit(
        time=T0, node="n1", process=p, parent=parent, ancestors=anc, exit=ExitStatus(code, signal)
    )


WHERE = {"host": (None, None), "container": (BARE_CONTAINER, None), "pod": (CONTAINER, POD)}
ESCAPED = "/tmp/caf\\xe9"  # a non-UTF-8 name as the daemon escapes it


def every_event() -> Iterator[tuple[str, Event]]:
    for w, where in WHERE.items():
        yield f"exec-{w}", _exec(None, where)
        yield f"exec-killed-{w}", _exec(KILL, where)
        yield f"exit-code-{w}", _exit(where, 3, None)
        yield f"exit-signal-{w}", _exit(where, None, "SIGKILL")
        yield f"open-{w}", _open(POST, where)
        yield f"open-failed-{w}", _open(POST, where, result=-2, error="ENOENT", resolved=False)
        yield (
            f"open-write-denied-{w}",
            _open(DENY, where, flags=("O_WRONLY", "O_CREAT", "O_TRUNC"), result=-1, error="EPERM"),
        )
        yield f"privilege-{w}", _privilege(POST, where)
        yield f"privilege-unposted-{w}", _privilege(None, where, "exec")
        yield f"privilege-capset-killed-{w}", _privilege(KILL, where, "capset")
        yield f"chmod-{w}", _attr(POST, where)
        yield f"chown-{w}", _attr(None, where, chmod=False)
        yield f"connect-{w}", _connect(POST, where)
        p, _, _ = _in(*where)
        yield f"summary-{w}", summary_ev(p, POST)
        yield f"summary-connect-{w}", summary_ev(p, WOULD_KILL, event="connect", aggregate=False,
                                                 limit=10, by="cgroup")
        yield f"connect-monitored-{w}", _connect(WOULD_KILL, where)
        yield f"connect-refused-{w}", _connect(POST, where, result=-111, error="ECONNREFUSED")
        yield (
            f"connect-killed-v6-{w}",
            _connect(
                KILL,
                where,
                family="AF_INET6",
                daddr="fd00::1",
                saddr=None,
                sport=None,
                result=-115,
                error="EINPROGRESS",
            ),
        )
        yield (
            f"connect-unix-{w}",
            _connect(
                POST,
                where,
                family="AF_UNIX",
                protocol=None,
                daddr=None,
                dport=None,
                saddr=None,
                sport=None,
                unix_path="@bus",
            ),
        )
    yield "exec-no-parent", ProcessExec(time=T0, node="n1", process=INIT, parent=None, ancestors=())
    odd = mkproc(300, BASH, binary=ESCAPED, args=(ESCAPED,), flags=("non_utf8",))
    yield (
        "open-non-utf8",
        FileOpen(
            time=T0,
            node="n1",
            process=odd,
            parent=BASH,
            ancestors=(SSHD, INIT),
            file=FileInfo(ESCAPED, ("O_RDONLY",), 0, 3, None, "tp", False, True, non_utf8=True),
            policy=POST,
        ),
    )
    yield (
        "exec-kernel-thread",
        ProcessExec(
            time=T0,
            node="n1",
            process=mkproc(2, None, binary="[kthreadd]", args=(), flags=("kernel_thread",)),
            parent=None,
            ancestors=(),
        ),
    )
    yield "lost", Lost(time=T0, node="n1", kernel={"process_exec": 120}, daemon={"file_open": 7})
    yield "lost-empty", Lost(time=T0, node="n1")


EVENTS = dict(every_event())


def native(ev: Event) -> JsonDict:
    out: JsonDict = orjson.loads(Serializer().line(ev))
    return out


def daemon_line(fmt: str, ev: Event) -> JsonDict:
    line = FormatSerializer(mapper_for(fmt, "0.1.0")).line(ev)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    out: JsonDict = orjson.loads(line)
    return out


# -- OCSF 1.3.0, from the schema pydantic-ocsf bundles -------------------------

OCSF_SCHEMA = json.loads((Path(ocsf.__file__).parent / "schemas" / "v1_3_0.json").read_text())
# The schema file has each class's and object's own attributes; what OCSF
# 1.3.0 puts in through `$include` (includes/*.json, profiles/*.json) is not
# in it, so those attributes are listed here from OCSF 1.3.0, by source.
_INCLUDED = {
    # includes/classification.json (every class)
    "activity_id": "integer_t",
    "activity_name": "string_t",
    "category_uid": "integer_t",
    "category_name": "string_t",
    "class_uid": "integer_t",
    "class_name": "string_t",
    "type_uid": "long_t",
    "type_name": "string_t",
    # includes/occurrence.json
    "time": "timestamp_t",
    "start_time": "timestamp_t",
    "end_time": "timestamp_t",
    "count": "integer_t",
    "duration": "long_t",
    "timezone_offset": "integer_t",
}
_PROFILE_ATTRS = {
    "security_control": {
        "action": "string_t",
        "action_id": "integer_t",
        "disposition": "string_t",
        "disposition_id": "integer_t",
        "policy": "policy",
        "attacks": "attack",
        "firewall_rule": "firewall_rule",
        "malware": "malware",
    },
    "host": {"device": "device", "actor": "actor"},
    "container": {"container": "container", "namespace_pid": "integer_t"},
}
_REQUIRED_EVERYWHERE = {
    "activity_id",
    "category_uid",
    "class_uid",
    "type_uid",
    "time",
    "severity_id",
    "metadata",
}
# Activity ids of Network Activity (includes/network/network_activities.json).
_NETWORK_ACTIVITIES = {0, 1, 2, 3, 4, 5, 6, 7, 99}
_CLASS_NAMES = {
    1001: "file_activity",
    1007: "process_activity",
    4001: "network_activity",
    1008: "event_log",
}
_MODELS = {1001: "FileActivity", 1007: "ProcessActivity", 4001: "NetworkActivity", 1008: "EventLog"}


def _spec(kind: str, name: str) -> tuple[dict[str, JsonDict], list[str]]:
    """Attributes of an event class or object with those it extends; its profiles' names."""
    attrs: dict[str, JsonDict] = {}
    profiles: list[str] = []
    chain = []
    while name:
        spec = OCSF_SCHEMA[kind][name]
        chain.append(spec)
        name = spec.get("extends", "")
    for spec in reversed(chain):  # the subclass's settings win
        for a, v in spec.get("attributes", {}).items():
            if a == "$include":
                profiles += [Path(p).stem for p in v if p.startswith("profiles/")]
                continue
            attrs[a] = {**attrs.get(a, {}), **v}
    return attrs, profiles


def _type_of(attr: str, spec: JsonDict) -> tuple[str, bool]:
    d = OCSF_SCHEMA["dictionary"]["attributes"].get(attr, {})
    t = spec.get("type") or d.get("type") or _INCLUDED.get(attr)
    assert t is not None, f"no type for {attr}"
    return t, bool(spec.get("is_array", d.get("is_array", False)))


def _enum(attr: str, spec: JsonDict) -> set[int] | None:
    """The ids an enumerated attribute takes: the class's or object's own
    with the dictionary's (0 Unknown, 99 Other), as OCSF compiles them."""
    own = spec.get("enum")
    if attr == "activity_id" and not own:
        return None  # a class whose activities come from an include (checked apart)
    common = OCSF_SCHEMA["dictionary"]["attributes"].get(attr, {}).get("enum") or {}
    if not own and not common:
        return None
    return {int(k) for k in (own or {})} | {int(k) for k in common} | {0, 99}


def _check_value(where: str, t: str, value: Any) -> list[str]:
    if t in ("integer_t", "long_t", "timestamp_t", "port_t"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t == "boolean_t":
        ok = isinstance(value, bool)
    elif t in ("object_t", "json_t"):
        ok = isinstance(value, dict)
    elif t == "ip_t":
        ok = isinstance(value, str) and bool(ipaddress.ip_address(value))
    elif t == "datetime_t":
        ok = isinstance(value, str) and value.endswith("Z")
    elif t.endswith("_t"):
        ok = isinstance(value, str)
    else:  # an object
        ok = isinstance(value, dict)
    return [] if ok else [f"{where}: {value!r} is not {t}"]


def _check_object(
    where: str, obj: JsonDict, attrs: dict[str, JsonDict], profiles: list[str], active: set[str]
) -> list[str]:
    """Problems of one OCSF object or event against its attributes."""
    problems: list[str] = []
    known = dict(attrs)
    for prof in profiles:
        if prof in active:
            for a, t in _PROFILE_ATTRS.get(prof, {}).items():
                known.setdefault(a, {"type": t})
    for key, value in obj.items():
        base = key[:-3] if key.endswith("_dt") else None
        if key not in known and base in known and "datetime" in active:
            t, _ = _type_of(base, known[base])
            if t == "timestamp_t":
                problems += _check_value(f"{where}{key}", "datetime_t", value)
                continue
        if key not in known:
            problems.append(f"{where}{key}: not an attribute here")
            continue
        t, is_array = _type_of(key, known[key])
        values = value if is_array else [value]
        if is_array and not isinstance(value, list):
            problems.append(f"{where}{key}: not an array")
            continue
        for i, v in enumerate(values):
            at = f"{where}{key}" + (f"[{i}]" if is_array else "")
            problems += _check_value(at, t, v)
            enum = _enum(key, known[key])
            if key.endswith("_id") and enum is not None and v not in enum:
                problems.append(f"{at}: {v} is not one of the enumerated ids")
            if not t.endswith("_t") and t != "object" and isinstance(v, dict):
                sub, sub_profiles = _spec("objects", t)
                problems += _check_object(at + ".", v, sub, sub_profiles, active)
    for a, spec in attrs.items():
        if spec.get("requirement") == "required" and a not in obj:
            problems.append(f"{where}{a}: required, absent")
    return problems


def ocsf_problems(d: JsonDict) -> list[str]:
    cls = _CLASS_NAMES[d["class_uid"]]
    attrs, profiles = _spec("events", cls)
    for a in _INCLUDED:
        attrs.setdefault(a, {"type": _INCLUDED[a]})
    active = set(d["metadata"].get("profiles", []))
    problems = [f"{a}: required, absent" for a in _REQUIRED_EVERYWHERE if a not in d]
    problems += _check_object("", d, attrs, [*profiles, "datetime"], active)
    if d["class_uid"] == 4001 and d["activity_id"] not in _NETWORK_ACTIVITIES:
        problems.append(f"activity_id {d['activity_id']} is no Network Activity")
    if d["type_uid"] != d["class_uid"] * 100 + d["activity_id"]:
        problems.append("type_uid is not class_uid * 100 + activity_id")
    # And pydantic-ocsf's own model of the class: required fields, known fields' types.
    model = getattr(__import__("ocsf.v1_3_0.events", fromlist=["x"]), _MODELS[d["class_uid"]])
    try:
        model.model_validate(d)
    except Exception as exc:  # noqa: BLE001 -- the message is the finding
        problems.append(f"pydantic-ocsf: {exc}")
    return problems


@pytest.mark.parametrize("name", list(EVENTS))
def test_ocsf_every_event_kind_is_valid_ocsf_1_3_0(name: str) -> None:
    ev = EVENTS[name]
    d = daemon_line("ocsf", ev)
    assert ocsf_problems(d) == []
    assert d["metadata"]["version"] == "1.3.0"
    assert d["metadata"]["product"]["name"] == "tracer"
    # The exact time: ms in `time`, the nanoseconds in time_dt and original_time.
    assert d["time"] == T0 // 1_000_000
    assert d["time_dt"] == d["metadata"]["original_time"] == "2023-11-14T22:13:20.123456789Z"


@pytest.mark.parametrize("name", list(EVENTS))
def test_the_daemon_line_is_the_conversion_of_the_native_line(name: str) -> None:
    """One converter: the daemon's spliced lines and the clients' dict conversion agree."""
    ev = EVENTS[name]
    for fmt in ("ocsf", "ecs"):
        assert daemon_line(fmt, ev) == convert(mapper_for(fmt, "0.1.0"), native(ev)), fmt


def test_ocsf_classes_and_activities() -> None:
    def cls(name: str) -> tuple[int, int, str]:
        d = daemon_line("ocsf", EVENTS[name])
        return d["class_uid"], d["activity_id"], d.get("status", "")

    assert cls("exec-host") == (1007, 1, "Success")
    assert cls("exit-code-host")[:2] == (1007, 2)
    assert cls("open-host") == (1001, 14, "Success")
    assert cls("open-failed-host") == (1001, 14, "Failure")
    assert cls("connect-host") == (4001, 1, "Success")
    assert cls("connect-killed-v6-host") == (4001, 1, "Success")  # EINPROGRESS: started
    assert cls("connect-refused-host") == (4001, 5, "Failure")
    assert cls("lost") == (1008, 99, "Failure")
    assert cls("summary-host") == (1008, 99, "")
    assert cls("privilege-host") == (1007, 5, "Success")
    assert cls("privilege-capset-killed-host") == (1007, 99, "Success")
    assert cls("chmod-host") == (1001, 6, "Success")
    assert cls("chown-host") == (1001, 7, "Success")


def test_a_summary_is_one_event_with_the_count_and_span_of_those_it_stands_for() -> None:
    o = daemon_line("ocsf", EVENTS["summary-host"])
    assert o["activity_name"] == "Throttled"
    assert o["count"] == 199_999
    assert o["start_time"] < o["end_time"] == o["time"]
    assert o["unmapped"]["policy_summary"]["aggregate"] is True
    e = daemon_line("ecs", EVENTS["summary-host"])
    assert e["event"]["kind"] == "metric"
    assert e["event"]["category"] == ["file"]
    assert e["event"]["start"] < e["event"]["end"] == e["@timestamp"]
    assert e["tracer"]["policy_summary"]["count"] == "199999"


def test_privilege_changes_and_file_attributes_in_both_formats() -> None:
    o = daemon_line("ocsf", EVENTS["privilege-host"])
    assert o["process"]["user"]["uid"] == "0" and o["actor"]["user"]["uid"] == "1000"
    assert o["unmapped"]["privilege_change"]["to_root"] is True
    e = daemon_line("ecs", EVENTS["privilege-host"])
    assert (e["event"]["category"], e["event"]["type"]) == (["process"], ["change"])
    assert e["tracer"]["privilege_change"]["old"]["uid"] == 1000
    c = daemon_line("ecs", EVENTS["chmod-host"])
    assert c["file"]["mode"] == "4755" and c["file"]["path"] == "/tmp/x/payload"
    assert (c["event"]["category"], c["event"]["type"]) == (["file"], ["change"])
    w = daemon_line("ecs", EVENTS["chown-host"])
    assert w["file"]["uid"] == "0" and w["file"]["mode"] == "0644"
    assert daemon_line("ocsf", EVENTS["chown-host"])["file"]["owner"] == {"uid": "0"}


def test_ocsf_process_chain_is_nested_bounded_and_the_lineage_complete() -> None:
    deep = [INIT]
    for pid in range(2, 12):
        deep.append(mkproc(pid, deep[-1]))
    me = mkproc(99, deep[-1])
    ev = FileOpen(
        time=T0,
        node="n1",
        process=me,
        parent=deep[-1],
        ancestors=tuple(reversed(deep[:-1])),
        file=FileInfo("/x", ("O_RDONLY",), 0, 3, None, "tp", False, True),
        policy=POST,
    )
    d = daemon_line("ocsf", ev)
    p = d["actor"]["process"]
    assert p["uid"] == me.exec_id and p["pid"] == 99
    depth, q = 0, p
    while "parent_process" in q:
        q = q["parent_process"]
        depth += 1
    assert depth == PARENT_DEPTH
    assert p["parent_process"]["uid"] == deep[-1].exec_id
    assert p["lineage"] == [a.binary for a in reversed(deep)]
    assert d["unmapped"]["process"]["cwd"] == "/home/alice"


def test_ocsf_exec_names_the_launched_process_and_its_launcher() -> None:
    d = daemon_line("ocsf", EVENTS["exec-host"])
    assert d["process"]["uid"] == LS.exec_id
    assert d["process"]["cmd_line"] == "ls -l"
    assert d["process"]["file"]["path"] == "/bin/ls"
    assert d["actor"]["process"]["uid"] == BASH.exec_id
    assert d["actor"]["user"] == {"uid": "1000", "name": "alice"}


def test_ocsf_device_container_and_pod() -> None:
    d = daemon_line("ocsf", EVENTS["open-pod"])
    assert d["device"]["hostname"] == "n1"
    c = d["device"]["container"]
    assert c["uid"] == CONTAINER.id and c["name"] == "app" and c["runtime"] == "containerd"
    assert c["image"]["name"] == "nginx:1.27"
    assert c["orchestrator"] == "Kubernetes" and c["pod_uuid"] == POD.uid
    assert d["actor"]["process"]["container"] == c
    assert d["unmapped"]["pod"]["namespace"] == "shop"
    assert d["unmapped"]["pod"]["labels"] == {"app": "web", "tier": "front"}
    assert "container" not in daemon_line("ocsf", EVENTS["open-host"])["device"]


def test_ocsf_enforcement_is_the_security_control_profile() -> None:
    post = daemon_line("ocsf", EVENTS["open-host"])
    assert (post["action_id"], post["disposition_id"]) == (1, 15)  # Allowed, Detected
    assert post["policy"] == {
        "name": "credential-files",
        "uid": "credential-files/0",
        "is_applied": True,
    }
    # The policy's severity, tags and message.
    assert (post["severity_id"], post["severity"]) == (4, "High")
    assert post["attacks"] == [
        {"technique": {"uid": "T1003"}, "sub_technique": {"uid": "T1003.008"}}
    ]
    assert post["metadata"]["labels"] == ["creds"]
    assert post["message"] == "credential file read"
    kill = daemon_line("ocsf", EVENTS["exec-killed-host"])
    assert (kill["action_id"], kill["disposition_id"], kill["severity_id"]) == (2, 2, 1)
    assert "message" not in kill and "attacks" not in kill
    deny = daemon_line("ocsf", EVENTS["open-write-denied-host"])
    assert (deny["action_id"], deny["disposition_id"], deny["severity_id"]) == (2, 2, 5)
    # A monitored sigkill rule did not act: detected, not blocked.
    would = daemon_line("ocsf", EVENTS["connect-monitored-host"])
    assert (would["action_id"], would["disposition_id"]) == (1, 15)
    assert would["unmapped"]["policy"]["mode"] == "monitor"
    assert deny["unmapped"]["file_open"]["access"] == "write"
    assert deny["access_mask"] == 0o1 | 0o100 | 0o1000
    assert deny["status_code"] == "EPERM"
    assert daemon_line("ocsf", EVENTS["open-host"])["unmapped"]["file_open"]["access"] == "read"
    plain = daemon_line("ocsf", EVENTS["exec-host"])
    assert "action_id" not in plain and "policy" not in plain and plain["severity_id"] == 1


def _with_policy_extras(ev_name: str, **extra: Any) -> JsonDict:
    n = native(EVENTS[ev_name])
    n["policy"].update(extra)
    return n


def test_policy_severity_and_attack_tags_are_used_when_present() -> None:
    n = _with_policy_extras(
        "open-host", severity="high", tags=["attack.t1003.008", "T1552", "TA0006", "pci"]
    )
    o = convert(mapper_for("ocsf", "0.1.0"), n)
    assert ocsf_problems(o) == []
    assert (o["severity_id"], o["severity"]) == (4, "High")
    assert o["attacks"] == [
        {"technique": {"uid": "T1003"}, "sub_technique": {"uid": "T1003.008"}},
        {"technique": {"uid": "T1552"}},
        {"tactic": {"uid": "TA0006"}},
    ]
    assert o["metadata"]["labels"] == ["pci"]
    e = convert(mapper_for("ecs", "0.1.0"), n)
    assert ecs_problems(e) == []
    assert e["event"]["severity"] == 4 and e["event"]["kind"] == "alert"
    assert e["threat"]["technique"]["id"] == ["T1003", "T1552"]
    assert e["threat"]["technique"]["subtechnique"]["id"] == ["T1003.008"]
    assert e["threat"]["tactic"]["id"] == ["TA0006"]
    assert e["tags"] == ["pci"]
    # A numeric severity, and one that is not a severity: the default stays.
    assert (
        convert(mapper_for("ocsf", "0.1.0"), _with_policy_extras("open-host", severity=5))[
            "severity_id"
        ]
        == 5
    )
    assert (
        convert(mapper_for("ocsf", "0.1.0"), _with_policy_extras("open-host", severity="bad"))[
            "severity_id"
        ]
        == 2
    )


def test_events_recorded_before_policies_had_a_severity_get_a_default() -> None:
    for name, want in (("open-host", 2), ("exec-killed-host", 3)):
        n = native(EVENTS[name])
        del n["policy"]["severity"], n["policy"]["tags"], n["policy"]["message"]
        del n["policy"]["mode"]
        o = convert(mapper_for("ocsf", "0.1.0"), n)
        assert ocsf_problems(o) == []
        assert o["severity_id"] == want, name
        assert convert(mapper_for("ecs", "0.1.0"), n)["event"]["severity"] == want


def test_ecs_alerts_are_enforcement_and_severe_policies() -> None:
    def kind(name: str) -> tuple[str, list[str]]:
        e = daemon_line("ecs", EVENTS[name])
        return e["event"]["kind"], e["event"]["type"]

    assert kind("open-host") == ("alert", ["access"])  # severity high
    assert kind("exec-killed-host") == ("alert", ["start"])
    assert kind("connect-monitored-host") == ("alert", ["start", "connection"])
    assert kind("connect-killed-v6-host") == ("alert", ["start", "connection", "denied"])
    assert kind("exec-host") == ("event", ["start"])
    assert daemon_line("ecs", EVENTS["open-host"])["message"] == "credential file read"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_any_event_converts_validly_and_alike_both_ways(ev: Event) -> None:
    for fmt in ("ocsf", "ecs"):
        line = daemon_line(fmt, ev)
        assert line == convert(mapper_for(fmt, "0.1.0"), native(ev)), fmt
        assert (ocsf_problems(line) if fmt == "ocsf" else ecs_problems(line)) == [], fmt


# The same exec_id, another process object (the cache of processes let it
# go and found it again in /proc): nothing converted of the first may show.
_AGAIN = dataclasses.replace(LS, args=("ls", "-a", "/srv"), cwd="/srv")
CACHED = EVENTS | {
    "open-host-again": dataclasses.replace(EVENTS["open-host"], process=_AGAIN),
    "exit-host-again": dataclasses.replace(EVENTS["exit-code-host"], process=_AGAIN),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(CACHED)), min_size=2, max_size=30))
def test_one_serializer_writes_every_event_of_a_stream_as_its_conversion(
    names: list[str],
) -> None:
    """What the daemon keeps between events (each process converted, each
    process side, each side's frame per kind, rule and outcome) serves
    other events of the same processes; every line is still exactly its
    event's conversion."""
    for fmt in ("ocsf", "ecs"):
        mapper = mapper_for(fmt, "0.1.0")
        serializer = FormatSerializer(mapper_for(fmt, "0.1.0"))
        for name in names:
            ev = CACHED[name]
            assert orjson.loads(serializer.line(ev)) == convert(mapper, native(ev)), (fmt, name)


def test_a_storm_of_new_paths_keeps_the_per_path_objects_bounded() -> None:
    """Each path's file object is made once; an attacker opening ever new
    names must not grow that cache without bound, and an object made
    again after a clear is still the path's."""
    fo = EVENTS["open-host"]
    for fmt in ("ocsf", "ecs"):
        mapper = mapper_for(fmt, "0.1.0")
        serializer = FormatSerializer(mapper)
        for i in range(3000):
            ev = dataclasses.replace(fo, file=dataclasses.replace(fo.file, path=f"/tmp/n{i}"))
            line = orjson.loads(serializer.line(ev))
            assert line["file"]["path"] == f"/tmp/n{i}", fmt
        assert 0 < len(mapper._files) <= 1024, (fmt, len(mapper._files))


def test_lost_events_are_a_failure_a_siem_can_alert_on() -> None:
    o = daemon_line("ocsf", EVENTS["lost"])
    assert (o["class_uid"], o["status_id"], o["severity_id"]) == (1008, 2, 3)
    assert o["unmapped"]["lost"] == {
        "kernel": {"process_exec": 120},
        "daemon": {"file_open": 7},
        "total": 127,
    }
    assert "127 events lost" in o["status_detail"]
    e = daemon_line("ecs", EVENTS["lost"])
    assert (e["event"]["kind"], e["event"]["outcome"]) == ("pipeline_error", "failure")
    assert e["tracer"]["lost"]["total"] == 127


def test_non_utf8_strings_are_carried_escaped_and_flagged() -> None:
    o = daemon_line("ocsf", EVENTS["open-non-utf8"])
    assert o["file"]["path"] == ESCAPED and o["unmapped"]["file_open"]["non_utf8"] is True
    assert o["actor"]["process"]["file"]["path"] == ESCAPED
    assert o["unmapped"]["non_utf8"] == ["actor.process"]
    e = daemon_line("ecs", EVENTS["open-non-utf8"])
    assert e["file"]["path"] == ESCAPED and e["tracer"]["file"]["non_utf8"] is True
    assert e["process"]["executable"] == ESCAPED and e["tracer"]["non_utf8"] == ["process"]


def test_the_event_id_is_stable_and_distinct() -> None:
    ids = {
        name: daemon_line("ocsf", ev)["metadata"]["uid"]
        for name, ev in EVENTS.items()
        if name.endswith("-host")
    }
    assert daemon_line("ecs", EVENTS["open-host"])["event"]["id"] == ids["open-host"]
    assert daemon_line("ocsf", EVENTS["open-host"])["metadata"]["uid"] == ids["open-host"]
    later = _open(POST, WHERE["host"])
    later.time += 1
    assert daemon_line("ocsf", later)["metadata"]["uid"] != ids["open-host"]
    # Kinds at the same time by the same thread differ.
    assert (
        len({ids["exec-host"], ids["exit-code-host"], ids["open-host"], ids["connect-host"]}) == 4
    )


# -- ECS, from Elastic's field definitions --------------------------------------

ECS_DEFS = {v: REPO / "build" / "ecs" / f"ecs-{v}.json" for v in ("8.11.5", "9.4.0")}


@pytest.fixture(scope="module")
def ecs_defs() -> dict[str, dict[str, JsonDict]]:
    missing = [str(p) for p in ECS_DEFS.values() if not p.exists()]
    if missing:
        pytest.fail(f"ECS definitions missing: run `make ecs-defs` ({', '.join(missing)})")
    return {v: json.loads(p.read_text()) for v, p in ECS_DEFS.items()}


_ECS = {v: json.loads(p.read_text()) for v, p in ECS_DEFS.items() if p.exists()}


def _flatten(d: JsonDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _ecs_value_ok(t: str, v: Any) -> bool:
    if t in ("keyword", "constant_keyword", "wildcard", "match_only_text", "text"):
        return isinstance(v, str)
    if t in ("long", "integer", "short", "byte", "unsigned_long"):
        return isinstance(v, int) and not isinstance(v, bool)
    if t in ("float", "double", "scaled_float", "half_float"):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "boolean":
        return isinstance(v, bool)
    if t == "date":
        return isinstance(v, str) and v.endswith("Z") and "T" in v
    if t == "ip":
        try:
            ipaddress.ip_address(v)
        except (ValueError, TypeError):
            return False
        return True
    return False


def ecs_problems(d: JsonDict, defs: dict[str, dict[str, JsonDict]] | None = None) -> list[str]:
    defs = defs or _ECS
    assert defs, "ECS definitions missing: run `make ecs-defs`"
    problems = []
    for name, value in _flatten(d):
        if name.startswith("tracer."):
            continue  # our own namespace
        for version, flat in defs.items():
            f = flat.get(name)
            if f is None:
                problems.append(f"{name}: not an ECS {version} field")
                continue
            values = value if isinstance(value, list) else [value]
            if isinstance(value, list) and "array" not in f.get("normalize", []):
                problems.append(f"{name}: ECS {version} does not take an array")
            for v in values:
                if not _ecs_value_ok(f["type"], v):
                    problems.append(f"{name}: {v!r} is not ECS {version} {f['type']}")
                allowed = f.get("allowed_values")
                if allowed and v not in {a["name"] for a in allowed}:
                    problems.append(f"{name}: {v!r} is not an allowed value in ECS {version}")
    for required in ("@timestamp", "ecs.version"):
        if required not in dict(_flatten(d)):
            problems.append(f"{required}: absent")
    return problems


@pytest.mark.parametrize("name", list(EVENTS))
def test_ecs_every_event_kind_is_valid_ecs_8_and_9(
    name: str, ecs_defs: dict[str, dict[str, JsonDict]]
) -> None:
    d = daemon_line("ecs", EVENTS[name])
    assert ecs_problems(d, ecs_defs) == []
    assert d["@timestamp"] == "2023-11-14T22:13:20.123456789Z"


def test_ecs_fields_of_an_open_in_a_pod() -> None:
    d = daemon_line("ecs", EVENTS["open-pod"])
    p = d["process"]
    assert p["entity_id"] == d["process"]["entity_id"]
    assert (p["executable"], p["args"], p["command_line"]) == ("/bin/ls", ["ls", "-l"], "ls -l")
    assert (p["working_directory"], p["pid"]) == ("/home/alice", 200)
    assert p["real_user"] == {"id": "1000", "name": "alice"} and p["user"] == {"id": "0"}
    assert p["parent"]["entity_id"].endswith(":100")
    assert d["file"] == {"path": "/etc/shadow", "name": "shadow", "directory": "/etc"}
    assert d["container"] == {
        "id": CONTAINER.id,
        "runtime": "containerd",
        "name": "app",
        "image": {"name": "nginx:1.27"},
    }
    assert d["orchestrator"]["namespace"] == "shop"
    assert d["orchestrator"]["resource"]["name"] == "web-5d8f9c7b6-x1"
    assert d["orchestrator"]["resource"]["label"] == ["app:web", "tier:front"]
    assert d["rule"] == {"name": "credential-files", "id": "credential-files/0"}
    assert d["host"]["name"] == "n1"
    assert [a["entity_id"] for a in d["tracer"]["ancestors"]] == [SSHD.exec_id, INIT.exec_id]


def test_ecs_connect_and_exit() -> None:
    c = daemon_line("ecs", EVENTS["connect-refused-host"])
    assert c["destination"]["ip"] == "10.1.2.3" and c["destination"]["port"] == 443
    assert c["source"]["port"] == 40312
    assert c["network"]["transport"] == "tcp" and c["network"]["type"] == "ipv4"
    assert c["event"]["outcome"] == "failure" and c["error"]["code"] == "ECONNREFUSED"
    x = daemon_line("ecs", EVENTS["exit-code-host"])
    assert x["process"]["exit_code"] == 3 and x["process"]["entity_id"] == LS.exec_id
    assert x["process"]["end"] == "2023-11-14T22:13:20.123456789Z"
    k = daemon_line("ecs", EVENTS["exit-signal-host"])
    assert "exit_code" not in k["process"] and k["tracer"]["exit"]["signal"] == "SIGKILL"


def test_bytes_per_event() -> None:
    """Not an assertion of size, a record of it (printed with -s)."""
    ev = EVENTS["open-pod"]
    sizes = {
        "native": len(Serializer().line(ev)),
        "ocsf": len(FormatSerializer(OcsfMapper("0.1.0")).line(ev)),
        "ecs": len(FormatSerializer(EcsMapper()).line(ev)),
    }
    print("bytes per open in a pod, 3 ancestors:", sizes)
    assert all(sizes.values())


def test_formats_pass_other_exits_like_a_lone_exec() -> None:
    ev = exit_ev()
    assert daemon_line("ecs", ev)["event"]["type"] == ["end"]
    assert daemon_line("ocsf", exec_ev())["class_uid"] == 1007


# -- the real daemon, `tracer events` and `tracer replay` -----------------------


class _Lines:
    """A subprocess's stdout, one JSON object per line, collected as it comes."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.items: list[JsonDict] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.items.append(json.loads(line))
                self._cond.notify_all()

    def wait_for(self, pred: Any, timeout: float = 10.0) -> JsonDict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.items:
                    if pred(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching line in {len(self.items)}: {pred}")
                self._cond.wait(min(left, 0.2))


def _is(fmt: str, kind: str, value: Any) -> Any:
    """Predicate for the converted event of `kind` whose key value is `value`."""

    def ocsf_pred(e: JsonDict) -> bool:
        if kind == "exec":
            return (
                e["class_uid"] == 1007
                and e["activity_id"] == 1
                and value in e["process"]["cmd_line"]
            )
        if kind == "open":
            return e["class_uid"] == 1001 and e["file"]["path"] == value
        return e["class_uid"] == 4001 and e["dst_endpoint"].get("port") == value

    def ecs_pred(e: JsonDict) -> bool:
        action = e["event"].get("action")
        if kind == "exec":
            return action == "process_exec" and value in e["process"]["args"]
        if kind == "open":
            return action == "file_open" and e["file"]["path"] == value
        return action == "connect" and e["destination"].get("port") == value

    return ocsf_pred if fmt == "ocsf" else ecs_pred


def _uid(fmt: str, e: JsonDict) -> str:
    return str(e["metadata"]["uid"] if fmt == "ocsf" else e["event"]["id"])


@pytest.mark.parametrize("fmt", ["ocsf", "ecs"])
def test_the_daemon_writes_the_format_and_events_and_replay_convert_alike(
    fmt: str, tmp_path: Path
) -> None:
    target = tmp_path / f"{new_marker('siem')}.txt"
    target.write_text("x")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    policy = tmp_path / "siem.yaml"
    policy.write_text(
        "policies:\n  - name: siem-test\n    rules:\n"
        f"      - event: file_open\n        match: {{path: [{target}]}}\n"
        f"      - event: connect\n        match: {{dport: [{port}]}}\n"
    )
    log_dir = tmp_path / "events"
    d = Daemon("--format", fmt, "--policy", str(policy), "--event-log-dir", str(log_dir))
    try:
        client = subprocess.Popen(
            tracer_cmd("events", "--address", d.address, "-o", fmt),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        stream = _Lines(client)
        for _ in range(50):  # until the subscription is live
            sync = new_marker("sub")
            subprocess.run(["/bin/true", sync], check=True)
            try:
                stream.wait_for(_is(fmt, "exec", sync), timeout=0.5)
                break
            except AssertionError:
                continue
        marker = new_marker("siem")
        subprocess.run(["/bin/true", marker], check=True)
        subprocess.run(["cat", str(target)], check=True, capture_output=True)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        wanted = {"exec": marker, "open": str(target), "connect": port}
        mine = {k: d.wait_for(_is(fmt, k, v), timeout=30) for k, v in wanted.items()}
        api = {k: stream.wait_for(_is(fmt, k, v), timeout=30) for k, v in wanted.items()}
        client.terminate()
        client.wait(10)
    finally:
        listener.close()
        assert d.stop() == 0, "".join(d.stderr)
    for kind, e in mine.items():
        problems = ocsf_problems(e) if fmt == "ocsf" else ecs_problems(e)
        assert problems == [], kind
        # The API's stream, converted by `tracer events`, is the same event.
        assert api[kind] == e, kind
    # The event log stayed native, and `tracer replay` converts it the same way.
    replay = subprocess.run(
        tracer_cmd("replay", "--from", str(log_dir), "-o", fmt),
        capture_output=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr.decode()
    replayed = {_uid(fmt, e): e for e in map(json.loads, replay.stdout.splitlines())}
    for kind, e in mine.items():
        assert replayed.get(_uid(fmt, e)) == e, kind
    segments = sorted(log_dir.glob("events-*.jsonl*"))
    native_log = subprocess.run(
        tracer_cmd("events", "--from", str(segments[0]), "-o", "json", "-n", "1"),
        capture_output=True,
        timeout=60,
    )
    assert json.loads(native_log.stdout.splitlines()[0])["type"] in (
        "process_exec",
        "process_exit",
        "file_open",
        "connect",
        "lost",
    )


def test_an_unknown_format_is_one_error_line_and_exit_2() -> None:
    r = subprocess.run(
        tracer_cmd("run", "--format", "cef"), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "tracer: error: --format: unknown format 'cef' (choose native, ocsf, ecs)"
    ]


@pytest.mark.parametrize("command", ["events", "replay"])
def test_a_format_with_an_option_it_does_not_take_is_one_error_line_and_exit_2(
    command: str, tmp_path: Path
) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(Serializer().line(EVENTS["open-host"]))
    r = subprocess.run(
        tracer_cmd(command, "--from", str(log), "-o", "ocsf", "--color", "always"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["tracer: error: --color applies to -o compact, not to -o ocsf"]
    ok = subprocess.run(
        tracer_cmd(command, "--from", str(log), "-o", "ecs"), capture_output=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == daemon_line("ecs", EVENTS["open-host"])


def test_the_export_file_gets_the_format_too(tmp_path: Path) -> None:
    out = tmp_path / "ecs.jsonl"
    d = Daemon("--format", "ecs", "--export-file", str(out), "--no-event-log")
    try:
        marker = new_marker("siem-file")
        deadline = time.monotonic() + 30
        found: JsonDict | None = None
        while found is None and time.monotonic() < deadline:
            subprocess.run(["/bin/true", marker], check=True)
            time.sleep(0.5)
            for line in out.read_bytes().splitlines() if out.exists() else []:
                e = json.loads(line)
                if e["event"].get("action") == "process_exec" and marker in e["process"]["args"]:
                    found = e
                    break
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    assert found is not None, "no ECS exec line in the export file"
    assert ecs_problems(found) == []
    assert d.events == []  # nothing on stdout
    assert out.stat().st_mode & 0o777 == 0o600
