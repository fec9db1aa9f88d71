"""Benchmark: Consul check flip -> EndpointSlice change, against the real servers.

Starts a real kube-apiserver + etcd and a real Consul agent on loopback (the test harness),
runs `syncd run` as a daemon, flips one instance's check N times and measures, from the
Consul write to the slice change seen by a Kubernetes watch:

- propagation latency p50 / p95 / p99 / max,
- API write calls per change (from the API server's audit log, syncd's user only),

then leaves everything idle and measures API writes and Consul requests per minute and the
daemon's resident memory. Run: `make bench` (or `.venv/bin/python -m bench.consul_latency`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import yaml

from harness.consul_agent import ConsulAgent
from harness.kube_apiserver import KubeApiServer, free_port
from harness.syncd_process import start_syncd
from syncd.errors import KubeError
from syncd.kube import Kube, KubeSettings

SERVICE = "rgw"
FLIPPED = "192.0.2.55"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def metric(address: str, name: str) -> float:
    """Sum of all samples of a counter on syncd's /metrics."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def watch_readiness(kube: Kube, namespace: str, events: queue.Queue, stop: threading.Event):
    """Put (monotonic time, ready state of FLIPPED) for every change of the 8080 slice."""
    selector = f"kubernetes.io/service-name={SERVICE}"
    _items, version = kube.list_with_version("EndpointSlice", None, selector)
    with contextlib.suppress(KubeError):  # the servers stop before this thread does
        _follow(kube, selector, version, namespace, events, stop)


def _follow(kube, selector, version, namespace, events, stop) -> None:
    while not stop.is_set():
        for _kind, obj in kube.watch("EndpointSlice", None, selector, version, timeout_seconds=60):
            seen = time.monotonic()
            version = obj["metadata"]["resourceVersion"]
            if obj["metadata"].get("namespace") != namespace:
                continue
            for endpoint in obj.get("endpoints") or ():
                if endpoint["addresses"][0] == FLIPPED and obj["ports"][0]["port"] == 8080:
                    events.put((seen, endpoint["conditions"]["ready"]))
            if stop.is_set():
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=200)
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=330.0,
        help="idle window (default: %(default)s, longer than one 5-minute blocking query)",
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=0.2,
        help="seconds between a change being seen and the next flip (default: %(default)s); "
        "with 0, each flip lands in the watcher's minimum pause between queries (50 ms)",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    apiserver = KubeApiServer(workdir / "kube")
    agent = ConsulAgent(workdir / "consul")
    daemon = None
    stop = threading.Event()
    try:
        print("starting kube-apiserver, etcd and consul ...", flush=True)
        apiserver.start()
        agent.start()
        admin = Kube.connect(KubeSettings(kubeconfig=str(apiserver.admin_kubeconfig)))
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        apiserver.apply_deploy_rbac(namespace)

        for host in range(50, 56):
            for port in (8080, 8081):
                agent.register(f"rgw-{host}-{port}", SERVICE, f"192.0.2.{host}", port)
        config = workdir / "syncd.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "consul": {"address": agent.address},
                    "targets": [
                        {
                            "namespace": namespace,
                            "service": SERVICE,
                            "ports": [{"name": "http", "port": 80}],
                            "sources": [{"type": "consul", "service": SERVICE}],
                        }
                    ],
                }
            )
        )
        metrics_address = f"127.0.0.1:{free_port()}"
        daemon = start_syncd(
            config,
            apiserver.syncd_kubeconfig,
            workdir / "daemon.log",
            "--metrics-address",
            metrics_address,
        )
        events: queue.Queue = queue.Queue()
        watcher = threading.Thread(
            target=watch_readiness, args=(admin, namespace, events, stop), daemon=True
        )
        watcher.start()
        _wait_ready(events)

        print(f"flipping the check of {FLIPPED}:8080 {args.flips} times ...", flush=True)
        latencies = []
        mark = apiserver.audit.mark()
        ready = True
        for _ in range(args.flips):
            ready = not ready
            time.sleep(args.gap)
            started = time.monotonic()
            agent.set_status("rgw-55-8080", "passing" if ready else "critical")
            while True:
                seen, state = events.get(timeout=10)
                if state is ready:
                    latencies.append((seen - started) * 1000)
                    break
        writes = apiserver.audit.writes_since(mark)

        print(f"idle for {args.idle_seconds:.0f} s ...", flush=True)
        mark = apiserver.audit.mark()
        consul_before = metric(metrics_address, "syncd_source_requests_total")
        time.sleep(args.idle_seconds)
        idle_writes = len(apiserver.audit.writes_since(mark))
        consul_idle = metric(metrics_address, "syncd_source_requests_total") - consul_before
        minutes = args.idle_seconds / 60

        print()
        print(
            f"propagation, Consul write -> EndpointSlice watch event ({args.flips} flips, "
            f"{args.gap * 1000:.0f} ms apart):"
        )
        print(
            f"  p50 {percentile(latencies, 0.50):6.1f} ms   p95 {percentile(latencies, 0.95):6.1f}"
            f" ms   p99 {percentile(latencies, 0.99):6.1f} ms   max {max(latencies):6.1f} ms"
            f"   mean {statistics.mean(latencies):6.1f} ms"
        )
        kinds = sorted({f"{w.verb} {w.resource}" for w in writes})
        print(f"  API writes per change: {len(writes) / args.flips:.2f} ({', '.join(kinds)})")
        print(
            f"idle ({args.idle_seconds:.0f} s): {idle_writes / minutes:.1f} API writes/min, "
            f"{consul_idle / minutes:.1f} Consul requests/min"
        )
        print(f"daemon RSS: {rss_mib(daemon.pid):.1f} MiB")
        return 0
    finally:
        stop.set()
        if daemon and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=10)
        agent.stop()
        apiserver.stop()
        apiserver.cleanup()


def _wait_ready(events: queue.Queue) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if events.get(timeout=1)[1] is True:
                return
        except queue.Empty:
            continue
    raise SystemExit("the daemon did not create the slices within 30 s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
