"""Network faults between syncd and its servers, as scenarios the tests and the benchmark
share (tests/integration/test_faults.py asserts behaviour, bench/faults.py times it).

A `FaultWorld` is a daemon that reaches the kube-apiserver and Consul through Toxiproxy,
Consul services it follows, and a watcher that checks, four times a second for as long as
the world lives, what must hold whatever the network does:

- no slice holds an endpoint Consul never listed for its service;
- no Service that had endpoints is emptied;
- the daemon is alive, and /readyz answers (200 or 503) within its deadline;
- (with replicas) only the replica that holds the Lease writes (from the audit log).

`run_fault` is one scenario: converged; inject; a registration during the fault; heal;
converged again. It returns the timings and counts, and the invariants' violations.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.helpers import endpoint_pairs, sample, scrape, slices_of, target_with, write_config
from harness.kube_apiserver import free_port
from harness.syncd_process import start_syncd
from harness.toxiproxy import Toxiproxy
from syncd.errors import KubeError

READYZ_DEADLINE = 3.0  # /readyz must answer within this, whatever the servers do
SAMPLE_EVERY = 0.25


@dataclass
class FaultResult:
    """What one fault did: times in seconds, counts during the recovery."""

    fault: str
    detected: float | None  # from the injection to the daemon saying so (None: it did not)
    converged: float  # from healing to every target matching Consul again
    consul_requests: int  # requests to Consul from healing to convergence
    writes: int  # API writes by syncd from the injection to convergence
    violations: list[str] = field(default_factory=list)


class FaultWorld:
    """Consul services followed by a daemon through fault proxies; see the module doc."""

    def __init__(
        self,
        apiserver,
        consul,
        toxiproxy: Toxiproxy,
        admin,
        namespace: str,
        workdir: Path,
        services: int = 5,
    ):
        self.apiserver, self.consul, self.admin = apiserver, consul, admin
        self.namespace, self.workdir = namespace, workdir
        self.toxiproxy = toxiproxy
        self.api_proxy = toxiproxy.proxy(f"127.0.0.1:{apiserver.port}")
        self.consul_proxy = toxiproxy.proxy(consul.address.split("://", 1)[1])
        self.services = [f"f{i}-{namespace}" for i in range(services)]
        self.listed: dict[str, set[tuple[str, int]]] = {s: set() for s in self.services}
        self.current: dict[str, set[tuple[str, int]]] = {s: set() for s in self.services}
        self.metrics = f"127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None
        self.log = workdir / "daemon.log"
        self.violations: list[str] = []
        self.readyz: list[int] = []  # every status /readyz answered, in order
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._serial = 0

    # -- the registry --------------------------------------------------------------------

    def register(self, service: str) -> tuple[str, int]:
        """A new instance of `service` on the next free address; listed from now on."""
        self._serial += 1
        pair = (f"192.0.2.{self._serial % 250 + 1}", 8000 + self._serial // 250)
        self.listed[service].add(pair)  # before Consul has it: the watcher may look any time
        self.consul.register(f"{service}-{self._serial}", service, pair[0], pair[1])
        self.current[service].add(pair)
        return pair

    def deregister(self, service: str, pair: tuple[str, int]) -> None:
        serial = (pair[1] - 8000) * 250 + int(pair[0].rsplit(".", 1)[1]) - 1
        self.consul.deregister(f"{service}-{serial}")
        self.current[service].discard(pair)

    # -- the daemon ----------------------------------------------------------------------

    def config(self) -> Path:
        targets = [
            target_with(self.namespace, s, {"type": "consul", "service": s}) for s in self.services
        ]
        return write_config(
            self.workdir / "faults.yaml",
            *targets,
            consul=self.consul_section(),
        )

    def consul_section(self) -> dict:
        """The agent's own `consul:` section (its TLS files too: over HTTPS syncd speaks
        HTTP/2), with the address of the proxy in front of it."""
        section = self.consul.config_section()
        scheme = section["address"].split("://", 1)[0]
        return section | {"address": f"{scheme}://{self.consul_proxy.listen}"}

    def start(self, *extra: str, timeout: float = 60) -> None:
        for service in self.services:
            for _ in range(2):
                self.register(service)
        self.process = start_syncd(
            self.config(),
            self.apiserver.syncd_kubeconfig_via(self.api_proxy.listen),
            self.log,
            "--log-level",
            "info",
            "--owner-id",
            self.namespace,
            "--metrics-address",
            self.metrics,
            *extra,
        )
        self.wait_converged(timeout)
        self._watcher = threading.Thread(target=self._watch, name="invariants", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.violations.append("the daemon did not exit within 10 s of SIGTERM")
        for proxy in (self.api_proxy, self.consul_proxy):
            self.toxiproxy.remove(proxy)

    def converged(self) -> bool:
        return all(
            endpoint_pairs(slices_of(self.admin, self.namespace, s)) == self.current[s]
            for s in self.services
        )

    def wait_converged(self, timeout: float) -> float:
        """Seconds until every target matches Consul; AssertionError after `timeout`."""
        started = time.monotonic()
        while not self.converged():
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.process.returncode})")
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not converged {timeout:g}s after healing")
            time.sleep(0.1)
        return time.monotonic() - started

    def consul_requests(self) -> int:
        return int(sample(scrape(self.metrics), "syncd_source_requests_total", source="consul"))

    def api_failures(self, reason: str = "") -> int:
        """Requests to the API server that failed (syncd_kube_request_failures_total)."""
        labels = {"reason": reason} if reason else {}
        return int(sample(scrape(self.metrics), "syncd_kube_request_failures_total", **labels))

    def stale_targets(self) -> int:
        return int(sample(scrape(self.metrics), "syncd_target_stale"))

    def ready_status(self) -> int:
        """/readyz's status; 0 when it did not answer within READYZ_DEADLINE."""
        try:
            with urllib.request.urlopen(
                f"http://{self.metrics}/readyz", timeout=READYZ_DEADLINE
            ) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def _watch(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            try:
                self._look()
            except KubeError:  # the API server itself is down (a restart): look again
                continue

    def _look(self) -> None:
        for service in self.services:
            pairs = endpoint_pairs(slices_of(self.admin, self.namespace, service))
            if not pairs:
                self._violation(f"{service} emptied")
            if unknown := pairs - self.listed[service]:
                self._violation(f"{service} holds {sorted(unknown)}, never listed")
        if self.process is not None and self.process.poll() is not None:
            self._violation(f"the daemon exited ({self.process.returncode})")
            self._stop.set()
            return
        status = self.ready_status()
        self.readyz.append(status)
        if status == 0:
            self._violation(f"/readyz did not answer within {READYZ_DEADLINE:g}s")

    def _violation(self, what: str) -> None:
        if what not in self.violations:
            self.violations.append(what)

    # -- one fault -----------------------------------------------------------------------

    def run_fault(
        self,
        name: str,
        inject: Callable[[], None],
        heal: Callable[[], None],
        duration: float,
        detected: Callable[[], bool] = lambda: False,
        change_after: float = 5.0,
        settle: float = 60,
    ) -> FaultResult:
        """Converged; inject; register an instance `change_after` seconds into the fault;
        heal after `duration` (e.g. a proxy's `heal`); converged. `detected` is asked
        during the fault only: has the daemon said so (a metric) while it lasts?"""
        self.wait_converged(settle)
        mark = self.apiserver.audit.mark()
        inject()  # may take a while (a server's graceful stop): the fault starts after it
        injected = time.monotonic()
        seen: float | None = None
        change_at = injected + change_after
        changed = False
        while (now := time.monotonic()) - injected < duration:
            if seen is None and detected():
                seen = now - injected
            if not changed and now >= change_at:
                self.register(self.services[0])
                changed = True
            time.sleep(0.2)
        if not changed:
            self.register(self.services[0])
        before = self.consul_requests()
        heal()
        converged = self.wait_converged(settle)
        requests = self.consul_requests() - before
        writes = len(self.apiserver.audit.writes_since(mark))
        return FaultResult(name, seen, converged, requests, writes, list(self.violations))


@contextlib.contextmanager
def fault_world(*args, **kwargs):
    """A started FaultWorld, stopped at the end (its violations are the caller's to check)."""
    world = FaultWorld(*args, **kwargs)
    try:
        world.start()
        yield world
    finally:
        world.stop()


__all__ = ["READYZ_DEADLINE", "FaultResult", "FaultWorld", "fault_world"]
