"""Events in OCSF 1.3.0 (the Open Cybersecurity Schema Framework), from native event dicts.

Classes: process_exec/process_exit -> Process Activity (1007, Launch /
Terminate), file_open -> File System Activity (1001, Open), connect ->
Network Activity (4001, Open / Fail / Refuse), privilege_change -> Process
Activity (1007, Set User ID; Other for gid and capability changes),
file_attr -> File System Activity (1001, Set Attributes for chmod, Set
Security for chown), lost -> Event Log Activity (1008, Other, status
Failure). The README's mapping table is the contract;
tests/test_siem.py validates every event kind against the OCSF 1.3.0
schema pydantic-ocsf ships. What OCSF 1.3.0 has no attribute for goes
under `unmapped`, never dropped.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from export.jsonl import JsonDict
from export.siem import (
    SEVERITY_NAMES,
    PerPath,
    attack_tags,
    enforced,
    event_uid,
    ms_of,
    severity_id,
    split_path,
)
from tracer.core.names import open_flags_value

VERSION = "1.3.0"
# parent_process objects nested under a process: the parent and up to two
# of its ancestors. The whole ancestry is in `lineage` (each one's binary).
PARENT_DEPTH = 3

_SYSTEM = (1, "System Activity")
_NETWORK = (4, "Network Activity")
# type -> (category, class uid, class name)
_CLASSES = {
    "process_exec": (_SYSTEM, 1007, "Process Activity"),
    "process_exit": (_SYSTEM, 1007, "Process Activity"),
    "file_open": (_SYSTEM, 1001, "File System Activity"),
    "connect": (_NETWORK, 4001, "Network Activity"),
    "privilege_change": (_SYSTEM, 1007, "Process Activity"),
    "file_attr": (_SYSTEM, 1001, "File System Activity"),
    "lost": (_SYSTEM, 1008, "Event Log Activity"),
    # Events a throttling rule counted and did not post: one event with OCSF's
    # count, start_time and end_time (its aggregation attributes).
    "policy_summary": (_SYSTEM, 1008, "Event Log Activity"),
}
# An activity named by the kind, not the class (1008's 99 is also `lost`).
_KIND_ACTIVITIES = {"policy_summary": "Throttled"}
_PROFILES = {
    1: ["datetime", "container", "security_control"],
    4: ["host", "datetime", "container", "security_control"],
}
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_TMPFILE")
_PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "SCTP": 132, "UDPLITE": 136}
_NOTHING: JsonDict = {}
_SUCCESS = (1, "Success")
_FAILURE = (2, "Failure")
_ACTIVITIES = {
    1007: {1: "Launch", 2: "Terminate", 5: "Set User ID"},
    1001: {6: "Set Attributes", 7: "Set Security", 14: "Open"},
    4001: {1: "Open", 4: "Fail", 5: "Refuse"},
    1008: {99: "Lost"},
}
# privilege_change ops that set no user id: Process Activity's Other
_NOT_SET_USER_ID = ("setgid", "setregid", "setresgid", "setfsgid", "capset")
# connect's result -> Network Activity activity
_REFUSED = ("ECONNREFUSED",)
_STARTED = (None, "EINPROGRESS")


def _user(p: JsonDict) -> JsonDict:
    u: JsonDict = {"uid": str(p["uid"])}
    if "user" in p:
        u["name"] = p["user"]
    return u


def _container(p: JsonDict) -> JsonDict | None:
    c = p.get("container")
    if c is None:
        return None
    out: JsonDict = {"uid": c["id"], "runtime": c["runtime"]}
    if "name" in c:
        out["name"] = c["name"]
    if "image" in c:
        # OCSF's image needs a uid; tracer knows the reference, not the digest.
        out["image"] = {"name": c["image"], "uid": c["image"]}
    pod = p.get("pod")
    if pod is not None:
        out["orchestrator"] = "Kubernetes"
        out["pod_uuid"] = pod["uid"]
    return out


def _flat(p: JsonDict) -> JsonDict:
    """One process, without its parents."""
    binary = p["binary"]
    folder, name = split_path(binary)
    file: JsonDict = {"name": name, "path": binary, "type_id": 1, "type": "Regular File"}
    if folder:
        file["parent_folder"] = folder
    d: JsonDict = {
        "pid": p["pid"],
        "tid": p["tid"],
        "uid": p["exec_id"],
        "name": name,
        "cmd_line": " ".join(p["args"]),
        "file": file,
        "created_time": ms_of(p["start_time"]),
        "created_time_dt": p["start_time"],
        "user": _user(p),
    }
    container = _container(p)
    if container is not None:
        d["container"] = container
    return d


def _nested(flats: Sequence[JsonDict], depth: int = PARENT_DEPTH) -> JsonDict:
    d = dict(flats[0])
    if len(flats) > 1 and depth > 0:
        d["parent_process"] = _nested(flats[1:], depth - 1)
    return d


def _subject(chain: Sequence[JsonDict], flats: Sequence[JsonDict]) -> JsonDict:
    d = _nested(flats)
    if len(chain) > 1:
        d["lineage"] = [p["binary"] for p in chain[1:]]
    return d


def _extras(p: JsonDict) -> JsonDict:
    """What OCSF's process object has no attribute for."""
    d: JsonDict = {"gid": p["gid"], "euid": p["euid"], "egid": p["egid"]}
    if "auid" in p:
        d["auid"] = p["auid"]
    d["cwd"] = p["cwd"]
    d["args"] = p["args"]
    d["flags"] = p["flags"]
    d["cgroup_id"] = p["cgroup_id"]
    for k in ("binary_dev", "binary_ino", "mnt_ns"):  # the executable's identity
        if k in p:
            d[k] = p[k]
    return d


def _non_utf8(chain: Sequence[JsonDict], at: str) -> list[str]:
    """Paths of the process objects, nested from `at`, with escaped strings."""
    out = []
    for i, p in enumerate(chain[: PARENT_DEPTH + 1]):
        if "non_utf8" in p["flags"]:
            out.append(at + ".parent_process" * i)
    return out


def _device(node: str, p: JsonDict | None) -> JsonDict:
    d: JsonDict = {
        "hostname": node,
        "name": node,
        "type_id": 0,
        "type": "Unknown",
        "os": {"name": "Linux", "type_id": 200, "type": "Linux"},
    }
    container = _container(p) if p is not None else None
    if container is not None:
        d["container"] = container
    return d


class OcsfMapper:
    """Native event dicts -> OCSF 1.3.0 event dicts (export.siem.Mapper)."""

    merged: tuple[str, ...] = ("metadata", "unmapped")

    def __init__(self, product_version: str) -> None:
        product = {"name": "tracer", "vendor_name": "tracer", "version": product_version}
        self._meta = {
            category: {"version": VERSION, "product": product, "profiles": profiles}
            for category, profiles in _PROFILES.items()
        }
        self._consts: dict[tuple[Any, ...], tuple[JsonDict | None, JsonDict, str]] = {}
        self._files = PerPath(_open_file)

    def process(self, p: JsonDict) -> JsonDict:
        return _flat(p)

    def side(
        self, kind: str, node: str, chain: Sequence[JsonDict], flats: Sequence[JsonDict]
    ) -> JsonDict:
        p = chain[0]
        custom: JsonDict = {"process": _extras(p)}
        out: JsonDict = {"unmapped": custom}
        if "pod" in p:
            custom["pod"] = p["pod"]
        if kind == "process_exec":
            # The process launched, and the parent that launched it.
            out["process"] = _subject(chain, flats)
            actor: JsonDict = {"user": _user(p)}
            if len(chain) > 1:
                actor["process"] = _subject(chain[1:], flats[1:])
            out["actor"] = actor
            escaped = _non_utf8(chain, "process") + _non_utf8(chain[1:], "actor.process")
        elif kind == "process_exit":
            out["process"] = _subject(chain, flats)
            out["actor"] = {"process": _subject(chain, flats), "user": _user(p)}
            escaped = _non_utf8(chain, "process") + _non_utf8(chain, "actor.process")
        else:
            out["actor"] = {"process": _subject(chain, flats), "user": _user(p)}
            escaped = _non_utf8(chain, "actor.process")
        out["device"] = _device(node, p)
        if escaped:
            # Strings of these objects were not UTF-8 and are escaped (\xHH,
            # reversible with tracer.core.text.encode), as in native events.
            custom["non_utf8"] = escaped
        return out

    def head_split(
        self, ev: JsonDict, time_ns: int, process: JsonDict | None
    ) -> tuple[JsonDict, JsonDict]:
        kind = ev["type"]
        details = ev[kind]
        if kind == "lost":
            return _NOTHING, self._lost(ev, time_ns)
        policy = ev.get("policy")
        # What follows from the kind, the rule and the outcome is made once
        # for each combination: in a storm, only times, ids and names differ.
        error = details.get("error")
        flags = None
        rule = 0 if policy is None else id(policy)
        key: tuple[Any, ...]
        if kind == "file_open":
            flags = details["flags"]
            if not isinstance(flags, tuple):
                flags = tuple(flags)
            key = (kind, rule, error, details["result"] < 0, flags)
        elif kind == "connect":
            key = (kind, rule, error, details["family"], details.get("protocol"))
        elif kind in ("privilege_change", "file_attr"):
            key = (kind, rule, error, details["op"])
        else:
            key = (kind, rule)
        hit = self._consts.get(key)
        if hit is None or hit[0] is not policy:
            hit = (policy, *self._const(kind, policy, error, flags, details))
            if len(self._consts) >= 4096:
                self._consts.clear()
            self._consts[key] = hit
        const, access = hit[1], hit[2]
        t = ev["time"]
        # The exact time (ns) in time_dt: time is in ms.
        d: JsonDict = {
            "time": time_ns // 1_000_000,
            "time_dt": t,
            "metadata": {"uid": event_uid(ev, process), "original_time": t},
        }
        if kind == "file_open":
            d["file"] = self._files[details["path"]]
            details["access"] = access
            d["unmapped"] = {"file_open": details}
        elif kind == "connect":
            _endpoints(d, details)
            d["unmapped"] = {"connect": details}
        elif kind == "process_exit":
            if "code" in details:
                d["exit_code"] = details["code"]
            d["unmapped"] = {"exit": details}
        elif kind == "policy_summary":
            d["count"] = int(details["count"])
            d["start_time"], d["start_time_dt"] = ms_of(details["first"]), details["first"]
            d["end_time"], d["end_time_dt"] = d["time"], ev["time"]
            d["unmapped"] = {"policy_summary": details}
        elif kind == "privilege_change":
            _privilege(d, details, process)
            d["unmapped"] = {"privilege_change": details}
        elif kind == "file_attr":
            d["file"] = _attr_file(details)
            d["unmapped"] = {"file_attr": details}
        return const, d

    def _const(
        self,
        kind: str,
        policy: JsonDict | None,
        error: str | None,
        flags: tuple[str, ...] | None,
        details: JsonDict,
    ) -> tuple[JsonDict, str]:
        """(attributes, file access) that do not vary between events of one
        kind, rule, outcome and flags."""
        extra: JsonDict = {}
        status: tuple[int, str] | None = _SUCCESS
        access = ""
        if kind == "file_open":
            activity_id = 14
            mask, write = _flags(flags or ())
            extra["access_mask"] = mask
            access = "write" if write else "read"
            status = _FAILURE if details["result"] < 0 else _SUCCESS
        elif kind == "connect":
            extra["connection_info"] = _connection_info(details)
            if error in _REFUSED:
                activity_id = 5
            elif error in _STARTED:
                activity_id = 1
            else:
                activity_id = 4
            status = _SUCCESS if error in _STARTED else _FAILURE
        elif kind == "privilege_change":
            activity_id = 99 if details["op"] in _NOT_SET_USER_ID else 5
        elif kind == "file_attr":
            # chmod changes the file's attributes (its mode), chown its owner.
            activity_id = 6 if details["op"] == "chmod" else 7
        elif kind == "process_exec":
            activity_id = 1
        elif kind == "policy_summary":
            activity_id = 99
            status = None
        else:  # process_exit
            activity_id = 2
            status = None
        d = _classification(kind, activity_id).copy()
        if status is not None:
            d["status_id"], d["status"] = status
            if error is not None:
                d["status_code"] = error
        d.update(extra)
        meta: JsonDict = self._meta[d["category_uid"]].copy()
        if policy is not None:
            fields, labels = _policy_fields(policy)
            d.update(fields)
            if labels:
                meta["labels"] = labels
            d["unmapped"] = {"policy": policy}
        else:
            d["severity_id"], d["severity"] = 1, SEVERITY_NAMES[1]
        d["metadata"] = meta
        return d, access

    def _lost(self, ev: JsonDict, time_ns: int) -> JsonDict:
        details = ev["lost"]
        kernel, daemon = details.get("kernel", {}), details.get("daemon", {})
        total = sum(kernel.values()) + sum(daemon.values())
        text = _lost_text(total, kernel, daemon)
        d = _classification("lost", 99).copy()
        d["time"] = time_ns // 1_000_000
        d["time_dt"] = ev["time"]
        d["status_id"], d["status"] = _FAILURE
        d["status_code"] = "EVENTS_LOST"
        d["status_detail"] = text
        d["message"] = text
        d["log_provider"] = "tracer"
        d["log_name"] = "events"
        d["severity_id"], d["severity"] = 3, SEVERITY_NAMES[3]
        d["device"] = _device(ev["node"], None)
        meta = self._meta[1].copy()
        meta["uid"] = event_uid(ev, None)
        meta["original_time"] = ev["time"]
        d["metadata"] = meta
        d["unmapped"] = {"lost": {"kernel": kernel, "daemon": daemon, "total": total}}
        return d


def _privilege(d: JsonDict, c: JsonDict, process: JsonDict | None) -> None:
    """Set User ID: the process as it is now (its new user); the actor's user is
    the one it was."""
    if process is not None:
        proc = _flat(process)
        proc["user"] = {"uid": str(c["new"]["uid"])}
        d["process"] = proc
    d["actor"] = {"user": {"uid": str(c["old"]["uid"])}}


def _open_file(path: str) -> JsonDict:
    folder, name = split_path(path)
    f: JsonDict = {"name": name, "path": path, "type_id": 0, "type": "Unknown"}
    if folder:
        f["parent_folder"] = folder
    return f


def _attr_file(a: JsonDict) -> JsonDict:
    f = _open_file(a["path"])
    if "uid" in a:
        f["owner"] = {"uid": str(a["uid"])}
    return f


def _endpoints(d: JsonDict, c: JsonDict) -> None:
    dst: JsonDict = {}
    if "daddr" in c:
        dst["ip"] = c["daddr"]
    if "dport" in c:
        dst["port"] = c["dport"]
    if "unix_path" in c:
        dst["name"] = c["unix_path"]
    d["dst_endpoint"] = dst
    if "saddr" in c or "sport" in c:
        src: JsonDict = {}
        if "saddr" in c:
            src["ip"] = c["saddr"]
        if "sport" in c:
            src["port"] = c["sport"]
        d["src_endpoint"] = src


def _connection_info(c: JsonDict) -> JsonDict:
    info: JsonDict = {"direction_id": 2, "direction": "Outbound"}
    proto = c.get("protocol")
    if proto is not None:
        info["protocol_name"] = proto.lower()
        if proto in _PROTOCOL_NUMBERS:
            info["protocol_num"] = _PROTOCOL_NUMBERS[proto]
    family = c["family"]
    if family == "AF_INET":
        info["protocol_ver_id"], info["protocol_ver"] = 4, "Internet Protocol version 4 (IPv4)"
    elif family == "AF_INET6":
        info["protocol_ver_id"], info["protocol_ver"] = 6, "Internet Protocol version 6 (IPv6)"
    return info


def _policy_fields(policy: JsonDict) -> tuple[JsonDict, list[str]]:
    """The Security Control profile: what the rule did, and which rule; severity and
    ATT&CK from the policy's `severity` and `tags` when it has them."""
    d: JsonDict = {}
    if enforced(policy):
        d["action_id"], d["action"] = 2, "Denied"
        d["disposition_id"], d["disposition"] = 2, "Blocked"
    else:
        d["action_id"], d["action"] = 1, "Allowed"
        d["disposition_id"], d["disposition"] = 15, "Detected"
    d["policy"] = {
        "name": policy["name"],
        "uid": f"{policy['name']}/{policy['rule']}",
        "is_applied": True,
    }
    sev = severity_id(policy)
    d["severity_id"], d["severity"] = sev, SEVERITY_NAMES[sev]
    if policy.get("message"):
        d["message"] = policy["message"]
    techniques, tactics, other = attack_tags(policy)
    attacks: list[JsonDict] = []
    for t in techniques:
        base, dot, _ = t.partition(".")
        a: JsonDict = {"technique": {"uid": base}}
        if dot:
            a["sub_technique"] = {"uid": t}
        attacks.append(a)
    attacks.extend({"tactic": {"uid": t}} for t in tactics)
    if attacks:
        d["attacks"] = attacks
    return d, other


@functools.lru_cache(maxsize=64)
def _classification(kind: str, activity_id: int) -> JsonDict:
    """The class and activity attributes (copied by the caller, never changed)."""
    (category_uid, category), class_uid, class_name = _CLASSES[kind]
    activity = _KIND_ACTIVITIES.get(kind) or _ACTIVITIES[class_uid].get(activity_id, "Other")
    return {
        "category_uid": category_uid,
        "category_name": category,
        "class_uid": class_uid,
        "class_name": class_name,
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {activity}",
    }


@functools.lru_cache(maxsize=256)
def _flags(flags: tuple[str, ...]) -> tuple[int, bool]:
    """(open flags as the kernel has them, whether they open for writing)."""
    return open_flags_value(flags), any(f in _WRITE_FLAGS for f in flags)


def _lost_text(total: int, kernel: dict[str, Any], daemon: dict[str, Any]) -> str:
    parts = [f"kernel {k} {n}" for k, n in kernel.items()]
    parts += [f"daemon {k} {n}" for k, n in daemon.items()]
    return f"{total} events lost: " + ", ".join(parts)
