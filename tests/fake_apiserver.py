"""A small Kubernetes API server for tests: real HTTP on 127.0.0.1, real JSON.

It serves what tracer's pod watch uses: the pod list with a field
selector on spec.nodeName, the pod watch (chunked JSON lines, as the real
API server sends them), and GETs of ReplicaSets and Jobs. Tests change
its state (add, modify, delete pods) and misbehave on purpose: a
`410 Gone` in the middle of a watch, a connection dropped mid-stream.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

Obj = dict[str, Any]
_DROP = object()  # in a watch queue: cut the connection without ending the stream
_GONE = object()  # in a watch queue: send 410 Gone and end the stream


def pod(
    uid: str,
    name: str,
    node: str,
    namespace: str = "shop",
    labels: dict[str, str] | None = None,
    owner: tuple[str, str] | None = None,
    containers: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    runtime: str = "containerd",
) -> Obj:
    """A pod object as the API returns it; containers are (name, image, 64-hex id)."""
    meta: Obj = {"name": name, "namespace": namespace, "uid": uid, "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner[0],
                "name": owner[1],
                "uid": "o-" + uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [{"name": c[0], "image": c[1]} for c in containers],
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": c[0],
                    "image": c[1],
                    "imageID": "sha256:" + "0" * 64,
                    "containerID": f"{runtime}://{c[2]}",
                    "ready": True,
                    "restartCount": 0,
                }
                for c in containers
            ],
        },
    }


def owned(kind: str, name: str, namespace: str, owner: tuple[str, str] | None) -> Obj:
    """A ReplicaSet or Job, optionally controlled by (kind, name)."""
    meta: Obj = {"name": name, "namespace": namespace, "uid": f"{kind}-{name}"}
    if owner is not None:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {"kind": kind, "metadata": meta}


def kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig file (JSON is YAML) naming one cluster at `server`, token auth."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "t", "cluster": {"server": server}}],
                "users": [{"name": "t", "user": {"token": "test-token"}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
                "current-context": "t",
            }
        )
    )
    return path


class FakeApiServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rv = 1000
        self.pods: dict[str, Obj] = {}  # uid -> pod
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (kind, ns, name)
        self.watches: list[queue.Queue[Any]] = []
        self.history: list[tuple[int, Obj]] = []  # (resourceVersion, watch event)
        self.requests: list[str] = []  # "LIST nodeName", "WATCH rv", "GET kind ns/name"
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body are separate writes: without this, Nagle and
                # the client's delayed ACK add 40 ms to every response.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        return kubeconfig(path, self.url)

    def close(self) -> None:
        self.drop_watches()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- state changes (tests) ---------------------------------------------

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _send(self, item: Obj) -> None:
        # Kept, so that a watch from an older resourceVersion replays it
        # (a watch opened just after a change still gets the change).
        self.history.append((self.rv, item))
        for q in self.watches:
            q.put(item)

    def put(self, obj: Obj, kind: str | None = None) -> None:
        """Add or change a pod; watches get ADDED or MODIFIED."""
        with self.lock:
            uid = obj["metadata"]["uid"]
            kind = kind or ("MODIFIED" if uid in self.pods else "ADDED")
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self.pods[uid] = obj
            self._send({"type": kind, "object": obj})

    def raw_event(self, event: Obj) -> None:
        """Send any watch event as it is (malformed objects included)."""
        with self.lock:
            self._next_rv()
            self._send(event)

    def delete(self, uid: str) -> None:
        with self.lock:
            obj = self.pods.pop(uid)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._send({"type": "DELETED", "object": obj})

    def add_object(self, obj: Obj) -> None:
        m = obj["metadata"]
        self.objects[(obj["kind"], m["namespace"], m["name"])] = obj

    def expire_watches(self) -> None:
        """A `410 Gone` ERROR event in every open watch (etcd compaction)."""
        with self.lock:
            for q in self.watches:
                q.put(_GONE)

    def drop_watches(self) -> None:
        with self.lock:
            for q in self.watches:
                q.put(_DROP)

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(r.startswith(prefix) for r in self.requests)

    # -- HTTP --------------------------------------------------------------

    def _json(self, h: BaseHTTPRequestHandler, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
        }

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        qs = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        if url.path == "/api/v1/pods":
            sel = qs.get("fieldSelector", "")
            node = sel.removeprefix("spec.nodeName=") if sel.startswith("spec.nodeName=") else None
            if qs.get("watch") in ("true", "1"):
                self._watch(h, node, qs.get("resourceVersion", ""))
                return
            with self.lock:
                self.requests.append(f"LIST {node}")
                items = [
                    p for p in self.pods.values() if node is None or p["spec"]["nodeName"] == node
                ]
                body = {
                    "kind": "PodList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                }
            self._json(h, 200, body)
            return
        # /apis/apps/v1/namespaces/NS/replicasets/NAME, /apis/batch/v1/namespaces/NS/jobs/NAME
        if len(parts) == 7 and parts[0] == "apis" and parts[3] == "namespaces":
            kind = {"replicasets": "ReplicaSet", "jobs": "Job"}.get(parts[5], parts[5])
            with self.lock:
                self.requests.append(f"GET {kind} {parts[4]}/{parts[6]}")
                obj = self.objects.get((kind, parts[4], parts[6]))
            if obj is None:
                self._json(
                    h, 404, self._status(404, "NotFound", f"{parts[5]} {parts[6]} not found")
                )
            else:
                self._json(h, 200, obj)
            return
        self._json(h, 404, self._status(404, "NotFound", url.path))

    def _watch(self, h: BaseHTTPRequestHandler, node: str | None, rv: str) -> None:
        q: queue.Queue[Any] = queue.Queue()
        with self.lock:
            self.requests.append(f"WATCH {rv}")
            self.watches.append(q)
            since = int(rv) if rv.isdigit() else self.rv
            for at, item in self.history:
                if at > since:
                    q.put(item)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()

        def chunk(data: bytes) -> None:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()

        try:
            while True:
                try:
                    item = q.get(timeout=30)
                except queue.Empty:
                    break  # a watch timeout: end the stream cleanly
                if item is _DROP:
                    # Mid-chunk, then gone: the client sees a broken stream.
                    h.wfile.write(b'40\r\n{"type":')
                    h.wfile.flush()
                    h.close_connection = True
                    return
                if item is _GONE:
                    chunk(
                        json.dumps(
                            {
                                "type": "ERROR",
                                "object": self._status(410, "Expired", "too old resource version"),
                            }
                        ).encode()
                        + b"\n"
                    )
                    break
                obj = item.get("object")
                if (
                    node is not None
                    and isinstance(obj, dict)
                    and isinstance(obj.get("spec"), dict)
                    and obj["spec"].get("nodeName") != node
                ):
                    continue
                chunk(json.dumps(item).encode() + b"\n")
            chunk(b"")
        except OSError:
            pass
        finally:
            with self.lock:
                self.watches.remove(q)
