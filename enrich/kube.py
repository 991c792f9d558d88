"""Pod metadata from the Kubernetes API: one watch on this node's pods.

A thread lists the node's pods, then watches from the list's
resourceVersion, and publishes an immutable snapshot (a dict pod uid ->
PodMeta that is replaced, never changed) after every change. The event
path only reads the current snapshot: no API call, no lock. A watch that
expires (410 Gone) is followed by a new list; any other error by a retry
after an exponential backoff, logged once until the watch works again.
Deleted pods stay in the snapshot for a grace period, for the late events
of their processes.

Workloads: a pod's controller is followed up one level where that level
is a controller of its own: ReplicaSet -> Deployment and Job -> CronJob,
with one GET of the ReplicaSet or Job (cached, on this thread). When the
GET fails, a ReplicaSet named `<deployment>-<pod-template-hash>` is taken
as its Deployment's (the naming rule of the Deployment controller) and a
Job as itself.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from tracer.core.events import Pod

_log = structlog.get_logger(component="kube")

JsonObj = dict[str, Any]

# Kinds whose own controller is the workload: fetched (PodWatcher._get) to find it.
_FOLLOWED = ("ReplicaSet", "Job")
# Owner kinds used as the workload as they are.
_KNOWN = frozenset(
    {
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "CronJob",
        "ReplicaSet",
        "Job",
        "ReplicationController",
        "Node",
    }
)
_STATUS_LISTS = ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")


class MalformedPod(ValueError):
    """A pod object without the fields every pod has."""


@dataclass(slots=True, frozen=True)
class PodMeta:
    """One pod as the event path needs it."""

    pod: Pod
    # container id (without the runtime:// prefix) -> (container name, image)
    containers: Mapping[str, tuple[str, str | None]]


def _str(obj: JsonObj, key: str, where: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v:
        raise MalformedPod(f"{where}.{key}: expected a non-empty string, got {v!r:.60}")
    return v


def _dict(obj: JsonObj, key: str, where: str) -> JsonObj:
    v = obj.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise MalformedPod(f"{where}.{key}: expected an object, got {type(v).__name__}")
    return v


def _list(obj: JsonObj, key: str, where: str) -> list[Any]:
    v = obj.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise MalformedPod(f"{where}.{key}: expected a list, got {type(v).__name__}")
    return v


def controller_of(meta: JsonObj, where: str = "metadata") -> tuple[str, str] | None:
    """(kind, name) of the controlling owner reference, else of the first one."""
    refs = _list(meta, "ownerReferences", where)
    chosen = None
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise MalformedPod(f"{where}.ownerReferences[{i}]: expected an object")
        if chosen is None or ref.get("controller") is True:
            chosen = (i, ref)
        if ref.get("controller") is True:
            break
    if chosen is None:
        return None
    i, ref = chosen
    w = f"{where}.ownerReferences[{i}]"
    return _str(ref, "kind", w), _str(ref, "name", w)


def containers_of(status: JsonObj) -> dict[str, tuple[str, str | None]]:
    """container id -> (name, image) from a pod status; containers not started have no id."""
    out: dict[str, tuple[str, str | None]] = {}
    for key in _STATUS_LISTS:
        for i, cs in enumerate(_list(status, key, "status")):
            if not isinstance(cs, dict):
                raise MalformedPod(f"status.{key}[{i}]: expected an object")
            cid = cs.get("containerID")
            if not isinstance(cid, str) or not cid:
                continue
            name = _str(cs, "name", f"status.{key}[{i}]")
            image = cs.get("image")
            # containerd://<id>, cri-o://<id>, docker://<id>
            out[cid.rpartition("://")[2]] = (name, image if isinstance(image, str) else None)
    return out


Getter = Callable[[str, str, str], JsonObj]  # (kind, namespace, name) -> the object


class Workloads:
    """Pod owner -> (workload, kind), with cached GETs of ReplicaSets and Jobs."""

    def __init__(self, get: Getter, retry_s: float = 60.0) -> None:
        self._get = get
        self._retry = retry_s
        # (kind, namespace, name) -> ((workload, kind), until): until is None
        # for an answer from the API, a time for a fallback worth retrying.
        self._cache: dict[tuple[str, str, str], tuple[tuple[str, str], float | None]] = {}
        self._unknown_kinds: set[str] = set()

    def of(self, namespace: str, pod_name: str, meta: JsonObj) -> tuple[str, str]:
        owner = controller_of(meta)
        if owner is None:
            return pod_name, "Pod"
        kind, name = owner
        if kind not in _KNOWN and kind not in self._unknown_kinds:
            self._unknown_kinds.add(kind)
            _log.warning(
                "unknown pod owner kind: the owner itself is the workload",
                kind=kind,
                name=name,
                namespace=namespace,
            )
        if kind not in _FOLLOWED:
            return name, kind
        key = (kind, namespace, name)
        hit = self._cache.get(key)
        if hit is not None and (hit[1] is None or hit[1] > time.monotonic()):
            return hit[0]
        labels = meta.get("labels") or {}
        found: tuple[str, str]
        until: float | None = None
        try:
            obj = self._get(kind, namespace, name)
            top = controller_of(_dict(obj, "metadata", kind), f"{kind}.metadata")
            found = (top[1], top[0]) if top is not None else (name, kind)
        except Exception as exc:  # noqa: BLE001 - any failure of the GET: fall back, say why
            _log.info(
                "owner lookup failed; using the naming rule",
                kind=kind,
                name=name,
                namespace=namespace,
                error=str(exc)[:200],
            )
            found, until = self._fallback(kind, name, labels), time.monotonic() + self._retry
        if len(self._cache) > 16384:
            self._cache.clear()
        self._cache[key] = (found, until)
        return found

    @staticmethod
    def _fallback(kind: str, name: str, labels: Mapping[str, Any]) -> tuple[str, str]:
        h = labels.get("pod-template-hash")
        if kind == "ReplicaSet" and isinstance(h, str) and h and name.endswith("-" + h):
            return name[: -len(h) - 1], "Deployment"
        return name, kind


def pod_meta(obj: Any, workloads: Workloads) -> PodMeta:
    """A pod object of the API (parsed JSON) as PodMeta; MalformedPod names what is wrong."""
    if not isinstance(obj, dict):
        raise MalformedPod(f"pod: expected an object, got {type(obj).__name__}")
    meta = _dict(obj, "metadata", "pod")
    uid = _str(meta, "uid", "metadata")
    namespace = _str(meta, "namespace", "metadata")
    name = _str(meta, "name", "metadata")
    labels = _dict(meta, "labels", "metadata")
    if not all(isinstance(v, str) for v in labels.values()):
        raise MalformedPod("metadata.labels: values must be strings")
    containers = containers_of(_dict(obj, "status", "pod"))
    workload, kind = workloads.of(namespace, name, meta)
    pod = Pod(
        uid=uid,
        namespace=namespace,
        name=name,
        labels=labels,
        workload=workload,
        workload_kind=kind,
    )
    return PodMeta(pod, containers)


class _Gone(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


_EMPTY: Mapping[str, PodMeta] = {}


class PodWatcher:
    """This node's pods, kept current by a watch on its own thread.

    `pods` is the snapshot: read it, never change it.
    """

    def __init__(
        self,
        api_client: Any,  # kubernetes.client.ApiClient
        node: str,
        deleted_grace_s: float = 60.0,
        watch_timeout_s: int = 60,  # also bounds how late a deleted pod is forgotten
        backoff: tuple[float, float] = (0.2, 30.0),
    ) -> None:
        from kubernetes import client

        self.pods: Mapping[str, PodMeta] = _EMPTY
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._batch = client.BatchV1Api(api_client)
        self._node = node
        self._grace = deleted_grace_s
        self._watch_timeout = watch_timeout_s
        self._backoff = backoff
        self._live: dict[str, PodMeta] = {}
        self._deleted: dict[str, float] = {}  # uid -> monotonic time to forget it
        self._workloads = Workloads(self._get)
        self._stop = threading.Event()
        self._stream: Any = None  # the kubernetes Watch in progress
        self._rv: str | None = None  # resourceVersion to resume from; None: list first
        self._failing: str | None = None  # the error last logged, until things work again
        self._malformed_logged: set[str] = set()
        self.lists = 0  # full lists done (the first, and one per 410 Gone)
        self.last_list: float | None = None  # wall-clock time of the last full list
        self.ready = threading.Event()  # set once the first list is in
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def connected(self) -> bool:
        """Listed, and the last call to the API server worked."""
        return self.ready.is_set() and self._failing is None

    def stop(self) -> None:
        self._stop.set()
        w = self._stream
        if w is not None:
            w.stop()
        self._thread.join(2.0)

    # -- API calls (this thread only) -----------------------------------

    def _get(self, kind: str, namespace: str, name: str) -> JsonObj:
        if kind == "ReplicaSet":
            resp = self._apps.read_namespaced_replica_set(
                name, namespace, _preload_content=False, _request_timeout=(5, 10)
            )
        else:
            resp = self._batch.read_namespaced_job(
                name, namespace, _preload_content=False, _request_timeout=(5, 10)
            )
        obj = orjson.loads(resp.data)
        if not isinstance(obj, dict):
            raise ValueError(f"{kind} {namespace}/{name}: not an object")
        return obj

    def _selector(self) -> str:
        return f"spec.nodeName={self._node}"

    def _relist(self) -> str:
        resp = self._core.list_pod_for_all_namespaces(
            field_selector=self._selector(), _preload_content=False, _request_timeout=(5, 60)
        )
        body = orjson.loads(resp.data)
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise ValueError("pod list: no items")
        rv = _dict(body, "metadata", "list").get("resourceVersion")
        if not isinstance(rv, str) or not rv:
            raise ValueError("pod list: no metadata.resourceVersion")
        fresh: dict[str, PodMeta] = {}
        for obj in body["items"]:
            meta = self._parse(obj)
            if meta is not None:
                fresh[meta.pod.uid] = meta
        for uid in fresh.keys() & self._deleted.keys():
            del self._deleted[uid]  # listed: alive after all
        now = time.monotonic()
        for uid in self._live.keys() - fresh.keys():  # deleted while we were not watching
            self._deleted.setdefault(uid, now + self._grace)
            fresh[uid] = self._live[uid]
        self._live = fresh
        self.lists += 1
        self.last_list = time.time()
        self._publish()
        self.ready.set()
        return rv

    def _watch(self, rv: str) -> None:
        """Watch from rv until the stream ends; self._rv follows every event,
        so that whatever ends the watch, the next one resumes where it stopped."""
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        w = watch.Watch(return_type="object")  # plain dicts: no model classes
        self._stream = w
        try:
            for ev in w.stream(
                self._core.list_pod_for_all_namespaces,
                field_selector=self._selector(),
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                _request_timeout=(5, self._watch_timeout + 30),
            ):
                if self._stop.is_set():
                    break
                self._apply(ev)
                self._recovered()
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone() from exc
            raise
        finally:
            self._stream = None

    # -- state ------------------------------------------------------------

    def _parse(self, obj: Any) -> PodMeta | None:
        try:
            return pod_meta(obj, self._workloads)
        except MalformedPod as exc:
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            key = "?"
            if isinstance(meta, dict):
                key = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
            if key not in self._malformed_logged:
                if len(self._malformed_logged) > 4096:
                    self._malformed_logged.clear()
                self._malformed_logged.add(key)
                _log.warning("malformed pod object ignored", pod=key, error=str(exc))
            return None

    def _apply(self, ev: Any) -> None:
        if not isinstance(ev, dict):
            return
        kind, obj = ev.get("type"), ev.get("object")
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("resourceVersion"), str):
            self._rv = meta["resourceVersion"]  # BOOKMARK events carry only this
        if kind in ("ADDED", "MODIFIED"):
            pm = self._parse(obj)
            if pm is not None:
                self._live[pm.pod.uid] = pm
                self._deleted.pop(pm.pod.uid, None)
                self._publish()
        elif kind == "DELETED" and isinstance(meta, dict):
            uid = meta.get("uid")
            if isinstance(uid, str) and uid in self._live:
                self._deleted[uid] = time.monotonic() + self._grace
        self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        gone = [uid for uid, until in self._deleted.items() if until <= now]
        for uid in gone:
            del self._deleted[uid]
            self._live.pop(uid, None)
        if gone:
            self._publish()

    def _publish(self) -> None:
        self.pods = dict(self._live)  # a new dict: readers keep the one they hold

    def _failed(self, exc: BaseException) -> None:
        what = f"{type(exc).__name__}: {str(exc)[:300]}"
        if self._failing is None:
            _log.warning(
                "pod watch failed; retrying with backoff (logged once until it works)",
                node=self._node,
                error=what,
            )
        else:
            _log.debug("pod watch failed again", error=what)
        self._failing = what

    def _recovered(self) -> None:
        if self._failing is not None:
            _log.info("pod watch works again", node=self._node, pods=len(self._live))
            self._failing = None

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                if self._rv is None:
                    self._rv = self._relist()
                    self._recovered()
                    _log.info("pods listed", node=self._node, pods=len(self._live))
                    delay = self._backoff[0]
                self._watch(self._rv)
                self._expire()
                delay = self._backoff[0]
            except _Gone:
                _log.info("pod watch expired (410 Gone): listing again", node=self._node)
                self._rv = None
            except Exception as exc:  # noqa: BLE001 - any API/network failure: back off, go on
                if self._stop.is_set():
                    break
                self._failed(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])


def api_client(kubeconfig: Path | None) -> Any | None:
    """An ApiClient from --kubeconfig, else the in-cluster config; None without either."""
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if kubeconfig is None and not in_cluster:
        return None  # before the import: the client costs ~24 MB of RSS to import
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)
