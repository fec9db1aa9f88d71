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


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found: passed, or why not (said in logs, metrics and status)."""

    ok: bool
    reason: str = ""  # e.g. "connection refused", "timed out", "status 503"
    kind: str = ""  # the metric's reason label: refused, timeout, tls, status, reset, error

    def __bool__(self) -> bool:
        return self.ok


PASSED = ProbeResult(True)


def probe_once(key: ProbeKey, check: HealthCheckConfig) -> ProbeResult:
    """One probe of (address, port). Never raises: a failure says why."""
    address, port = key
    try:
        with socket.create_connection((address, port), timeout=check.timeout) as sock:
            if check.type == "tcp":
                return PASSED
            if check.type == "https":
                sock = _tls_context(check).wrap_socket(
                    sock, server_hostname=check.tls_server_name or check.host or address
                )
            status = _http_status(sock, key, check)
    except ssl.SSLCertVerificationError as exc:
        return ProbeResult(False, f"TLS verification failed: {exc.verify_message}", "tls")
    except ssl.SSLError as exc:
        return ProbeResult(False, f"TLS failed: {exc.reason or exc}", "tls")
    except TimeoutError:
        return ProbeResult(False, f"timed out after {check.timeout:g}s", "timeout")
    except ConnectionRefusedError:
        return ProbeResult(False, "connection refused", "refused")
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        return ProbeResult(False, "connection reset", "reset")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return ProbeResult(False, f"{type(exc).__name__}: {exc}"[:200], "error")
    if any(low <= status <= high for low, high in check.expected_status):
        return PASSED
    return ProbeResult(False, f"status {status} (expected {_ranges(check)})", "status")


def _ranges(check: HealthCheckConfig) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in check.expected_status)


def _tls_context(check: HealthCheckConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(check.ca_file) if check.ca_file else None)
    if check.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _ConnectedHTTP(http.client.HTTPConnection):
    """An HTTP connection over a socket that is already open (and maybe TLS-wrapped)."""

    def __init__(self, sock: socket.socket, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # already connected
        pass


def host_header(key: ProbeKey, check: HealthCheckConfig) -> str:
    """The Host header: the configured one as written, else the backend's address with its
    port (an IPv6 address in brackets; the port left out where it is the scheme's own)."""
    if check.host:
        return check.host
    address, port = key
    host = f"[{address}]" if ":" in address else address
    default = 443 if check.type == "https" else 80
    return host if port == default else f"{host}:{port}"


def _http_status(sock: socket.socket, key: ProbeKey, check: HealthCheckConfig) -> int:
    sock.settimeout(check.timeout)
    connection = _ConnectedHTTP(sock, key[0], key[1], check.timeout)
    connection.putrequest("GET", check.path, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", host_header(key, check))
    connection.putheader("User-Agent", "syncd-health-check")
    connection.putheader("Connection", "close")
    connection.endheaders()
    return connection.getresponse().status


@dataclass
class _State:
    healthy: bool = True
    streak: int = 0  # consecutive results contradicting `healthy`
    reason: str = ""  # why the last probe failed


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

    def failing(self) -> dict[ProbeKey, str]:
        """The backends the probes call unhealthy, and why the last probe failed."""
        with self._lock:
            return {key: s.reason for key, s in sorted(self._states.items()) if not s.healthy}

    def run_round(self, keys: Iterable[ProbeKey]) -> bool:
        """Probe every key once; True if any backend changed between healthy and not."""
        keys = sorted(set(keys))
        results = self._probe_all(keys)
        changed = False
        with self._lock:
            for key in list(self._states):
                if key not in keys:
                    del self._states[key]  # no longer listed anywhere
            for key, result in zip(keys, results, strict=True):
                PROBES.labels(self._check.type, "pass" if result else "fail", result.kind).inc()
                state = self._states.setdefault(key, _State())
                state.reason = result.reason or state.reason
                ok = result.ok
                if ok == state.healthy:
                    state.streak = 0
                    continue
                state.streak += 1
                if state.streak >= (self._check.rise if ok else self._check.fall):
                    state.healthy, state.streak, changed = ok, 0, True
                    self._said(key, result)
        return changed

    def _said(self, key: ProbeKey, result: ProbeResult) -> None:
        """A backend turned healthy or unhealthy: one line, with why."""
        host = f"[{key[0]}]" if ":" in key[0] else key[0]
        why = "" if result.ok else f": {result.reason}"
        log.log(
            logging.INFO if result.ok else logging.WARNING,
            "%s: %s:%d is %s (%s probe%s)",
            self._name,
            host,
            key[1],
            "healthy" if result.ok else "unhealthy",
            self._check.type,
            why,
            extra={"target": self._name, "action": "probe"},
        )

    def _probe_all(self, keys: list[ProbeKey]) -> list[ProbeResult]:
        """Probe every key, `concurrency` at a time; results in the order of `keys`."""
        if not keys:
            return []
        pool = self._pool or DaemonPool(min(self._check.concurrency, len(keys)), "probe")
        results = [ProbeResult(False, "not probed", "error")] * len(keys)
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
