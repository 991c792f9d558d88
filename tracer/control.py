"""The local control socket: root-only requests to the running daemon.

One JSON object per line each way. The socket is created mode 0600 (in a
0700 directory when the daemon makes it), and the peer's credentials are
checked as well: only uid 0 is served, whatever the file modes say. An
existing directory keeps its mode: `--control-socket /tmp/x.sock` must
not close /tmp to everyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from tracer.core import sockpath

_log = structlog.get_logger(component="control")

DEFAULT_SOCKET = Path("/run/tracer/control.sock")
MAX_REQUEST = 4 << 20
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(RuntimeError):
    pass


def _read_line(conn: socket.socket) -> bytes:
    """One newline-terminated message (or what came before EOF)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError(f"message larger than {MAX_REQUEST} bytes")
    return data


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True)
            os.chmod(path.parent, 0o700)  # mkdir's mode is cut by the umask
        if (problem := sockpath.takeover_problem(path, "--control-socket")) is not None:
            raise ControlError(problem)
        path.unlink(missing_ok=True)  # a leftover socket
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # no window in which the socket is wider than 0600
        try:
            self._sock.bind(str(path))
        finally:
            os.umask(old)
        self._ident = sockpath.identity(path)
        self._sock.listen(8)
        self._sock.settimeout(0.5)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
        if uid != 0:
            _log.warning("control request refused: not root", peer_pid=pid, peer_uid=uid)
            self._reply(conn, {"ok": False, "error": "only root may control the daemon"})
            return
        try:
            request = json.loads(_read_line(conn))
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
        except (ValueError, OSError) as exc:
            _log.warning("bad control request", peer_pid=pid, error=str(exc))
            self._reply(conn, {"ok": False, "error": f"bad request: {exc}"})
            return
        try:
            reply = self._handler(request)
        except Exception as exc:  # noqa: BLE001 -- any failure goes back to the caller
            reply = {"ok": False, "error": str(exc)}
        if request.get("op") == "policy_apply" and reply.get("ok"):
            _log.warning("policies changed over the control socket", peer_pid=pid, peer_uid=uid)
        self._reply(conn, reply)

    @staticmethod
    def _reply(conn: socket.socket, reply: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self._stop = True
        self._sock.close()
        self._thread.join(2)
        sockpath.remove_if_ours(self.path, self._ident)


def request(path: Path, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to a running daemon and return its reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError as exc:
        raise ControlError(f"cannot reach the daemon at {path}: {exc.strerror or exc}") from None
    with s:
        s.sendall(json.dumps(req).encode() + b"\n")
        data = _read_line(s)
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise ControlError(f"the daemon sent no valid reply ({len(data)} bytes)") from None
    return reply
