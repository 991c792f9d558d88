"""Events in ECS (the Elastic Common Schema), from native event dicts.

Every field is an ECS field of ECS 8.11 and 9.x with ECS's type, or under
`tracer.*` (this product's own namespace) for what ECS has no field for;
tests/test_siem.py checks every emitted field against Elastic's own field
definitions (the @elastic/ecs package, both versions). The README's
mapping table is the contract.
"""

from __future__ import annotations

from collections.abc import Sequence

from export.jsonl import JsonDict
from export.siem import (
    ENFORCING,
    PerPath,
    attack_tags,
    enforced,
    event_uid,
    severity_id,
    split_path,
)

VERSION = "8.11.0"
_ONLY_VERSION: JsonDict = {"ecs": {"version": VERSION}}

_CATEGORY = {
    "process_exec": (["process"], ["start"]),
    "process_exit": (["process"], ["end"]),
    "file_open": (["file"], ["access"]),
    "connect": (["network"], ["start", "connection"]),
    "privilege_change": (["process"], ["change"]),
    "file_attr": (["file"], ["change"]),
}
_IANA = {"TCP": "6", "UDP": "17", "ICMP": "1", "ICMPV6": "58", "SCTP": "132", "UDPLITE": "136"}


def _process(p: JsonDict) -> JsonDict:
    """ECS's process fields of one native process (its parent's too)."""
    binary = p["binary"]
    _, name = split_path(binary)
    args = p["args"]
    d: JsonDict = {
        "entity_id": p["exec_id"],
        "pid": p["pid"],
        "thread": {"id": p["tid"]},
        "executable": binary,
        "name": name,
        "args": args,
        "args_count": len(args),
        "command_line": " ".join(args),
        "working_directory": p["cwd"],
        "start": p["start_time"],
        # ECS: process.user is the effective user, real_user the real one.
        "user": {"id": str(p["euid"])},
        "real_user": {"id": str(p["uid"])},
        # ECS 8 has no process.group (the effective group): egid is under tracer.
        "real_group": {"id": str(p["gid"])},
    }
    if "user" in p:
        # The native `user` names the real uid.
        d["real_user"]["name"] = p["user"]
        if p["euid"] == p["uid"]:
            d["user"]["name"] = p["user"]
    return d


def _extras(p: JsonDict) -> JsonDict:
    d: JsonDict = {"egid": p["egid"], "flags": p["flags"], "cgroup_id": p["cgroup_id"]}
    if "auid" in p:
        d["auid"] = p["auid"]
    if "parent_exec_id" in p:
        d["parent_exec_id"] = p["parent_exec_id"]
    for k in ("binary_dev", "binary_ino", "mnt_ns"):  # the executable's identity
        if k in p:
            d[k] = p[k]
    return d


class EcsMapper:
    """Native event dicts -> ECS documents (export.siem.Mapper)."""

    merged: tuple[str, ...] = ("event", "tracer", "process")

    def process(self, p: JsonDict) -> JsonDict:
        return _process(p)

    def side(
        self, kind: str, node: str, chain: Sequence[JsonDict], procs: Sequence[JsonDict]
    ) -> JsonDict:
        p = chain[0]
        proc = dict(procs[0])
        if len(chain) > 1:
            proc["parent"] = procs[1]
        out: JsonDict = {"process": proc}
        user: JsonDict = {"id": str(p["uid"])}
        if "user" in p:
            user["name"] = p["user"]
        out["user"] = user
        out["group"] = {"id": str(p["gid"])}
        out["host"] = {"name": node, "hostname": node, "os": {"type": "linux"}}
        custom: JsonDict = {"process": _extras(p)}
        c = p.get("container")
        if c is not None:
            container: JsonDict = {"id": c["id"], "runtime": c["runtime"]}
            if "name" in c:
                container["name"] = c["name"]
            if "image" in c:
                container["image"] = {"name": c["image"]}
            out["container"] = container
        pod = p.get("pod")
        if pod is not None:
            resource: JsonDict = {"type": "pod", "id": pod["uid"]}
            if "name" in pod:
                resource["name"] = pod["name"]
            if pod.get("labels"):
                resource["label"] = [f"{k}:{v}" for k, v in pod["labels"].items()]
            if "workload_kind" in pod:
                resource["parent"] = {"type": pod["workload_kind"]}
            orch: JsonDict = {"type": "kubernetes", "resource": resource}
            if "namespace" in pod:
                orch["namespace"] = pod["namespace"]
            out["orchestrator"] = orch
            if "workload" in pod:
                custom["pod"] = {"workload": pod["workload"]}
                if "workload_kind" in pod:
                    custom["pod"]["workload_kind"] = pod["workload_kind"]
        if len(chain) > 1:
            custom["parent"] = _extras(chain[1])
        if len(chain) > 2:
            # ECS stops at the parent; the rest of the ancestry, nearest first.
            custom["ancestors"] = [
                {"entity_id": a["exec_id"], "pid": a["pid"], "executable": a["binary"]}
                for a in chain[2:]
            ]
        escaped = [
            where
            for where, q in (
                ("process", p),
                ("process.parent", chain[1] if len(chain) > 1 else None),
            )
            if q is not None and "non_utf8" in q["flags"]
        ]
        escaped += [
            f"tracer.ancestors.{i}" for i, a in enumerate(chain[2:]) if "non_utf8" in a["flags"]
        ]
        if escaped:
            custom["non_utf8"] = escaped
        out["tracer"] = custom
        return out

    def __init__(self) -> None:
        self._consts: dict[tuple[str, int, bool], tuple[JsonDict | None, JsonDict]] = {}
        self._files = PerPath(_open_file)

    def head_split(
        self, ev: JsonDict, time_ns: int, process: JsonDict | None
    ) -> tuple[JsonDict, JsonDict]:
        kind = ev["type"]
        details = ev[kind]
        d: JsonDict = {"@timestamp": ev["time"]}
        tracer: JsonDict = {}
        if kind == "lost":
            kernel, daemon = details.get("kernel", {}), details.get("daemon", {})
            total = sum(kernel.values()) + sum(daemon.values())
            event: JsonDict = {
                "kind": "pipeline_error",
                "action": "events-lost",
                "outcome": "failure",
                "severity": 3,
                "module": "tracer",
                "dataset": "tracer.events",
            }
            d["message"] = f"{total} events lost"
            d["host"] = {"name": ev["node"], "hostname": ev["node"], "os": {"type": "linux"}}
            tracer["type"] = kind
            tracer["lost"] = {"kernel": kernel, "daemon": daemon, "total": total}
            const = _ONLY_VERSION
        else:
            policy = ev.get("policy")
            error = details.get("error")
            if kind == "file_open":
                failed = details["result"] < 0
            elif kind == "connect":
                failed = error not in (None, "EINPROGRESS")
            elif kind == "process_exit":
                failed = details.get("code") != 0
            else:
                failed = False
            # What follows from the kind, the rule and the outcome is made once.
            key = (kind, 0 if policy is None else id(policy), failed)
            hit = self._consts.get(key)
            if hit is None or hit[0] is not policy:
                hit = (policy, _const(kind, policy, failed, details.get("event")))
                if len(self._consts) >= 4096:
                    self._consts.clear()
                self._consts[key] = hit
            const = hit[1]
            event = {}
            if kind == "file_open":
                d["file"] = self._files[details["path"]]
                tracer["file"] = details
            elif kind == "connect":
                _endpoints(d, details)
                tracer["connect"] = details
            elif kind == "privilege_change":
                tracer["privilege_change"] = details
            elif kind == "file_attr":
                d["file"] = _attr_file(details)
                tracer["file_attr"] = details
            elif kind == "process_exit":
                exit_fields: JsonDict = {"end": ev["time"]}
                if details.get("code") is not None:
                    exit_fields["exit_code"] = details["code"]
                d["process"] = exit_fields
                tracer["exit"] = details
            elif kind == "policy_summary":
                # The events counted: from `first` to the event's time.
                event["start"], event["end"] = details["first"], ev["time"]
                tracer["policy_summary"] = details
            if error is not None:
                d["error"] = {"code": error}
        event["id"] = event_uid(ev, process)
        d["event"] = event
        d["tracer"] = tracer
        return const, d


def _const(
    kind: str, policy: JsonDict | None, failed: bool, summarized: str | None = None
) -> JsonDict:
    """The fields of a kind, rule and outcome (all of `event` but its id); a
    policy_summary is in the category of the kind it counts (`summarized`)."""
    top: JsonDict = {"ecs": {"version": VERSION}}
    if kind == "policy_summary":
        category, types = _CATEGORY.get(summarized or "", (["process"], []))[0], ["info"]
    else:
        category, types = _CATEGORY[kind]
    enforcing = enforced(policy)
    if enforcing and kind == "connect":
        types = [*types, "denied"]
    # An alert: a rule that acted or would have (monitor mode), or whose
    # policy says it matters more than for information.
    alert = policy is not None and (policy.get("action") in ENFORCING or severity_id(policy) > 1)
    event: JsonDict = {
        # A count of events, not one: ECS's metric.
        "kind": "metric" if kind == "policy_summary" else "alert" if alert else "event",
        "category": category,
        "type": types,
        "action": kind,
        "outcome": "failure" if failed else "success",
        "severity": severity_id(policy),
        "module": "tracer",
        "dataset": "tracer.events",
    }
    top["event"] = event
    top["tracer"] = {"type": kind}
    if policy is not None:
        top["tracer"]["policy"] = policy
        top["rule"] = {"name": policy["name"], "id": f"{policy['name']}/{policy['rule']}"}
        if policy.get("message"):
            top["message"] = policy["message"]
        techniques, tactics, other = attack_tags(policy)
        if techniques or tactics:
            threat: JsonDict = {"framework": "MITRE ATT&CK"}
            if techniques:
                threat["technique"] = {"id": sorted({t.partition(".")[0] for t in techniques})}
                subs = [t for t in techniques if "." in t]
                if subs:
                    threat["technique"]["subtechnique"] = {"id": subs}
            if tactics:
                threat["tactic"] = {"id": tactics}
            top["threat"] = threat
        if other:
            top["tags"] = other
    return top


def _open_file(path: str) -> JsonDict:
    folder, name = split_path(path)
    f: JsonDict = {"path": path, "name": name}
    if folder:
        f["directory"] = folder
    return f


def _attr_file(a: JsonDict) -> JsonDict:
    """file.* of a chmod or chown: the mode in octal as ECS writes it ("4755")."""
    f = _open_file(a["path"])
    mode = a.get("file_mode", a.get("mode"))
    if mode is not None:
        f["mode"] = f"{mode & 0o7777:04o}"
    if "uid" in a:
        f["uid"] = str(a["uid"])
    if "gid" in a:
        f["gid"] = str(a["gid"])
    return f


def _endpoints(d: JsonDict, c: JsonDict) -> None:
    dst: JsonDict = {}
    if "daddr" in c:
        dst["ip"] = c["daddr"]
        dst["address"] = c["daddr"]
    if "dport" in c:
        dst["port"] = c["dport"]
    if "unix_path" in c:
        dst["address"] = c["unix_path"]
    d["destination"] = dst
    if "saddr" in c or "sport" in c:
        src: JsonDict = {}
        if "saddr" in c:
            src["ip"] = c["saddr"]
            src["address"] = c["saddr"]
        if "sport" in c:
            src["port"] = c["sport"]
        d["source"] = src
    net: JsonDict = {"direction": "egress"}
    proto = c.get("protocol")
    if proto is not None:
        net["transport"] = proto.lower()
        if proto in _IANA:
            net["iana_number"] = _IANA[proto]
    family = c["family"]
    if family == "AF_INET":
        net["type"] = "ipv4"
    elif family == "AF_INET6":
        net["type"] = "ipv6"
    d["network"] = net
