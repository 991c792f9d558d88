"""The reference for export/_pbwire.c: Event messages built field by field
in upb, as export/pb.py built them before it wrote the wire format itself.

tests/test_pb_wire.py holds the C encoder's bytes equal to upb's
deterministic serialization of these messages. Kept apart from export/ so
that the daemon carries one encoder; this one is the test's oracle.
"""

from __future__ import annotations

from export.pb import CUT_FLAG
from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core.events import (
    Connect,
    Credentials,
    Event,
    FileAttr,
    FileOpen,
    Lost,
    PolicyMatch,
    PolicySummary,
    PrivilegeChange,
    Process,
    ProcessExit,
)

_CUT_BINARY = 512  # export/pb.py's: a cut process keeps a binary up to this long


def process_message(p: Process) -> pb.Process:
    m = pb.Process(
        exec_id=p.exec_id,
        pid=p.pid,
        tid=p.tid,
        uid=p.uid,
        euid=p.euid,
        gid=p.gid,
        egid=p.egid,
        auid=p.auid,
        user=p.user,
        binary=p.binary,
        args=p.args,
        cwd=p.cwd,
        parent_exec_id=p.parent_exec_id,
        flags=p.flags,
        cgroup_id=p.cgroup_id,
        binary_dev=p.binary_dev,
        binary_ino=p.binary_ino,
        mnt_ns=p.mnt_ns,
    )
    m.start_time.FromNanoseconds(p.start_time)
    c = p.container
    if c is not None:
        m.container.id, m.container.runtime = c.id, c.runtime
        if c.name is not None:
            m.container.name = c.name
        if c.image is not None:
            m.container.image = c.image
    pod = p.pod
    if pod is not None:
        m.pod.uid = pod.uid
        m.pod.labels.update(pod.labels)
        for name in ("namespace", "name", "workload", "workload_kind"):
            value = getattr(pod, name)
            if value is not None:
                setattr(m.pod, name, value)
    return m


def lost_message(ev: Lost) -> pb.Event:
    m = pb.Event(type=ev.type, node=ev.node, lost=pb.Lost(kernel=ev.kernel, daemon=ev.daemon))
    m.time.FromNanoseconds(ev.time)
    return m


def _policy(m: pb.Event, p: PolicyMatch | None) -> None:
    if p is not None:
        m.policy.name, m.policy.rule, m.policy.action = p.name, p.rule, p.action
        m.policy.severity, m.policy.message, m.policy.mode = p.severity, p.message, p.mode
        m.policy.tags.extend(p.tags)


def _file_open(m: pb.FileOpen, ev: FileOpen) -> None:
    f = ev.file
    m.path = f.path
    m.flags.extend(f.flags)
    m.mode, m.result, m.hook = f.mode, f.result, f.hook
    m.truncated, m.resolved, m.non_utf8 = f.truncated, f.resolved, f.non_utf8
    m.op, m.user_memory = f.op, f.user_memory
    if f.error is not None:
        m.error = f.error
    if f.source is not None:
        m.source = f.source


def _connect(m: pb.Connect, ev: Connect) -> None:
    c = ev.connect
    m.family, m.sock_type, m.result, m.hook = c.family, c.sock_type, c.result, c.hook
    m.via, m.user_memory = c.via, c.user_memory
    # Optional fields: set only when known, so they are absent (not null) in JSON.
    for name in ("protocol", "daddr", "dport", "saddr", "sport", "unix_path", "error"):
        value = getattr(c, name)
        if value is not None:
            setattr(m, name, value)


def _summary(m: pb.PolicySummary, ev: PolicySummary) -> None:
    s = ev.summary
    m.event, m.count, m.interval_ms, m.limit = s.event, s.count, s.interval_ms, s.limit
    m.by, m.aggregate, m.cgroup_id = s.by, s.aggregate, s.cgroup_id
    m.first.seconds, m.first.nanos = divmod(s.first, 1_000_000_000)
    m.window_start.seconds, m.window_start.nanos = divmod(s.window_start, 1_000_000_000)


def _credentials(m: pb.Credentials, c: Credentials) -> None:
    m.uid, m.euid, m.suid, m.fsuid = c.uid, c.euid, c.suid, c.fsuid
    m.gid, m.egid, m.sgid, m.fsgid = c.gid, c.egid, c.sgid, c.fsgid
    m.cap_inheritable.extend(c.cap_inheritable)
    m.cap_permitted.extend(c.cap_permitted)
    m.cap_effective.extend(c.cap_effective)
    m.cap_ambient.extend(c.cap_ambient)


def _privilege(m: pb.PrivilegeChange, ev: PrivilegeChange) -> None:
    p = ev.privilege
    m.op, m.to_root, m.hook = p.op, p.to_root, p.hook
    _credentials(m.old, p.old)
    _credentials(m.new, p.new)
    m.changed.extend(p.changed)


def _file_attr(m: pb.FileAttr, ev: FileAttr) -> None:
    a = ev.file_attr
    m.op, m.call, m.path, m.hook = a.op, a.call, a.path, a.hook
    m.truncated, m.resolved, m.non_utf8 = a.truncated, a.resolved, a.non_utf8
    m.world_writable_dir = a.world_writable_dir
    for name in ("mode", "uid", "gid", "file_mode"):
        value = getattr(a, name)
        if value is not None:
            setattr(m, name, value)


def cut_message(p: Process) -> pb.Process:
    m = process_message(p)
    del m.args[:]
    m.cwd = ""
    if len(m.binary) > _CUT_BINARY:
        m.binary = ""
    m.pod.labels.clear()
    m.container.ClearField("name")
    m.container.ClearField("image")
    if not p.container:
        m.ClearField("container")
    if not p.pod:
        m.ClearField("pod")
    m.flags.append(CUT_FLAG)
    return m


def ancestor_message(p: Process) -> pb.Ancestor:
    return pb.Ancestor(exec_id=p.exec_id, pid=p.pid, binary=p.binary)


def head_message(ev: Event) -> pb.Event:
    """The event without its processes (fields process, parent, ancestors, lineage)."""
    if isinstance(ev, Lost):
        return lost_message(ev)
    head = pb.Event(type=ev.type, node=ev.node)
    head.time.seconds, head.time.nanos = divmod(ev.time, 1_000_000_000)
    if isinstance(ev, ProcessExit):
        st = ev.exit
        head.process_exit.core_dumped = st.core_dumped
        if st.code is not None:
            head.process_exit.code = st.code
        if st.signal is not None:
            head.process_exit.signal = st.signal
    elif isinstance(ev, FileOpen):
        _file_open(head.file_open, ev)
        _policy(head, ev.policy)
    elif isinstance(ev, Connect):
        _connect(head.connect, ev)
        _policy(head, ev.policy)
    elif isinstance(ev, PolicySummary):
        _summary(head.policy_summary, ev)
        _policy(head, ev.policy)
    elif isinstance(ev, PrivilegeChange):
        _privilege(head.privilege_change, ev)
        _policy(head, ev.policy)
    elif isinstance(ev, FileAttr):
        _file_attr(head.file_attr, ev)
        _policy(head, ev.policy)
    else:
        head.process_exec.SetInParent()
        _policy(head, ev.policy)
    return head


def event_message(ev: Event, ancestors: str) -> pb.Event:
    """The whole event, for one under MAX_EVENT_BYTES (nothing cut)."""
    m = head_message(ev)
    if isinstance(ev, Lost):
        return m
    m.process.CopyFrom(process_message(ev.process))
    if ev.parent is not None:
        m.parent.CopyFrom(process_message(ev.parent))
    if ancestors == "full":
        m.ancestors.extend(process_message(a) for a in ev.ancestors)
    if ancestors == "brief":
        m.lineage.SetInParent()
        m.lineage.ancestors.extend(ancestor_message(a) for a in ev.ancestors)
    return m
