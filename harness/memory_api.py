"""An in-memory Kubernetes API, for fast tests of the daemon's own logic.

It answers the HTTP requests `syncd.kube.Kube` makes (it is a `Transport`), so the whole
client path runs: retries, the write fence, 404/409/410 handling, list pages and watch
streams. What it keeps, it keeps the way the API server does, as far as syncd can tell:

- a resourceVersion per write from one counter; PUT with an old one is a 409 Conflict,
  POST of an existing name a 409 AlreadyExists, DELETE with another uid's precondition a
  409; uid, creationTimestamp and generation are set by the server;
- watches stream ADDED/MODIFIED/DELETED from a resourceVersion and end after their
  timeout; one from a version older than the history kept (`compact`) gets 410 Gone;
- label selectors `k=v`, `k!=v`, `k`, `!k`; merge patches (RFC 7386); dryRun=All.

Switches for what real servers do to clients: `fail()` (refused connections or an HTTP
status), `hang()` (requests block until `release()` or their timeout), `compact()`,
`drop_field()` (a field this "version" does not keep, as 1.30 drops trafficDistribution).

It is for speed. Every behaviour tested here is also tested against the real
kube-apiserver (tests/integration); nothing here replaces those tests.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/v1)(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<resource>[a-z]+)(?:/(?P<name>[^/]+))?$"
)
_KINDS = {
    "services": ("Service", "v1"),
    "endpoints": ("Endpoints", "v1"),
    "endpointslices": ("EndpointSlice", "discovery.k8s.io/v1"),
    "events": ("Event", "v1"),
    "leases": ("Lease", "coordination.k8s.io/v1"),
    "nodes": ("Node", "v1"),  # cluster-scoped: namespace ""
    "servicecidrs": ("ServiceCIDR", "networking.k8s.io/v1"),
}
_DISCOVERY = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>v1)$")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


class MemoryResponse:
    """What `Kube` reads of a urllib3 response."""

    def __init__(self, status: int, body: Any = None, events: Iterator[bytes] | None = None):
        self.status = status
        self.data = b"" if body is None else json.dumps(body).encode()
        self.headers: dict[str, str] = {}
        self._events = events

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Iterator[bytes]:
        if self._events is None:
            yield self.data
        else:
            yield from self._events

    def release_conn(self) -> None:
        pass


@dataclass(frozen=True)
class _Event:
    version: int
    type: str
    resource: str
    namespace: str
    obj: Obj


def _status(code: int, reason: str, message: str) -> MemoryResponse:
    return MemoryResponse(
        code,
        {"kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message},
    )


def _matches(labels: Mapping[str, str], selector: str) -> bool:
    for requirement in filter(None, selector.split(",")):
        if "!=" in requirement:
            key, value = requirement.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in requirement:
            key, value = requirement.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif requirement.startswith("!"):
            if requirement[1:] in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class MemoryApiServer:
    """One in-memory cluster; give it to `Kube(transport=...)` (see `memory_kube`)."""

    host = "memory://kube-apiserver"

    def __init__(self, history: int = 10_000):
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._events: list[_Event] = []
        self._history = history
        self._oldest = 0  # watches from before this version get 410 Gone
        self._version = 1000
        self._cond = threading.Condition()
        self._failure: int | None = None  # 0: connections refused; else that HTTP status
        self._hanging = threading.Event()
        self._released = threading.Event()
        self._closed = False
        self._dropped: set[tuple[str, str]] = set()  # (resource, spec field) not kept
        self.requests: Counter[str] = Counter()  # "METHOD resource" -> count

    # -- switches

    def fail(self, status: int = 0) -> None:
        """Every request fails from now on: refused (0) or with this HTTP status."""
        self._failure = status

    def hang(self) -> None:
        """Every request blocks until `release()` (or its own timeout)."""
        self._released.clear()
        self._hanging.set()

    def release(self) -> None:
        self._hanging.clear()
        self._released.set()

    def recover(self) -> None:
        self._failure = None
        self.release()

    def compact(self) -> None:
        """Forget the event history: a watch resumed from before now gets 410 Gone."""
        with self._cond:
            self._events.clear()
            self._oldest = self._version
            self._cond.notify_all()

    def drop_field(self, resource: str, spec_field: str) -> None:
        """This server does not keep `spec.<spec_field>` of `resource` (an alpha field)."""
        self._dropped.add((resource, spec_field))

    def close(self) -> None:
        """End every watch (and refuse from now on)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.fail()
        self.release()

    def writes(self, resource: str | None = None) -> int:
        return sum(
            n
            for key, n in self.requests.items()
            if key.split()[0] in WRITES and (resource is None or key.split()[1] == resource)
        )

    # -- as another client would (no request counted)

    def objects(self, resource: str, namespace: str | None = None) -> list[Obj]:
        with self._cond:
            return [
                copy.deepcopy(obj)
                for (res, ns, _name), obj in sorted(self._objects.items())
                if res == resource and namespace in (None, ns)
            ]

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self._cond:
            obj = self._objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def put(self, resource: str, obj: Obj) -> Obj:
        """Create or overwrite, as another writer would (no precondition)."""
        with self._cond:
            meta = obj["metadata"]
            current = self._objects.get((resource, meta["namespace"], meta["name"]))
            return self._store(resource, copy.deepcopy(obj), current)

    def remove(self, resource: str, namespace: str, name: str) -> None:
        with self._cond:
            obj = self._objects.pop((resource, namespace, name), None)
            if obj is not None:
                self._record("DELETED", resource, namespace, obj)

    # -- the transport

    def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]],
        body: bytes | None,
        content_type: str,
        timeout: Any,
    ) -> MemoryResponse:
        if self._hanging.is_set():
            limit = getattr(timeout, "total", None) or getattr(timeout, "read_timeout", None)
            if not self._released.wait(limit if isinstance(limit, int | float) else 30.0):
                raise TimeoutError(f"{method} {path}: timed out (the in-memory API hangs)")
        if self._failure == 0:
            raise ConnectionRefusedError(f"{self.host}: connection refused")
        if self._failure is not None:
            return _status(self._failure, "InternalError", "the in-memory API fails on request")
        if path == "/version":
            return MemoryResponse(200, {"major": "1", "minor": "36", "gitVersion": "memory"})
        discovery = _DISCOVERY.match(path)
        if discovery is not None and method == "GET":
            group_version = f"{discovery['group']}/{discovery['version']}"
            served = [{"name": res} for res, (_k, v) in _KINDS.items() if v == group_version]
            if not served:
                return _status(404, "NotFound", f"the server could not find {path}")
            return MemoryResponse(200, {"groupVersion": group_version, "resources": served})
        match = _PATH.match(path)
        if match is None or match["resource"] not in _KINDS:
            return _status(404, "NotFound", f"the server could not find {path}")
        resource, namespace, name = match["resource"], match["ns"] or "", match["name"] or ""
        self.requests[f"{method} {resource}"] += 1
        params = dict(query)
        payload = json.loads(body) if body else None
        with self._cond:
            if method == "GET" and params.get("watch") == "true":
                return self._watch(resource, namespace, params)
            if method == "GET":
                return self._read(resource, namespace, name, params)
            if method == "POST":
                return self._create(resource, namespace, payload, params)
            if method == "PUT":
                return self._replace(resource, namespace, name, payload)
            if method == "PATCH":
                return self._patch(resource, namespace, name, payload)
            if method == "DELETE":
                return self._delete(resource, namespace, name, payload, params)
        return _status(405, "MethodNotAllowed", method)

    # -- verbs (under the lock)

    def _read(self, resource: str, namespace: str, name: str, params: dict) -> MemoryResponse:
        if name:
            obj = self._objects.get((resource, namespace, name))
            if obj is None:
                return _status(404, "NotFound", f'{resource} "{name}" not found')
            return MemoryResponse(200, obj)
        items = [
            obj
            for (res, ns, _n), obj in sorted(self._objects.items())
            if res == resource
            and namespace in ("", ns)
            and _matches(obj["metadata"].get("labels") or {}, params.get("labelSelector", ""))
        ]
        return MemoryResponse(
            200, {"items": items, "metadata": {"resourceVersion": str(self._version)}}
        )

    def _create(self, resource: str, namespace: str, obj: Obj, params: dict) -> MemoryResponse:
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        if not meta.get("name"):
            meta["name"] = meta.pop("generateName", "x-") + uuid.uuid4().hex[:5]
        key = (resource, namespace, meta["name"])
        if key in self._objects:
            return _status(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists')
        if params.get("dryRun") == "All":
            return MemoryResponse(201, self._server_side(resource, obj, None, store=False))
        return MemoryResponse(201, self._store(resource, obj, None))

    def _replace(self, resource: str, namespace: str, name: str, obj: Obj) -> MemoryResponse:
        current = self._objects.get((resource, namespace, name))
        if current is None:
            return _status(404, "NotFound", f'{resource} "{name}" not found')
        sent = (obj.get("metadata") or {}).get("resourceVersion")
        if sent and sent != current["metadata"]["resourceVersion"]:
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        return MemoryResponse(200, self._store(resource, obj, current))

    def _patch(self, resource: str, namespace: str, name: str, patch: Obj) -> MemoryResponse:
        current = self._objects.get((resource, namespace, name))
        if current is None:
            return _status(404, "NotFound", f'{resource} "{name}" not found')
        return MemoryResponse(200, self._store(resource, merge_patch(current, patch), current))

    def _delete(
        self, resource: str, namespace: str, name: str, body: Obj | None, params: dict
    ) -> MemoryResponse:
        if not name:  # deletecollection
            selector = params.get("labelSelector", "")
            for (res, ns, n), obj in list(self._objects.items()):
                labels = obj["metadata"].get("labels") or {}
                if res == resource and ns == namespace and _matches(labels, selector):
                    self._record("DELETED", resource, namespace, self._objects.pop((res, ns, n)))
            return MemoryResponse(200, {"kind": "Status", "status": "Success"})
        current = self._objects.get((resource, namespace, name))
        if current is None:
            return _status(404, "NotFound", f'{resource} "{name}" not found')
        uid = ((body or {}).get("preconditions") or {}).get("uid")
        if uid and uid != current["metadata"]["uid"]:
            return _status(409, "Conflict", f"Precondition failed: UID in precondition: {uid}")
        del self._objects[(resource, namespace, name)]
        self._record("DELETED", resource, namespace, current)
        return MemoryResponse(200, current)

    def _server_side(self, resource: str, obj: Obj, current: Obj | None, store: bool) -> Obj:
        """What the server sets and drops on a write."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        kind, api_version = _KINDS[resource]
        obj.setdefault("kind", kind)
        obj.setdefault("apiVersion", api_version)
        old_meta = (current or {}).get("metadata") or {}
        meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = old_meta.get("creationTimestamp") or datetime.datetime.now(
            datetime.UTC
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
        spec = obj.get("spec")
        for dropped_resource, spec_field in self._dropped:
            if dropped_resource == resource and isinstance(spec, dict):
                spec.pop(spec_field, None)
        changed = current is None or {k: v for k, v in obj.items() if k != "metadata"} != {
            k: v for k, v in current.items() if k != "metadata"
        }
        meta["generation"] = int(old_meta.get("generation") or 0) + (1 if changed else 0)
        if store:
            self._version += 1
            meta["resourceVersion"] = str(self._version)
        return obj

    def _store(self, resource: str, obj: Obj, current: Obj | None) -> Obj:
        if current is not None and self._same(obj, current):
            return copy.deepcopy(current)  # a no-op write: no new version, no event
        stored = self._server_side(resource, obj, current, store=True)
        meta = stored["metadata"]
        self._objects[(resource, meta["namespace"], meta["name"])] = stored
        self._record("MODIFIED" if current else "ADDED", resource, meta["namespace"], stored)
        return copy.deepcopy(stored)

    @staticmethod
    def _same(obj: Obj, current: Obj) -> bool:
        def content(o: Obj) -> Obj:
            meta = {
                k: v
                for k, v in (o.get("metadata") or {}).items()
                if k in ("labels", "annotations", "ownerReferences")
            }
            return {**{k: v for k, v in o.items() if k != "metadata"}, "metadata": meta}

        return content(obj) == content(current)

    def _record(self, type_: str, resource: str, namespace: str, obj: Obj) -> None:
        if type_ == "DELETED":
            self._version += 1
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._version)}}
        version = int(obj["metadata"]["resourceVersion"])
        self._events.append(_Event(version, type_, resource, namespace, copy.deepcopy(obj)))
        if len(self._events) > self._history:
            dropped = self._events.pop(0)
            self._oldest = dropped.version
        self._cond.notify_all()

    def _watch(self, resource: str, namespace: str, params: dict) -> MemoryResponse:
        since = int(params.get("resourceVersion") or self._version)
        if since < self._oldest:
            return _status(410, "Expired", f"too old resource version: {since} ({self._oldest})")
        seconds = float(params.get("timeoutSeconds") or 300)
        selector = params.get("labelSelector", "")
        return MemoryResponse(
            200, events=self._stream(resource, namespace, selector, since, seconds)
        )

    def _stream(
        self, resource: str, namespace: str, selector: str, since: int, seconds: float
    ) -> Iterator[bytes]:
        deadline = time.monotonic() + seconds
        while True:
            with self._cond:
                expired = since < self._oldest
                pending = [
                    e
                    for e in self._events
                    if e.version > since
                    and e.resource == resource
                    and namespace in ("", e.namespace)
                    and _matches(e.obj["metadata"].get("labels") or {}, selector)
                ]
                if not (expired or pending):
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closed:
                        return
                    self._cond.wait(min(left, 0.5))
                    continue
            if expired:
                gone = {"code": 410, "reason": "Expired", "message": "too old resource version"}
                yield json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"
                return
            for event in pending:
                since = event.version
                yield json.dumps({"type": event.type, "object": event.obj}).encode() + b"\n"
