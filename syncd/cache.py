"""A local copy of the cluster objects syncd works with, kept current by list + watch.

The daemon reconciles against this cache instead of reading the API: a converged target
costs no request at all. `run --once` fills the same cache with one paginated list per kind
(not one read per target). What each kind's cache selects is explained in `syncd.kinds`.

How it stays current (client-go's reflector is the model):

- list, then watch from the list's resourceVersion; a watch that ends is resumed from the
  last resourceVersion seen (bookmarks keep it fresh); 410 Gone means "too old": list
  again; any other failure is retried with capped, jittered backoff (quickly while the
  server cannot even be reached, so a restarted API server is noticed within a second).
- every change is passed on only if it changes what matters (the kind's *watch view*:
  managed fields plus identity). Server-side noise (status, managedFields, a new
  resourceVersion alone) wakes nothing.
- syncd's own writes are stored as soon as the API answers them (write-through), and the
  view each write is about to produce is registered first. The watch event a write causes
  therefore compares equal, whichever arrives first, and is not taken for someone else's
  edit. This compares content, not resourceVersions, so it cannot race the watch.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from syncd.cache_store import Store, newer
from syncd.collector import collector_paused
from syncd.errors import KubeError
from syncd.kinds import (
    CACHED_KINDS,
    ENDPOINT_SLICE,
    ENDPOINTS,
    KINDS,
    SERVICE,
    SERVICE_NAME_LABEL,
    Kind,
    Obj,
    ObjectId,
    View,
)
from syncd.kube import Kube
from syncd.live import LiveState
from syncd.model import Target
from syncd.ownership import prunable_by
from syncd.ratelimit import backoff
from syncd.served import ServedFields

log = logging.getLogger(__name__)

ChangeHandler = Callable[[Kind, Obj | None, Obj | None], None]

_DELETED: View = {"\0deleted": True}
_WATCH_SECONDS = (240, 360)  # each watch asks the server to end it within this, at random


def _coming_back(status: int | None) -> bool:
    """Errors of a server that is down, starting or overloaded: unreachable, 429, 5xx, and
    the 401/403 a starting kube-apiserver gives until its authorizers are loaded."""
    return status is None or status in (401, 403, 429) or status >= 500


@dataclass
class InformerStatus:
    """For health checks: is this list+watch loop alive and in contact with the server?"""

    kind: str
    namespace: str | None
    synced: bool = False
    failing_since: float | None = None
    last_error: str = ""


class ClusterCache:
    """Services, Endpoints and EndpointSlices as syncd needs them, by list + watch."""

    def __init__(
        self,
        kube: Kube,
        namespaces: tuple[str, ...] | None = None,
        on_change: ChangeHandler | None = None,
        on_recovered: Callable[[], None] | None = None,
        kinds: tuple[Kind, ...] = CACHED_KINDS,
    ):
        self._kube = kube
        self._namespaces: tuple[str | None, ...] = namespaces or (None,)
        self.on_change = on_change
        self.on_recovered = on_recovered
        kube.contact.when_back(self._api_back)  # a request answered after a network failure
        self._kinds = kinds
        self._stores = {kind.name: Store(kind) for kind in kinds}
        self._expected: dict[ObjectId, View] = {}
        # objects syncd deleted whose DELETED event has not come yet -> their uid: a late
        # event of an earlier write must not bring them back (a second delete, a 404)
        self._gone: dict[ObjectId, str] = {}
        self.served = ServedFields()  # what this API server does not keep
        self._lock = threading.RLock()
        self.statuses = [
            InformerStatus(kind.name, namespace) for kind in kinds for namespace in self._namespaces
        ]

    # -- filling it

    def _relist(self, status: InformerStatus) -> tuple[list[tuple[Obj | None, Obj | None]], str]:
        """List one kind (in one namespace) into the store, a page at a time."""
        kind = KINDS[status.kind]
        version = ""

        def pages() -> Iterator[list[dict[str, Any]]]:
            nonlocal version
            for page, page_version in self._kube.list_pages(
                kind.name, status.namespace, kind.cache_selector or ""
            ):
                version = page_version or version
                yield page

        with self._lock, collector_paused():  # every listed object stays: see collector
            changes = self._stores[kind.name].replace(pages(), status.namespace)
            for oid in [o for o in self._gone if o[0] == kind.name]:
                if status.namespace in (None, oid[1]):
                    del self._gone[oid]  # the list is the truth now; its watch follows
        status.synced = True
        return changes, version

    def load(self) -> None:
        """One paginated list per kind (and namespace), for a one-shot run."""
        for status in self.statuses:
            self._relist(status)

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        """A list + watch thread per kind (and namespace); see `synced`."""
        threads = []
        for status in self.statuses:
            thread = threading.Thread(
                target=self._informer,
                args=(status, stop),
                name=f"watch {status.kind}"
                + (f" in {status.namespace}" if status.namespace else ""),
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        return threads

    @property
    def synced(self) -> bool:
        return all(status.synced for status in self.statuses)

    def wait_synced(self, stop: threading.Event, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.synced:
            if stop.wait(0.05) or (deadline is not None and time.monotonic() > deadline):
                return False
        return True

    def wait_logged(
        self, stop: threading.Event, what: str, clock: Callable[[], float] = time.monotonic
    ) -> bool:
        """Until synced (True) or stopped (False), saying every 10 s what it waits for."""
        waited = clock()
        while not self.wait_synced(stop, timeout=10):
            if stop.is_set():
                return False
            log.warning(
                "waiting for the cache of %s (%.0fs so far): %s",
                what,
                clock() - waited,
                self.problem() or "listing",
            )
        log.info("cache of %s synced in %.1fs", what, clock() - waited)
        return True

    def problem(self) -> str:
        """Why a list or watch fails now ("" when none does)."""
        return "; ".join(s.last_error for s in self.statuses if s.last_error)

    def _informer(self, status: InformerStatus, stop: threading.Event) -> None:
        kind = KINDS[status.kind]
        selector = kind.cache_selector or ""
        version = ""
        failures = 0
        while not stop.is_set():
            try:
                if not version:
                    changes, version = self._relist(status)
                    for old, new in changes:
                        self._dispatch(kind, old, new)
                events = self._kube.watch(
                    kind.name, status.namespace, selector, version, random.randint(*_WATCH_SECONDS)
                )
                if status.failing_since is not None:
                    self._recovered(status)
                failures = 0
                for event, obj in events:
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event in ("ADDED", "MODIFIED"):
                        stored = self._stored_event(kind, obj)
                        if stored is not None:
                            self._dispatch(kind, *stored)
                    elif event == "DELETED":
                        with self._lock:
                            self._gone.pop((kind.name, *Store.name_of(obj)), None)
                            old = self._stores[kind.name].pop(Store.name_of(obj))
                        self._dispatch(kind, old, None)
                    if stop.is_set():
                        return
            except KubeError as exc:
                if stop.is_set():
                    return
                if exc.status == 410:  # too old (etcd compacted it): list again, at once
                    log.info("watching %ss: 410 Gone (%s); listing again", kind.name, exc)
                    version = ""
                    continue
                failures += 1
                if status.failing_since is None:
                    status.failing_since = time.monotonic()
                    log.warning("watching %ss: %s; retrying", kind.name, exc)
                status.last_error = str(exc)
                log.debug("watching %ss: %s (failure %d)", kind.name, exc, failures)
                if exc.status is not None:
                    version = ""  # the server answered with an error: start over with a list
                stop.wait(self._backoff(failures, _coming_back(exc.status)))
            except Exception as exc:  # a bug must not silently end the watch: log, relist
                failures += 1
                log.exception("watching %ss failed unexpectedly; listing again", kind.name)
                status.failing_since = status.failing_since or time.monotonic()
                status.last_error = f"unexpected: {exc!r}"
                version = ""
                stop.wait(self._backoff(failures, False))

    def _stored_event(self, kind: Kind, obj: Obj) -> tuple[Obj | None, Obj] | None:
        """Store an ADDED/MODIFIED event; None when it is older than what syncd holds (its
        own write's answer came first) or describes an object syncd has since deleted."""
        name = Store.name_of(obj)
        oid = (kind.name, *name)
        with self._lock:
            store = self._stores[kind.name]
            gone = self._gone.get(oid)
            if gone is not None:
                if gone == ((obj.get("metadata") or {}).get("uid") or ""):
                    return None
                del self._gone[oid]  # created again since: a new object
            current = store.by_name.get(name)
            if current is not None and not newer(obj, current):
                return None
            old = store.put(obj)
            return old, store.by_name[name]

    @staticmethod
    def _backoff(failures: int, soon: bool) -> float:
        """Seconds before the next attempt: at most a second while the server is down or
        coming back (so a restarted API server is noticed at once), up to 10 s otherwise."""
        cap = 1.0 if soon else 10.0
        return backoff(failures + 1, 0.2, cap)

    def _api_back(self) -> None:
        if self.on_recovered is not None:
            self.on_recovered()

    def _recovered(self, status: InformerStatus) -> None:
        log.info("watching %ss again", status.kind)
        status.failing_since = None
        status.last_error = ""
        if self.on_recovered is not None:
            self.on_recovered()

    # -- what changed, and was it us?

    def _dispatch(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        if old is None and new is None:
            return
        obj = new if new is not None else old
        assert obj is not None
        metadata = obj.get("metadata") or {}
        oid = (kind.name, metadata.get("namespace", ""), metadata.get("name", ""))
        with self._lock:
            expected = self._expected.get(oid)
            if expected is not None and (
                (new is None and expected is _DELETED)
                or (new is not None and kind.view(new) == expected)
            ):
                del self._expected[oid]
                return  # the echo of syncd's own write
        if old is not None and new is not None and kind.watch_view(old) == kind.watch_view(new):
            return
        if self.on_change is not None:
            self.on_change(kind, old, new)

    def expect(self, oid: ObjectId, desired: Obj | None) -> None:
        """syncd is about to write `desired` (None: delete): its echo is not news."""
        kind = KINDS[oid[0]]
        with self._lock:
            self._expected[oid] = _DELETED if desired is None else kind.view(desired)

    def wrote(self, obj: Obj) -> None:
        """Store what the API answered to syncd's own write (unless the watch was faster)."""
        kind = KINDS[obj["kind"]]
        if kind.name not in self._stores:
            return
        with self._lock:
            store = self._stores[kind.name]
            name = Store.name_of(obj)
            if newer(obj, store.by_name.get(name)):
                store.put(obj)
            self._expected.pop((kind.name, *name), None)

    def deleted(self, kind_name: str, namespace: str, name: str, uid: str = "") -> None:
        """syncd deleted this object: forget it, and ignore late events of it."""
        with self._lock:
            store = self._stores.get(kind_name)
            if store is not None:
                old = store.pop((namespace, name))
                uid = uid or ((old or {}).get("metadata") or {}).get("uid") or ""
                if uid:
                    self._gone[(kind_name, namespace, name)] = uid
            self._expected.pop((kind_name, namespace, name), None)

    def write_failed(self, oid: ObjectId) -> None:
        with self._lock:
            self._expected.pop(oid, None)

    # -- reading it

    def get(self, kind_name: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._stores[kind_name].by_name.get((namespace, name))

    def live_state(self, target: Target) -> LiveState:
        """The target's objects of every cached kind (a Service and Endpoints by its name,
        slices by their service-name label: `kinds.target_key_of`)."""
        with self._lock:
            objects = {
                kind: tuple(store.by_name[n] for n in sorted(store.by_target.get(target.key, ())))
                for kind, store in self._stores.items()
            }
            return LiveState(objects, unsupported=self.served.unsupported)

    def all(self, kind_name: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._stores[kind_name].by_name.values())

    def owned(self, kind_name: str, owner_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                obj
                for obj in self._stores[kind_name].by_name.values()
                if prunable_by(obj, owner_id)
            ]

    def refresh_target(self, target: Target) -> None:
        """Read one target's objects from the API (a one-shot run, after waiting or a 409)."""
        service = self._kube.get(SERVICE.name, target.namespace, target.service)
        endpoints = self._kube.get(ENDPOINTS.name, target.namespace, target.service)
        slices = self._kube.list(
            ENDPOINT_SLICE.name, target.namespace, f"{SERVICE_NAME_LABEL}={target.service}"
        )
        with self._lock:
            for kind, obj in ((SERVICE, service), (ENDPOINTS, endpoints)):
                store = self._stores[kind.name]
                if obj is None:
                    store.pop((target.namespace, target.service))
                else:
                    store.put(obj)
            store = self._stores[ENDPOINT_SLICE.name]
            for name in list(store.by_target.get(target.key, ())):
                store.pop(name)
            for obj in slices:
                store.put(obj)
