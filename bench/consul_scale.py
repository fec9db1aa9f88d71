"""Benchmark: syncd following N Consul services against an agent with DEFAULT limits.

For each N (default 1, 100, 1,000, 10,000 targets, each a Consul service of 3 instances;
the largest run also has one service of 5,000 instances), against a real Consul agent
(`consul agent -dev`, default `http_max_conns_per_client` of 200) and a real
kube-apiserver + etcd, it starts `syncd run` and prints one row:

- cold sync: daemon start -> every target's slices hold all its backends;
- peak RSS, threads, most Consul connections seen (from `ss`) during the whole run;
- flips: a random instance's check turned critical or passing (>= 50 times), from the
  Consul write to the EndpointSlice change seen by a Kubernetes watch: p50 / p99, and
  syncd's API writes per flip (audit log); the 5,000-instance service gets its own row;
- registrations, moves and removals with no check change (--arrivals of each, made at once
  in random services): from Consul's answer to the slice change. A watched service sees
  them in a round trip; a feed-followed one (plain HTTP beyond the budget) waits for the
  paced sweep (see docs/sources.md, "Consul at scale");
- idle for --idle seconds (default 600: two expiries of Consul's 5-minute blocking
  queries): Consul requests/min (syncd's own count), API requests/min and writes, CPU,
  RSS at start and end (the largest run idles --soak seconds, default 1,800);
- SIGTERM -> exit.

Services are created beforehand (headless, so the API server allocates no ClusterIP:
the users' Services exist before syncd runs) and syncd writes their slices
(`manage_service: false`). Instances are registered on catalog nodes through /v1/txn,
as an external service monitor does, with checks the benchmark sets itself.

It stops by itself and removes what it started. Run: `make bench-consul-scale`, or
`.venv/bin/python -m bench.consul_scale --sizes 1000 --idle 60` for a quick look; `--tls`
runs Consul over HTTPS, which syncd speaks as HTTP/2.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import random
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.common import (
    AuditWindow,
    cpu_seconds,
    metric,
    metric_in,
    percentile,
    rss_mib,
    scrape,
    thread_count,
)
from harness.consul_agent import ConsulAgent
from harness.helpers import connections_to
from harness.kube_apiserver import KubeApiServer, free_port
from harness.syncd_process import start_syncd
from syncd.errors import KubeError
from syncd.kube import Kube, KubeSettings

INSTANCES = 3  # per service
BIG = 5_000  # instances of the big service in the largest run
PER_NODE = 200  # instances per catalog node


@dataclass
class Row:
    label: str
    cells: dict[str, str] = field(default_factory=dict)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def address(n: int) -> str:
    """The n-th instance address, in 100.64.0.0/10 (16 million)."""
    return f"100.{64 + n // 65536}.{n // 256 % 256}.{n % 256}"


class Catalog:
    """The instances of one run, registered on catalog nodes, with checks we flip."""

    def __init__(self, agent: ConsulAgent, prefix: str, first_address: int):
        self.agent = agent
        self.prefix = prefix
        self.next_address = first_address
        self.instances: dict[str, list[tuple[str, str, str]]] = {}  # service -> (id, node, ip)

    def add_services(self, services: list[str], count: int) -> None:
        """Many services in few, large transactions."""
        by_node: dict[str, list[tuple[str, str, str, int]]] = {}
        for service in services:
            members = []
            for k in range(count):
                ip = address(self.next_address)
                self.next_address += 1
                node = f"{self.prefix}-n{self.next_address // PER_NODE}"
                instance_id = f"{service}-{k}"
                by_node.setdefault(node, []).append((instance_id, service, ip, 8080))
                members.append((instance_id, node, ip))
            self.instances[service] = members
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda item: self.agent.register_external(item[1], node=item[0]),
                    by_node.items(),
                )
            )

    def add_instance(self, service: str) -> str:
        """One more passing instance of `service`, on a node of its own: a registration
        that changes no check status (the change feeds cannot name its service)."""
        ip = address(self.next_address)
        self.next_address += 1
        instance_id = f"{service}-{len(self.instances[service])}"
        node = f"{self.prefix}-extra-{instance_id}"
        self.agent.register_external([(instance_id, service, ip, 8080)], node=node)
        self.instances[service].append((instance_id, node, ip))
        return ip

    def move_instance(self, service: str) -> tuple[str, str]:
        """The service's last instance registered again at a new address (same ID, same
        node, its check passing as before): (old address, new address)."""
        instance_id, node, old = self.instances[service][-1]
        ip = address(self.next_address)
        self.next_address += 1
        self.agent.register_external([(instance_id, service, ip, 8080)], node=node)
        self.instances[service][-1] = (instance_id, node, ip)
        return old, ip

    def remove_instance(self, service: str) -> str:
        """The service's last instance deregistered (its check with it)."""
        instance_id, node, ip = self.instances[service].pop()
        self.agent.request(
            "PUT", "/v1/catalog/deregister", {"Node": node, "ServiceID": instance_id}
        )
        return ip

    def set_status(self, service: str, k: int, status: str) -> str:
        instance_id, node, ip = self.instances[service][k]
        self.agent.set_external_status(instance_id, status, node=node)
        return ip


class SliceWatch:
    """Every EndpointSlice change in a namespace: (time seen, address -> ready)."""

    def __init__(self, kube: Kube, namespace: str):
        self.events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        _items, version = kube.list_with_version("EndpointSlice", namespace, "")
        self._thread = threading.Thread(
            target=self._follow, args=(kube, namespace, version), daemon=True
        )
        self._thread.start()

    def _follow(self, kube: Kube, namespace: str, version: str) -> None:
        with contextlib.suppress(KubeError):
            while not self._stop.is_set():
                for _kind, obj in kube.watch("EndpointSlice", namespace, "", version, 60):
                    seen = time.monotonic()
                    version = obj["metadata"]["resourceVersion"]
                    ready = {
                        e["addresses"][0]: e["conditions"].get("ready") is not False
                        for e in obj.get("endpoints") or ()
                    }
                    labels = obj["metadata"].get("labels") or {}  # none on a bookmark
                    service = labels.get("kubernetes.io/service-name")
                    self.events.put((seen, service, ready))
                    if self._stop.is_set():
                        return

    def wait_for(self, ip: str, ready: bool, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{ip} ready={ready} not seen")
            seen, _service, states = self.events.get(timeout=left)
            if states.get(ip) is ready:
                return seen

    def wait_for_all(
        self, started: dict[tuple[str, str, bool], float], timeout: float
    ) -> list[float]:
        """Seconds from each change's start to the slice showing it: (service, address,
        True) an address ready in the service's slice, (..., False) gone from it."""
        deadline = time.monotonic() + timeout
        arrived: dict[tuple[str, str, bool], float] = {}
        while len(arrived) < len(started):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not seen: {sorted(set(started) - set(arrived))}")
            try:
                seen, service, states = self.events.get(timeout=left)
            except queue.Empty:
                continue  # the deadline check above says what was not seen
            for change in started:
                wanted_service, ip, present = change
                if change in arrived or service != wanted_service:
                    continue
                if (states.get(ip) is True) if present else (ip not in states):
                    arrived[change] = seen - started[change]
        return list(arrived.values())

    def drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.events.get_nowait()

    def stop(self) -> None:
        self._stop.set()


def registry_changes(
    catalog: Catalog, watch: SliceWatch, services: list[str], count: int, rng: random.Random
) -> dict[str, list[float]]:
    """Changes no check shows, in `count` random services each, made at once and each
    timed from Consul's answer to its slice: new instances, instances moved to a new
    address, instances deregistered. A watched service sees them in a round trip; a
    feed-followed one waits for the sweep."""
    timeout = 60 + len(services) / 50
    chosen = rng.sample(services, min(count, len(services)))
    results: dict[str, list[float]] = {}
    for kind in ("registration", "move", "removal"):
        watch.drain()
        started: dict[tuple[str, str, bool], float] = {}
        for service in chosen:
            if kind == "registration":
                ip = catalog.add_instance(service)
                started[(service, ip, True)] = time.monotonic()
            elif kind == "move":
                old, ip = catalog.move_instance(service)
                started[(service, ip, True)] = started[(service, old, False)] = time.monotonic()
            else:
                ip = catalog.remove_instance(service)
                started[(service, ip, False)] = time.monotonic()
        results[kind] = watch.wait_for_all(started, timeout)
    return results


def settle(metrics_address: str, quiet: float = 6.0, limit: float = 600.0) -> None:
    """Until syncd has made no Consul read for `quiet` seconds (a sweep has ended)."""
    deadline = time.monotonic() + limit
    last, since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        reads = metric(metrics_address, "syncd_source_requests_total") - metric(
            metrics_address, "syncd_source_requests_total", source="consul_agent"
        )  # the agent check asks every 5 s, sweep or not
        if reads != last:
            last, since = reads, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(1.0)


def create_services(admin: Kube, namespace: str, names: list[str]) -> None:
    def create(name: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]},
        }
        admin.create(body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, names))


def flips(
    catalog: Catalog,
    watch: SliceWatch,
    services: list[str],
    count: int,
    gap: float,
    rng: random.Random,
) -> list[float]:
    """`count` flips (critical, then back), each waited for; latencies in ms."""
    latencies = []
    while len(latencies) < count:
        service = rng.choice(services)
        k = rng.randrange(len(catalog.instances[service]))
        for status, ready in (("critical", False), ("passing", True)):
            watch.drain()
            started = time.monotonic()
            ip = catalog.set_status(service, k, status)
            latencies.append((watch.wait_for(ip, ready) - started) * 1000)
            time.sleep(gap)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,1000,10000", help="targets per run")
    parser.add_argument("--flips", type=int, default=60, help="flips per run (and big service)")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between flips")
    parser.add_argument(
        "--arrivals",
        type=int,
        default=10,
        help="registrations, moves and removals per run (each kind at once)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="Consul over HTTPS (certificates from `consul tls`): syncd speaks HTTP/2",
    )
    parser.add_argument("--idle", type=float, default=600.0, help="idle seconds per run")
    parser.add_argument("--soak", type=float, default=1800.0, help="idle seconds, largest run")
    parser.add_argument(
        "--syncd-args",
        default="--kube-qps 0",
        help="extra arguments for syncd (default: %(default)s: the cold sync measures "
        "syncd, not the client-side API rate limit of 50 QPS)",
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    extra = args.syncd_args.split()
    rng = random.Random(7)

    workdir = Path(tempfile.mkdtemp(prefix="syncd-consul-scale-"))
    apiserver = KubeApiServer(workdir / "kube", service_cidr="10.96.0.0/12")
    agent = ConsulAgent(workdir / "consul", tls=args.tls)  # default limits
    rows: list[Row] = []
    big_row: Row | None = None
    daemon = None
    next_address = 0
    try:
        print("starting kube-apiserver, etcd and consul ...", flush=True)
        apiserver.start()
        agent.start()
        consul_port = int(agent.address.rsplit(":", 1)[1])
        namespaces = [f"cscale-{size}" for size in sizes]
        apiserver.apply_deploy_rbac(*namespaces)
        admin = Kube.connect(KubeSettings(kubeconfig=str(apiserver.admin_kubeconfig), qps=0))
        for size, namespace in zip(sizes, namespaces, strict=True):
            largest = size == max(sizes)
            prefix = f"r{size}"
            services = [f"{prefix}-s{n}" for n in range(size)]
            print(f"\n== {size:,} targets: registering and creating Services ...", flush=True)
            catalog = Catalog(agent, prefix, next_address)
            catalog.add_services(services, INSTANCES)
            names = list(services)
            if largest:
                catalog.add_services([f"{prefix}-big"], BIG)
                names.append(f"{prefix}-big")
            next_address = catalog.next_address
            create_services(admin, namespace, names)
            config = workdir / f"syncd-{size}.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "version": 1,
                        "consul": agent.config_section(),
                        "targets": [
                            {
                                "namespace": namespace,
                                "service": name,
                                "manage_service": False,
                                "ports": [{"name": "http", "port": 80}],
                                "sources": [{"type": "consul", "service": name}],
                            }
                            for name in names
                        ],
                    }
                )
            )
            expected = size * INSTANCES + (BIG if largest else 0)
            metrics_address = f"127.0.0.1:{free_port()}"
            print("starting syncd ...", flush=True)
            started = time.monotonic()
            log = workdir / f"daemon-{size}.log"
            daemon = start_syncd(
                config,
                apiserver.syncd_kubeconfig,
                log,
                "--metrics-address",
                metrics_address,
                *extra,
            )
            most_connections = 0

            def synced(address=metrics_address, want=expected) -> bool:
                try:
                    text = scrape(address)
                except OSError:
                    return False
                return metric_in(text, "syncd_target_backends", ready="true") >= want

            while not synced():
                assert daemon.poll() is None, f"syncd exited: see {log.name}"
                most_connections = max(most_connections, connections_to(daemon.pid, consul_port))
                if time.monotonic() - started > 1800:
                    raise SystemExit("not synced after 30 minutes")
                time.sleep(0.2 if size < 1000 else 1.0)
            cold = time.monotonic() - started
            cold_peak, cold_rss = peak_rss_mib(daemon.pid), rss_mib(daemon.pid)
            row = Row(f"{size:,}" + (f" + one of {BIG:,} instances" if largest else ""))
            row.cells["cold sync"] = f"{cold:.1f} s"
            row.cells["RSS at sync (peak so far)"] = f"{cold_rss:.0f} ({cold_peak:.0f}) MiB"
            print(f"cold sync {cold:.1f} s; flips ...", flush=True)

            watch = SliceWatch(admin, namespace)

            def memory(phase: str, pid: int = daemon.pid) -> None:
                """RSS now and the peak so far, in the log: which phase sets the peak."""
                print(
                    f"  after {phase}: RSS {rss_mib(pid):.0f} MiB, peak {peak_rss_mib(pid):.0f}",
                    flush=True,
                )

            memory("the cold sync")
            window = AuditWindow(apiserver).open()
            latencies = flips(catalog, watch, services, args.flips, args.gap, rng)
            memory("the flips")
            window.close()
            writes = sum(
                n
                for key, n in window.requests.items()
                if key.split()[0] in ("create", "update", "patch", "delete") and "events" not in key
            )
            row.cells["flip p50 / p99"] = (
                f"{percentile(latencies, 0.5):.0f} / {percentile(latencies, 0.99):.0f} ms"
            )
            row.cells["writes per flip"] = f"{writes / len(latencies):.2f}"
            if largest:
                window = AuditWindow(apiserver).open()
                big = flips(catalog, watch, [f"{prefix}-big"], args.flips, args.gap, rng)
                window.close()
                memory("the big service's flips")
                big_writes = sum(
                    n
                    for key, n in window.requests.items()
                    if key.split()[0] in ("create", "update", "patch", "delete")
                    and "events" not in key
                )
                big_row = Row(f"the {BIG:,}-instance service (in the {size:,} run)")
                big_row.cells["flip p50 / p99"] = (
                    f"{percentile(big, 0.5):.0f} / {percentile(big, 0.99):.0f} ms"
                )
                big_row.cells["writes per flip"] = f"{big_writes / len(big):.2f}"
            print("registrations, moves, removals without a check change ...", flush=True)
            changes = registry_changes(catalog, watch, services, args.arrivals, rng)
            waits = [w for kind in changes.values() for w in kind]
            row.cells["registration, move, removal (no check change): p50 / p99 / max"] = (
                f"{percentile(waits, 0.5):.2f} / {percentile(waits, 0.99):.2f} / {max(waits):.2f} s"
            )
            memory("the registrations, moves and removals")
            watch.stop()
            settle(metrics_address)  # the sweep those registrations started: not idle
            memory("the sweep they started")

            idle = args.soak if largest else args.idle
            print(f"idle for {idle:.0f} s ...", flush=True)
            window = AuditWindow(apiserver).open()
            consul_before = metric(metrics_address, "syncd_source_requests_total")
            cpu_before, rss_before = cpu_seconds(daemon.pid), rss_mib(daemon.pid)
            rss_samples = []
            idle_started = time.monotonic()
            while time.monotonic() - idle_started < idle:
                time.sleep(min(60.0, idle))
                rss_samples.append(rss_mib(daemon.pid))
                most_connections = max(most_connections, connections_to(daemon.pid, consul_port))
            elapsed = time.monotonic() - idle_started
            consul_requests = metric(metrics_address, "syncd_source_requests_total") - consul_before
            cpu = cpu_seconds(daemon.pid) - cpu_before
            window.close()
            minutes = elapsed / 60
            row.cells["peak RSS"] = f"{peak_rss_mib(daemon.pid):.0f} MiB"
            row.cells["threads"] = f"{thread_count(daemon.pid)}"
            row.cells["Consul connections (most)"] = f"{most_connections}"
            row.cells["idle Consul req/min"] = f"{consul_requests / minutes:.2f}"
            row.cells["idle API req/min (writes)"] = (
                f"{window.total / minutes:.2f} ({window.writes})"
            )
            row.cells["idle CPU"] = f"{100 * cpu / elapsed:.2f} %"
            row.cells["idle RSS start -> end (min-max)"] = (
                f"{rss_before:.0f} -> {rss_mib(daemon.pid):.0f} MiB "
                f"({min(rss_samples):.0f}-{max(rss_samples):.0f})"
            )
            stopping = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
            row.cells["SIGTERM"] = f"{(time.monotonic() - stopping) * 1000:.0f} ms"
            daemon = None
            rows.append(row)
            print(f"{row.label}: {row.cells}", flush=True)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        agent.stop()
        apiserver.stop()
        apiserver.cleanup()

    print(f"\nconsul scale, syncd args: {' '.join(extra) or '(defaults)'}")
    columns = list(rows[0].cells) if rows else []
    print("| targets | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    for row in rows:
        print(f"| {row.label} | " + " | ".join(row.cells.get(c, "") for c in columns) + " |")
    if big_row is not None:
        print(
            f"| {big_row.label} | " + " | ".join(big_row.cells.get(c, "") for c in columns) + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
