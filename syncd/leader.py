"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics.

Several replicas of the daemon run at once; only the holder of the Lease writes. The others
keep their caches and sources warm, so a takeover is a matter of seconds, not a start-up.

- A candidate acquires the Lease when nobody holds it, or when its holder has not renewed
  it for `lease_duration` (15 s) as measured by the candidate's own clock since it last
  saw the record change (clocks are never compared across machines).
- The holder renews every `retry_period` (2 s). It counts as leader only while its last
  successful renewal is less than `renew_deadline` (10 s) old: a leader that cannot renew
  stops writing 5 s before anyone may take over (fencing). This uses the monotonic clock,
  which keeps counting while a process is frozen (SIGSTOP, a paused VM): a resumed former
  leader knows at once that it is not leader any more.
- On SIGTERM the holder gives the Lease up (empty holder, 1 s duration), so a standby takes
  over within one retry period instead of waiting for the lease to run out.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from syncd.errors import KubeConflict, KubeError
from syncd.kinds import LEASE
from syncd.kube import Kube
from syncd.observability import LEADER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderSettings:
    namespace: str
    name: str
    identity: str  # this replica, unique: its pod name and a random suffix
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def _micro_time(moment: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    stamp = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquire and renew one Lease; `is_leader()` is the fence every write checks."""

    def __init__(
        self,
        kube: Kube,
        settings: LeaderSettings,
        on_started: Callable[[], None] = lambda: None,
        on_stopped: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._kube = kube
        self._settings = settings
        self.on_started = on_started  # called on its thread when this replica becomes leader
        self.on_stopped = on_stopped  # ... and when it stops being leader
        self._clock = clock
        self._renewed: float | None = None  # monotonic time of the last successful renewal
        self._observed: dict[str, Any] | None = None  # the record last seen
        self._observed_at = 0.0  # when it was seen to change (our clock)
        self._lease: dict[str, Any] | None = None
        self._leading = False
        self.problem = ""  # why the lease cannot be read or written, while that lasts
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    @property
    def identity(self) -> str:
        return self._settings.identity

    def is_leader(self) -> bool:
        """Leader now, and for certain: renewed less than renew_deadline ago."""
        with self._lock:
            renewed = self._renewed
        return renewed is not None and self._clock() - renewed < self._settings.renew_deadline

    def holder(self) -> str:
        """Who holds the Lease, as last seen ('' when nobody)."""
        return str(((self._observed or {}).get("holderIdentity")) or "")

    def start(self, stop: threading.Event) -> threading.Thread:
        self.thread = threading.Thread(target=self._run, args=(stop,), name="leader", daemon=True)
        self.thread.start()
        return self.thread

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            acquired = self._try_acquire_or_renew()
            if self.is_leader():
                if not self._leading:
                    self._leading = True
                    LEADER.set(1)
                    log.warning("became the leader (%s)", self._settings.identity)
                    self.on_started()
            elif self._leading:
                self._leading = False
                LEADER.set(0)
                log.warning(
                    "lost the lease %s/%s (not renewed for %gs); standing by",
                    self._settings.namespace,
                    self._settings.name,
                    self._settings.renew_deadline,
                )
                self.on_stopped()
            pause = self._settings.retry_period * (1.0 if acquired else random.uniform(1.0, 1.2))
            stop.wait(pause)

    def _try_acquire_or_renew(self) -> bool:
        """One attempt (client-go's tryAcquireOrRenew); True when we hold the Lease now."""
        s = self._settings
        started = self._clock()
        held = self._lease if self.is_leader() else None
        try:  # a leader renews what it wrote last (a 409 sends it back to reading)
            lease = held or self._kube.get(LEASE.name, s.namespace, s.name)
        except KubeError as exc:
            self._trouble(f"cannot read the lease {s.namespace}/{s.name}: {exc}")
            return False
        now_wall = time.time()
        record = {
            "holderIdentity": s.identity,
            "leaseDurationSeconds": int(s.lease_duration),
            "renewTime": _micro_time(now_wall),
        }
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": s.name, "namespace": s.namespace},
                "spec": {**record, "acquireTime": _micro_time(now_wall), "leaseTransitions": 0},
            }
            return self._write(self._kube.create, body, started)
        spec = lease.get("spec") or {}
        if spec != self._observed:
            self._observed, self._observed_at = dict(spec), self._clock()
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
        expired = self._clock() > self._observed_at + duration
        if holder and holder != s.identity and not expired:
            self._resolved()  # readable, and someone else leads: a standby with nothing to write
            return False
        ours = holder == s.identity
        body = {
            **lease,
            "spec": {
                **spec,
                **record,
                "acquireTime": spec.get("acquireTime") if ours else _micro_time(now_wall),
                "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if ours else 1),
            },
        }
        return self._write(self._kube.replace, body, started)

    def _write(
        self, verb: Callable[[dict[str, Any]], dict[str, Any]], body: dict, started: float
    ) -> bool:
        try:
            lease = verb(body)
        except KubeConflict:
            self._lease = None
            return False  # someone else wrote it meanwhile
        except KubeError as exc:
            self._trouble(f"cannot write the lease: {exc}")
            return False
        self._resolved()
        with self._lock:
            self._renewed = started  # counted from before the request: never optimistic
            self._lease = lease
        self._observed, self._observed_at = dict(lease.get("spec") or {}), self._clock()
        return True

    def _resolved(self) -> None:
        if self.problem:
            log.warning(
                "the lease answers again; %s", "leading" if self.is_leader() else "standing by"
            )
        self.problem = ""

    def _trouble(self, problem: str) -> None:
        if problem != self.problem:  # once per streak
            log.warning(
                "%s; standing by (is its namespace there, and may syncd use leases?)", problem
            )
        self.problem = problem

    def release(self) -> None:
        """Give the Lease up (on SIGTERM), so a standby takes over at once."""
        if not self.is_leader() or self._lease is None:
            return
        with self._lock:
            self._renewed = None
        spec = dict(self._lease.get("spec") or {})
        if spec.get("holderIdentity") != self._settings.identity:
            return
        now = _micro_time(time.time())
        body = {
            **self._lease,
            "spec": {
                **spec,
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "renewTime": now,
                "acquireTime": now,
            },
        }
        try:
            self._kube.replace(body)
            log.info("released the lease %s/%s", self._settings.namespace, self._settings.name)
        except KubeError as exc:
            log.warning("could not release the lease (it runs out by itself): %s", exc)
        LEADER.set(0)
