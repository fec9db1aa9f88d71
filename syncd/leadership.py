"""Whether this replica may write now, what it owes after taking over, and whether it is
ready (what /readyz answers).

Without `--leader-elect` the one replica leads from the start. With it, the elector
(`syncd.leader`) starts and stops leadership; the sink checks `fence` right before every
write, so a replica that lost the Lease while a write was pending sends nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from syncd.leader import LeaderElector


class Leadership:
    def __init__(self, elector: LeaderElector | None):
        self.elector = elector
        self.leading = threading.Event()  # workers run only while set
        self._first_pass: set[str] = set()  # targets not yet reconciled since leading
        self._lock = threading.Lock()

    @property
    def fence(self) -> Callable[[], bool] | None:
        """Checked before every write: still the leader, for certain."""
        return self.elector.is_leader if self.elector is not None else None

    def fenced(self) -> bool:
        """The lease is lost: a failed write is the next leader's to repeat."""
        return self.elector is not None and not self.elector.is_leader()

    def begin(self, keys: Iterable[str]) -> None:
        """Leading from now on: every target owes a first pass."""
        with self._lock:
            self._first_pass = set(keys)
        self.leading.set()

    def end(self) -> None:
        self.leading.clear()

    def passed(self, key: str) -> None:
        """The target had its first pass since leadership began."""
        with self._lock:
            self._first_pass.discard(key)

    def readiness(self, cache_synced: bool) -> tuple[bool, str]:
        """Ready when the cache has synced and, as the leader, every target has had its
        first pass; a standby with a synced cache is ready as a standby. A replica that
        cannot read or write its Lease is not ready, whatever it is: it cannot take over."""
        if not cache_synced:
            return False, "the cluster cache has not synced yet"
        if self.elector is not None and self.elector.problem:  # leader or not
            return False, f"cannot lead: {self.elector.problem}"
        if self.elector is not None and not self.leading.is_set():
            holder = self.elector.holder() or "nobody"
            return True, f"standby (the lease is held by {holder})"
        with self._lock:
            waiting = len(self._first_pass)
        if waiting:
            return False, f"{waiting} targets not yet reconciled"
        return True, "leader" if self.elector is not None else "ok"
