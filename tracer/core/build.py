"""Every kind of event, built in one place: a decoded record, who did it, and the rule.

The process cache (enrich/) says who did it (a Context); the policy store
names the rule behind the kernel's verdict; these functions put the two
together with what the record itself says. Events are built with
positional arguments in field order: keyword arguments cost a dataclass
__init__ two to three times as much, and these run for every event.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from typing import TypeVar

from tracer.core import _wire, decode, names, text
from tracer.core.decode import (
    ConnectRecord,
    Cred,
    ExitRecord,
    FileAttrRecord,
    FileOpenRecord,
    PrivRecord,
    SummaryRecord,
)
from tracer.core.events import (
    Connect,
    ConnectInfo,
    Context,
    Credentials,
    ExitStatus,
    FileAttr,
    FileAttrInfo,
    FileInfo,
    FileOpen,
    PolicyMatch,
    PolicySummary,
    PrivilegeChange,
    PrivilegeInfo,
    ProcessExec,
    ProcessExit,
    SummaryInfo,
)

_T = TypeVar("_T")


def slot_maker(cls: type[_T]) -> _wire.Maker[_T]:
    """cls(*values) made slot by slot in C: for the events of every posted
    record, a dataclass __init__ of a dozen fields cost ~0.3 us. Its fields
    must all be set by __init__ and nothing else may happen there."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if not all(f.init for f in fields) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: its __init__ does more than set its fields")
    return _wire.Maker(cls, tuple(f.name for f in fields))


_FILE_INFO = slot_maker(FileInfo)
_FILE_OPEN = slot_maker(FileOpen)
_CONNECT_INFO = slot_maker(ConnectInfo)
_CONNECT = slot_maker(Connect)

# enum tr_pkind: the event kind a rule selects
_RULE_KINDS = {0: "process_exec", 1: "file_open", 2: "connect"}


def process_exec(ctx: Context, node: str, policy: PolicyMatch | None) -> ProcessExec:
    return ProcessExec(ctx.time, node, ctx.process, ctx.parent, ctx.ancestors, policy)


def process_exit(rec: ExitRecord, ctx: Context, node: str) -> ProcessExit:
    sig = rec.signal
    status = ExitStatus(
        rec.code, names.signal_name(sig) if sig else None, bool(rec.status & 0x80)
    )
    return ProcessExit(ctx.time, node, ctx.process, ctx.parent, ctx.ancestors, status)


def file_open(
    rec: FileOpenRecord, ctx: Context, node: str, policy: PolicyMatch | None
) -> FileOpen:
    path, escaped = text.decode(rec.path)
    source = None
    if rec.op:
        source, source_escaped = text.decode(rec.source)
        escaped |= source_escaped
    info = _FILE_INFO(
        path,
        names.open_flags(rec.open_flags) if not rec.op else (),
        rec.mode,
        rec.ret,
        names.errno_name(rec.ret),
        decode.hook_name(rec.hook),
        bool(rec.flags & decode.FILE_TRUNC_PATH),  # truncated
        not rec.flags & decode.FILE_UNRESOLVED,  # resolved
        escaped,  # non_utf8
        decode.FILE_OPS.get(rec.op, str(rec.op)),
        source,
        bool(rec.flags & decode.FILE_USER_MEMORY),
    )
    return _FILE_OPEN(ctx.time, node, ctx.process, ctx.parent, ctx.ancestors, info, policy)


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def connect(rec: ConnectRecord, ctx: Context, node: str, policy: PolicyMatch | None) -> Connect:
    inet = rec.family in (socket.AF_INET, socket.AF_INET6)
    unix_path = None
    if rec.family == socket.AF_UNIX:
        # An abstract socket name starts with NUL: shown as "@name", like ss(8).
        unix_path = text.decode(rec.unix_path)[0] if rec.unix_path else "@"
    saddr_known = inet and rec.sport != 0
    info = _CONNECT_INFO(
        names.family(rec.family),
        names.protocol(rec.protocol),
        names.sock_type(rec.sock_type),
        _addr(rec.family, rec.daddr) if inet else None,  # daddr
        rec.dport if inet else None,
        _addr(rec.family, rec.saddr) if saddr_known else None,  # saddr
        rec.sport if saddr_known else None,
        unix_path,
        rec.ret,
        names.errno_name(rec.ret),
        decode.hook_name(rec.hook),
        decode.CONN_VIAS.get(rec.via, str(rec.via)),
        bool(rec.flags & decode.CONN_USER_MEMORY),
    )
    return _CONNECT(ctx.time, node, ctx.process, ctx.parent, ctx.ancestors, info, policy)


def policy_summary(
    rec: SummaryRecord, ctx: Context, node: str, policy: PolicyMatch | None
) -> PolicySummary:
    wall = ctx.time - rec.task.ktime  # the boot clock's offset, as the context applied it
    info = SummaryInfo(
        _RULE_KINDS.get(rec.kind, str(rec.kind)),
        rec.count,
        rec.first + wall,
        rec.window + wall,
        rec.per_ms,
        rec.limit,
        "cgroup" if rec.flags & decode.THROTTLE_BY_CGROUP else "process",
        bool(rec.flags & decode.THROTTLE_AGGREGATE),
        rec.task.cgroup_id,
    )
    return PolicySummary(ctx.time, node, ctx.process, ctx.parent, ctx.ancestors, info, policy)


_IDS = ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid")
_CAPS = ("cap_inheritable", "cap_permitted", "cap_effective", "cap_ambient")
_UNCHANGED = 0xFFFFFFFF  # chown's "leave it as it was"


def _credentials(c: Cred, named: tuple[str, ...]) -> Credentials:
    """c, with the capability sets in `named` as names (the others left empty)."""
    caps = [names.capabilities(getattr(c, f)) if f in named else () for f in _CAPS]
    return Credentials(*(getattr(c, f) for f in _IDS), *caps)


def privilege_change(
    rec: PrivRecord, ctx: Context, node: str, policy: PolicyMatch | None
) -> PrivilegeChange:
    changed = tuple(f for f in (*_IDS, *_CAPS) if getattr(rec.old, f) != getattr(rec.new, f))
    info = PrivilegeInfo(
        decode.PRIV_OPS.get(rec.op, str(rec.op)),
        _credentials(rec.old, changed),
        _credentials(rec.new, changed),
        changed,
        bool(rec.flags & decode.PRIV_TO_ROOT),
        decode.hook_name(rec.hook),
    )
    return PrivilegeChange(ctx.time, node, ctx.process, ctx.parent, ctx.ancestors, info, policy)


def file_attr(
    rec: FileAttrRecord, ctx: Context, node: str, policy: PolicyMatch | None
) -> FileAttr:
    path, escaped = text.decode(rec.path)
    chmod = rec.op == decode.ATTR_CHMOD
    info = FileAttrInfo(
        decode.ATTR_OPS.get(rec.op, str(rec.op)),
        decode.ATTR_CALLS.get(rec.call, str(rec.call)),
        path,
        rec.mode if chmod else None,
        None if chmod or rec.uid == _UNCHANGED else rec.uid,
        None if chmod or rec.gid == _UNCHANGED else rec.gid,
        rec.file_mode or None,
        decode.hook_name(rec.hook),
        bool(rec.flags & decode.ATTR_TRUNC_PATH),
        not rec.flags & decode.ATTR_UNRESOLVED,
        escaped,
        bool(rec.flags & decode.ATTR_WORLD_WRITABLE_DIR),
    )
    return FileAttr(ctx.time, node, ctx.process, ctx.parent, ctx.ancestors, info, policy)
