"""Active health probes: TCP connect, or HTTP(S) GET, with rise/fall thresholds.

A backend starts healthy (the registry's word is all there is until a probe says
otherwise), turns unhealthy after `fall` consecutive failed probes and healthy again after
`rise` consecutive successes, so one lost packet does not flap it. Probes run with bounded
concurrency and a timeout each; HTTPS verifies certificates (against `ca_file` and
`tls_server_name` when given) unless `insecure_skip_verify` is set.
"""

from __future__ import annotations

import functools
import http.client
import logging
import socket
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from syncd.model import HealthCheckConfig, ProbeKey
from syncd.observability import PROBES
from syncd.scheduler import DaemonPool

log = logging.getLogger(__name__)


def probe_once(key: ProbeKey, check: HealthCheckConfig) -> bool:
    """One probe of (address, port); True when it passes. Never raises."""
    address, port = key
    try:
        with socket.create_connection((address, port), timeout=check.timeout) as sock:
            if check.type == "tcp":
                return True
            if check.type == "https":
                sock = _tls_context(check).wrap_socket(
                    sock, server_hostname=check.tls_server_name or check.host or address
                )
            return _http_status_ok(sock, address, check)
    except (OSError, ssl.SSLError, http.client.HTTPException, ValueError):
        return False


def _tls_context(check: HealthCheckConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(check.ca_file) if check.ca_file else None)
    if check.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _ConnectedHTTP(http.client.HTTPConnection):
    """An HTTP connection over a socket that is already open (and maybe TLS-wrapped)."""

    def __init__(self, sock: socket.socket, host: str, timeout: float):
        super().__init__(host, timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # already connected
        pass


def _http_status_ok(sock: socket.socket, address: str, check: HealthCheckConfig) -> bool:
    sock.settimeout(check.timeout)
    connection = _ConnectedHTTP(sock, check.host or address, check.timeout)
    connection.request(
        "GET", check.path, headers={"User-Agent": "syncd-health-check", "Connection": "close"}
    )
    status = connection.getresponse().status
    return any(low <= status <= high for low, high in check.expected_status)


@dataclass
class _State:
    healthy: bool = True
    streak: int = 0  # consecutive results contradicting `healthy`


class Prober:
    """Probe a changing set of (address, port) on an interval; keep rise/fall state.

    Probes run on a pool shared by every target (the daemon's), at most `concurrency` of
    this target's at once; without a pool, a round brings its own threads (--once).
    """

    def __init__(self, check: HealthCheckConfig, name: str, pool: DaemonPool | None = None):
        self._check = check
        self._name = name
        self._states: dict[ProbeKey, _State] = {}
        self._lock = threading.Lock()
        self._pool = pool

    @property
    def interval(self) -> float:
        return self._check.interval

    def health(self) -> dict[ProbeKey, bool]:
        with self._lock:
            return {key: state.healthy for key, state in self._states.items()}

    def run_round(self, keys: Iterable[ProbeKey]) -> bool:
        """Probe every key once; True if any backend changed between healthy and not."""
        keys = sorted(set(keys))
        results = self._probe_all(keys)
        changed = False
        with self._lock:
            for key in list(self._states):
                if key not in keys:
                    del self._states[key]  # no longer listed anywhere
            for key, ok in zip(keys, results, strict=True):
                PROBES.labels(self._check.type, "pass" if ok else "fail").inc()
                state = self._states.setdefault(key, _State())
                if ok == state.healthy:
                    state.streak = 0
                    continue
                state.streak += 1
                if state.streak >= (self._check.rise if ok else self._check.fall):
                    state.healthy, state.streak, changed = ok, 0, True
                    log.info(
                        "%s: %s:%d is %s (%s probe)",
                        self._name,
                        key[0],
                        key[1],
                        "healthy" if ok else "unhealthy",
                        self._check.type,
                    )
        return changed

    def _probe_all(self, keys: list[ProbeKey]) -> list[bool]:
        """Probe every key, `concurrency` at a time; results in the order of `keys`."""
        if not keys:
            return []
        pool = self._pool or DaemonPool(min(self._check.concurrency, len(keys)), "probe")
        results = [False] * len(keys)
        slots = threading.Semaphore(self._check.concurrency)
        finished = threading.Semaphore(0)

        def probe(index: int, key: ProbeKey) -> None:
            try:
                results[index] = probe_once(key, self._check)
            finally:
                slots.release()
                finished.release()

        for index, key in enumerate(keys):
            slots.acquire()
            pool.submit(functools.partial(probe, index, key))
        for _ in keys:
            finished.acquire()
        if self._pool is None:
            pool.shutdown()
        return results
