"""The Kubernetes API as syncd uses it: a few verbs on the kinds of `syncd.kinds`, raw JSON.

Objects travel as plain dicts (the JSON the API server speaks), so what `render` produces,
what `plan` compares and what the server returns are the same shape. Requests are built
from each kind's REST path and sent through the official client's connection pool and
authentication (kubeconfig, exec plugins, in-cluster token rotation), without its model
classes: they would cost a conversion of every object in both directions.

- Every request waits for a token of one client-side bucket (`qps`, `burst`, like
  client-go's), so a cold start with thousands of targets cannot flood the API server.
  The wait is not cut short by a shutdown: a target whose first write is out finishes its
  others (a few tokens, milliseconds), so a stop never leaves one half-written.
- Transient failures (connection errors, timeouts, 429, 5xx) are retried with capped,
  jittered exponential backoff; anything else (validation errors, forbidden, not found) is
  raised at once as a `KubeError`, never retried in a loop. A shutdown interrupts the
  pauses between retries.
- Lists are paginated (`limit` + `continue`), so memory stays bounded for large clusters.
- Deadlines (docs/daemon.md, "Deadlines"): a request has `request_timeout` to connect and
  to be answered; a watch may be silent for WATCH_NO_PROGRESS at most (the API server
  sends a bookmark about every minute), then it is asked again from where it was. A
  request that times out or is reset cuts every open watch: they most likely share its
  broken path, and are better asked again (and seen failing) now than after a minute.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import logging
import threading
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.watch.watch import iter_resp_lines

from syncd import __version__
from syncd.errors import KubeError, KubeNotFound
from syncd.kinds import EVENT, KINDS, Kind
from syncd.kube_transport import (
    NETWORK_ERRORS,
    WRITE_VERBS,
    HttpError,
    HttpTransport,
    KubeSettings,
    Transport,
    api_error,
    describe_failure,
    failure_reason,
    load_client_configuration,
    retry_policy,
)
from syncd.observability import KUBE_REQUESTS
from syncd.ratelimit import TokenBucket

log = logging.getLogger(__name__)

# Seconds a watch may go without a byte: kube-apiserver sends a bookmark about every
# minute to a watch that allows them (its watch cache's heartbeat), so this much silence
# means a stalled connection, or a server that sends none (its watch cache off): either
# way the watch is asked again from its resourceVersion, which costs no list.
WATCH_NO_PROGRESS = 90.0
_CUTTING = ("timeout", "reset")  # failures that cut the open watches (see the module doc)


class ApiContact:
    """What syncd knows of its contact with the API server: the watches open now, and
    whether the last request failed on the network. A request that timed out or was reset
    cuts every open watch (each is then asked again by its informer); the first answer
    after a network failure tells whoever listens (failed targets are retried at once)."""

    def __init__(self) -> None:
        self._responses: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lost = False
        self._listeners: list[Callable[[], None]] = []

    def add(self, response: Any) -> None:
        self._responses.add(response)

    def when_back(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def after_failure(self, exc: BaseException) -> None:
        reason = failure_reason(exc)
        if reason in _CUTTING:
            self.cut()
        if reason in (*_CUTTING, "refused"):
            self._lost = True

    def answered(self) -> None:
        if self._lost:
            self._lost = False
            for listener in self._listeners:
                listener()

    def cut(self) -> None:
        for response in list(self._responses):
            shutdown = getattr(response, "shutdown", None)  # urllib3's; not the test API's
            if shutdown is not None:
                with contextlib.suppress(ValueError, OSError):  # ended meanwhile
                    shutdown()


class Kube:
    """Reads and writes the objects syncd works with; counts every call by verb."""

    def __init__(
        self,
        transport: Transport,
        settings: KubeSettings | None = None,
        stop: threading.Event | None = None,
    ):
        self._transport = transport
        self._settings = settings or KubeSettings()
        self._stop = stop or threading.Event()
        self._bucket = TokenBucket(self._settings.qps, self._settings.burst)
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        self.contact = ApiContact()

    @classmethod
    def connect(cls, settings: KubeSettings, stop: threading.Event | None = None) -> Kube:
        configuration = load_client_configuration(settings)
        if not configuration.verify_ssl:  # said once here, not by urllib3 on every request
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
            log.warning("the kubeconfig turns off TLS verification of %s", configuration.host)
        identity = f" ({settings.identity})" if settings.identity else ""
        transport = HttpTransport(k8s.ApiClient(configuration), f"syncd/{__version__}{identity}")
        return cls(transport, settings, stop)

    @property
    def host(self) -> str:
        return self._transport.host

    @property
    def writes(self) -> int:
        return sum(n for verb, n in self.calls.items() if verb in WRITE_VERBS)

    def close(self) -> None:
        close = getattr(self._transport, "close", None)
        if close is not None:
            close()

    # -- the one place every request goes through

    def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: urllib3.Timeout | float | None = None,
    ) -> Any:
        """One request; raises HttpError on non-2xx."""
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        if not isinstance(timeout, urllib3.Timeout):
            timeout = urllib3.Timeout(total=timeout or self._settings.request_timeout)
        response = self._transport.request(
            method, path, query or [], payload, content_type, timeout
        )
        if not 200 <= response.status <= 299:
            data = response.data
            response.release_conn()
            raise HttpError(response.status, data, response.headers)
        self.contact.answered()  # not a 401/403/5xx: a starting server gives those
        return response

    def _call(
        self,
        verb: str,
        what: str,
        method: str,
        path: str,
        fence: Callable[[], bool] | None = None,
        **kwargs,
    ) -> Any:
        """One request, retried while its failure is transient. `fence` (a leader's) is
        checked before every attempt: a replica that lost the lease while a write was
        being retried (frozen, partitioned) sends nothing more."""

        def attempt() -> Any:
            if fence is not None and not fence():
                raise KubeError(f"{verb} {what}: not sent: this replica is not the leader any more")
            self._bucket.wait()
            with self._calls_lock:
                self.calls[verb] += 1
            KUBE_REQUESTS.labels(verb).inc()
            response = self._send(method, path, **kwargs)
            data = response.data
            response.release_conn()
            return json.loads(data) if data else None

        retried = retry_policy(
            self._settings, self._stop, f"{verb} {what}", on_failure=self.contact.after_failure
        )
        try:
            return retried(attempt)
        except (HttpError, *NETWORK_ERRORS) as exc:
            self.contact.after_failure(exc)
            raise api_error(verb, what, exc, self.host) from None

    # -- verbs

    def read_path(self, path: str) -> Any:
        """GET what is not an object (`/version`: reachable, credentials work; `/apis/<group>/
        <version>`: which kinds the server has), as JSON. KubeNotFound: not served."""
        return self._call("get", path, "GET", path)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        row = KINDS[kind]
        try:
            obj = self._call(
                "get", f"{kind} {namespace}/{name}", "GET", row.item_path(namespace, name)
            )
        except KubeNotFound:
            return None
        return _with_kind(obj, row)

    def list(
        self, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """Objects of `kind` matching the selector, in one namespace or all of them."""
        return self.list_with_version(kind, namespace, label_selector)[0]

    def list_with_version(
        self, kind: str, namespace: str | None, label_selector: str = ""
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """Like list, plus the collection's resourceVersion to start a watch from."""
        items: builtins.list[dict[str, Any]] = []
        version = ""
        for page, page_version in self.list_pages(kind, namespace, label_selector):
            items.extend(page)
            version = page_version or version
        return items, version

    def list_pages(
        self, kind: str, namespace: str | None, label_selector: str = ""
    ) -> Iterator[tuple[builtins.list[dict[str, Any]], str]]:
        """The list one page at a time (`page_size` objects), with the collection's
        resourceVersion on the last page: a caller that keeps less than whole objects
        never holds them all at once."""
        row = KINDS[kind]
        where = namespace or "all namespaces"

        def fetch(token: str) -> Page:
            query: list[tuple[str, Any]] = [("limit", self._settings.page_size)]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if token:
                query.append(("continue", token))
            result = self._call(
                "list", f"{kind} in {where}", "GET", row.collection_path(namespace), query=query
            )
            metadata = (result or {}).get("metadata") or {}
            page = [_with_kind(item, row) for item in (result or {}).get("items") or ()]
            return page, metadata.get("continue") or "", metadata.get("resourceVersion", "")

        return _read_ahead(fetch, f"list {kind}")

    def watch(
        self,
        kind: str,
        namespace: str | None,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int = 300,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events (type, object) for `kind`, from `resource_version` on.

        The request is made here (a KubeError if it fails); the events follow as the
        returned iterator is read. It ends when the server closes the watch and raises
        KubeError on failure, including 410 Gone (list again and start from there).
        """
        row = KINDS[kind]
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", timeout_seconds),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        self._bucket.wait()
        with self._calls_lock:
            self.calls["watch"] += 1
        KUBE_REQUESTS.labels("watch").inc()
        try:
            response = self._send(
                "GET",
                row.collection_path(namespace),
                query=query,
                timeout=urllib3.Timeout(
                    connect=self._settings.request_timeout,
                    read=min(timeout_seconds + 30, WATCH_NO_PROGRESS),
                ),
            )
        except (HttpError, *NETWORK_ERRORS) as exc:
            self.contact.after_failure(exc)
            raise api_error("watch", kind, exc, self.host) from None
        self.contact.add(response)
        return _watch_events(response, row)

    def create(
        self,
        obj: dict[str, Any],
        dry_run: bool = False,
        fence: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """POST; with `dry_run` the server validates, defaults and answers, storing nothing."""
        row, metadata = KINDS[obj["kind"]], obj["metadata"]
        namespace = metadata["namespace"]
        result = self._call(
            "dry-run create" if dry_run else "create",  # a dry run is not a write
            f"{row.name} {namespace}/{metadata.get('name') or metadata.get('generateName')}",
            "POST",
            row.collection_path(namespace),
            body=obj,
            fence=fence,
            **({"query": [("dryRun", "All")]} if dry_run else {}),
        )
        return _with_kind(result, row)

    def replace(
        self, obj: dict[str, Any], fence: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """PUT, guarded by metadata.resourceVersion: fails with KubeConflict if it changed."""
        row, metadata = KINDS[obj["kind"]], obj["metadata"]
        result = self._call(
            "update",
            f"{row.name} {metadata['namespace']}/{metadata['name']}",
            "PUT",
            row.item_path(metadata["namespace"], metadata["name"]),
            body=obj,
            fence=fence,
        )
        return _with_kind(result, row)

    def merge_patch(
        self,
        kind: str,
        namespace: str,
        name: str,
        patch: dict,
        fence: Callable[[], bool] | None = None,
        subresource: str = "",
    ) -> dict[str, Any]:
        """JSON merge patch: lists in `patch` replace the live lists whole. `subresource`:
        e.g. "status", a custom resource's status (what its controller alone writes)."""
        row = KINDS[kind]
        path = row.item_path(namespace, name) + (f"/{subresource}" if subresource else "")
        result = self._call(
            "patch",
            f"{kind} {namespace}/{name}" + (f" {subresource}" if subresource else ""),
            "PATCH",
            path,
            body=patch,
            content_type="application/merge-patch+json",
            fence=fence,
        )
        return _with_kind(result, row)

    def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        """Record a core/v1 Event (what `kubectl describe` shows under the object)."""
        self._call(
            "create", f"Event in {namespace}", "POST", EVENT.collection_path(namespace), body=event
        )

    def delete_collection(self, kind: str, namespace: str, label_selector: str) -> None:
        """Delete every object of `kind` in `namespace` matching the selector (one call)."""
        row = KINDS[kind]
        self._call(
            "deletecollection",
            f"{kind} in {namespace}",
            "DELETE",
            row.collection_path(namespace),
            query=[("labelSelector", label_selector)],
        )

    def delete(
        self,
        kind: str,
        namespace: str,
        name: str,
        uid: str | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> bool:
        """Delete, only if it is still the object we read (same uid); False if already gone."""
        row = KINDS[kind]
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            self._call(
                "delete",
                f"{kind} {namespace}/{name}",
                "DELETE",
                row.item_path(namespace, name),
                body=body,
                fence=fence,
            )
        except KubeNotFound:
            return False
        return True


def _watch_events(response: Any, row: Kind) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        for line in iter_resp_lines(response):
            event = json.loads(line)
            obj = event.get("object") or {}
            if event.get("type") == "ERROR":
                raise KubeError(
                    f"watch {row.name}: {obj.get('message', 'error')}",
                    obj.get("code"),
                    obj.get("reason", ""),
                )
            yield event.get("type", ""), _with_kind(obj, row)
    except urllib3.exceptions.ReadTimeoutError:  # silent for WATCH_NO_PROGRESS: ask again
        log.debug("watch %s: nothing for %gs; watching again", row.name, WATCH_NO_PROGRESS)
    except (*NETWORK_ERRORS, ValueError) as exc:
        raise KubeError(f"watch {row.name}: interrupted: {describe_failure(exc)}") from None
    finally:
        response.release_conn()


Page = tuple[list[dict[str, Any]], str, str]  # objects, continue token, resourceVersion


def _read_ahead(
    fetch: Callable[[str], Page], name: str
) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """Pages of a list, the next one asked for while the caller reads this one: the
    server's time to build a page overlaps the caller's time to store it
    (docs/performance.md). The version comes with the last page."""
    with ThreadPoolExecutor(1, thread_name_prefix=name) as ahead:
        coming = ahead.submit(fetch, "")
        while True:
            page, token, version = coming.result()
            if token:
                coming = ahead.submit(fetch, token)
            yield page, ("" if token else version)
            if not token:
                return


def _with_kind(obj: Any, row: Kind) -> dict[str, Any]:
    """List and watch items omit kind/apiVersion; every object syncd handles carries them."""
    if not isinstance(obj, dict):
        return obj
    obj.setdefault("kind", row.name)
    obj.setdefault("apiVersion", row.api_version)
    return obj


def with_deadline(kube: Kube, seconds: float) -> Kube:
    """The same client whose calls make one attempt of at most `seconds` (a Lease
    renewal must fail before the renew deadline, not after five tries of 30 s)."""
    settings = dataclasses.replace(kube._settings, request_timeout=seconds, retry_attempts=1)
    view = Kube(kube._transport, settings, kube._stop)
    view.contact = kube.contact
    return view


__all__ = ["ApiContact", "Kube", "KubeSettings", "Transport", "with_deadline"]
