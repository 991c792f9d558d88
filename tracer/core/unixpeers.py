"""Which processes are connected to a unix socket this process listens on.

gRPC does not tell a servicer the credentials of a unix-socket caller, so a
policy change over the API socket is attributed from the kernel's side: the
sock_diag netlink interface lists the connections accepted on the listener
(they carry the name it was bound with) and the client socket at the other
end of each; /proc/PID/fd tells which processes hold those. With several
clients connected, each is listed: the caller is one of them.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_NAME, _UDIAG_SHOW_PEER = 0x1, 0x4
_UNIX_DIAG_NAME, _UNIX_DIAG_PEER = 0, 2
_TCP_ESTABLISHED = 1
_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBHIII8x")  # unix_diag_req: family, protocol, pad, states, ino, show, cookie
_MSG = struct.Struct("=BBBBI8x")  # unix_diag_msg: family, type, state, pad, ino, cookie
_RTA = struct.Struct("=HH")
# Bounds on what one look-up reads: a machine with more is not ours to list.
_MAX_REPLY_BYTES = 64 << 20
_MAX_FDS = 1 << 20


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    comm: str


def _peer_inodes(bound_name: bytes) -> set[int]:
    """Inodes of the client sockets connected to the listener bound as `bound_name`."""
    peers: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(5)
        body = _REQ.pack(socket.AF_UNIX, 0, 0, 1 << _TCP_ESTABLISHED, 0,
                         _UDIAG_SHOW_NAME | _UDIAG_SHOW_PEER)  # fmt: skip
        hdr = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
        )
        nl.sendall(hdr + body)
        read = 0
        while read < _MAX_REPLY_BYTES:
            data = nl.recv(1 << 16)
            read += len(data)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    return peers
                if kind in (_NLMSG_DONE, _NLMSG_ERROR):
                    return peers
                msg = data[off + _NLMSGHDR.size : off + length]
                name, peer = _attrs(msg)
                if name == bound_name and peer:
                    peers.add(peer)
                off += (length + 3) & ~3
    return peers


def _attrs(msg: bytes) -> tuple[bytes | None, int]:
    name: bytes | None = None
    peer = 0
    off = _MSG.size
    while off + _RTA.size <= len(msg):
        length, kind = _RTA.unpack_from(msg, off)
        if length < _RTA.size:
            break
        value = msg[off + _RTA.size : off + length]
        if kind == _UNIX_DIAG_NAME:
            name = value.rstrip(b"\0")
        elif kind == _UNIX_DIAG_PEER and len(value) >= 4:
            (peer,) = struct.unpack_from("=I", value)
        off += (length + 3) & ~3
    return name, peer


def connected(bound_name: str) -> list[Peer]:
    """The processes that hold a connection to the listener bound as
    `bound_name` (the path it was bound at, even if renamed since); [] when
    the kernel will not say."""
    try:
        inodes = _peer_inodes(os.fsencode(bound_name))
    except OSError:
        return []
    wanted = {f"socket:[{i}]" for i in inodes}
    me = os.getpid()
    out: list[Peer] = []
    seen = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
        except OSError:
            continue  # gone
        seen += len(fds)
        if seen > _MAX_FDS:
            break
        if not any(_link(f"/proc/{entry.name}/fd/{fd}") in wanted for fd in fds):
            continue
        try:
            st = os.stat(f"/proc/{entry.name}")
            with open(f"/proc/{entry.name}/comm", "rb") as f:
                comm = f.read().strip().decode(errors="replace")
        except OSError:
            continue
        out.append(Peer(int(entry.name), st.st_uid, comm))
    return out


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None  # closed meanwhile
