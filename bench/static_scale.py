"""Benchmark: syncd at scale with static targets, against a real kube-apiserver + etcd.

Default size: 10,000 targets x 10 backends (100,000 endpoints) in 10 namespaces. Measures,
with request counts from the API server's audit log (syncd's user only):

1. cold `run --once` (everything created): wall time, peak RSS, requests by verb;
2. converged `run --once`: wall time, writes (0), list requests (per kind, not per target);
3. the daemon at that size: start-up to converged, then one backend change in one target
   (a backends file): writes and reconciles it causes, and how long it takes;
4. the daemon idle for --idle seconds (default 10 minutes: two full resync rounds at
   --resync-interval 300): API requests and writes, CPU share, RSS at the start and the
   end, reconciles per 10 s (a burst would show as a peak well above the mean);
5. SIGTERM: time to exit.

It stops by itself and removes what it started. Run: `make bench-scale`, or
`.venv/bin/python -m bench.static_scale --targets 1000 --idle 60` for a quick look.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import (
    AuditWindow,
    cpu_seconds,
    measured_once,
    metric,
    metric_in,
    rss_mib,
    scrape,
    serves_address,
    thread_count,
    wait_until,
)
from harness.kube_apiserver import REPO, KubeApiServer, free_port
from syncd.kube import Kube, KubeSettings

FIRST = ipaddress.ip_address("172.16.0.0")
SAMPLE_SECONDS = 30  # how often the idle phase reads /metrics (as a Prometheus would)


def backends(index: int, count: int) -> list[str]:
    return [f"{FIRST + index * count + n}:8080" for n in range(count)]


def write_config(path: Path, targets: int, per_target: int, namespaces: list[str]) -> Path:
    """N targets with inline backends, and the last one reading a backends file."""
    items = []
    for index in range(targets):
        source: dict = {"type": "static", "backends": backends(index, per_target)}
        if index == targets - 1:
            (path.parent / "changing.yaml").write_text(yaml.safe_dump(backends(index, per_target)))
            source = {"type": "static", "file": "changing.yaml"}
        items.append(
            {
                "namespace": namespaces[index % len(namespaces)],
                "service": f"svc-{index}",
                "ports": [{"name": "http", "port": 80}],
                "sources": [source],
            }
        )
    path.write_text(yaml.safe_dump({"version": 1, "targets": items}, sort_keys=False))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--idle", type=float, default=600.0, help="idle seconds (default 600)")
    parser.add_argument(
        "--syncd-args",
        default="",
        help="extra arguments for every syncd run, e.g. '--kube-qps 500 --kube-burst 1000'",
    )
    args = parser.parse_args()
    extra = args.syncd_args.split()

    workdir = Path(tempfile.mkdtemp(prefix="syncd-scale-"))
    apiserver = KubeApiServer(workdir / "kube", service_cidr="10.96.0.0/12")  # 1M ClusterIPs
    daemon = None
    rows: list[tuple[str, str]] = []
    try:
        print("starting kube-apiserver and etcd ...", flush=True)
        apiserver.start()
        namespaces = [f"scale-{n}" for n in range(args.namespaces)]
        apiserver.apply_deploy_rbac(*namespaces)
        admin = Kube.connect(KubeSettings(kubeconfig=str(apiserver.admin_kubeconfig), qps=0))
        config = write_config(workdir / "syncd.yaml", args.targets, args.backends, namespaces)
        size = f"{args.targets:,} targets x {args.backends} backends"
        print(f"config: {size} ({config.stat().st_size / 1e6:.1f} MB)", flush=True)
        syncd = [sys.executable, "-m", "syncd", "run", "--config", str(config)]
        syncd += ["--kubeconfig", str(apiserver.syncd_kubeconfig), *extra]
        once = [*syncd, "--once"]

        api_pid = apiserver.processes[-1].pid  # etcd first, then kube-apiserver

        def once_run(label: str) -> None:
            log = workdir / f"once-{label}.log"
            rows.extend(measured_once(apiserver, once, log, label, api_pid))

        once_run("cold")
        once_run("converged")
        print("deleting every slice (the Services stay) ...", flush=True)
        for namespace in namespaces:
            admin.delete_collection(
                "EndpointSlice", namespace, "endpointslice.kubernetes.io/managed-by=syncd"
            )
        wait_until(
            lambda: (
                not admin.list(
                    "EndpointSlice", None, "endpointslice.kubernetes.io/managed-by=syncd"
                )
            ),
            120,
            "the slices to go",
        )
        once_run("slices only")

        print("daemon: starting ...", flush=True)
        metrics_address = f"127.0.0.1:{free_port()}"
        log = (workdir / "daemon.log").open("w")
        started = time.monotonic()
        daemon = subprocess.Popen(
            [*syncd, "--metrics-address", metrics_address, "--log-level", "info"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        window = AuditWindow(apiserver).open()
        wait_until(lambda: _started_reconciles(metrics_address) >= args.targets, 600, "start-up")
        wait_until(lambda: metric(metrics_address, "syncd_workqueue_depth") == 0, 600, "queue")
        rows.append(("daemon: start to converged", f"{time.monotonic() - started:.1f} s"))
        window.close()
        rows.append(("daemon: start-up API requests", f"{window.total} ({dict(window.requests)})"))

        print("daemon: one backend change ...", flush=True)
        changing = workdir / "changing.yaml"
        index = args.targets - 1
        moved = [*backends(index, args.backends)[1:], f"{FIRST + 16_000_000 - 1}:8080"]
        namespace, service = namespaces[index % len(namespaces)], f"svc-{index}"
        before = _reconciles_not_resync(metrics_address)
        window = AuditWindow(apiserver).open()
        changed_at = time.monotonic()
        changing.write_text(yaml.safe_dump(moved))
        wait_until(
            lambda: serves_address(admin, namespace, service, str(FIRST + 16_000_000 - 1)),
            30,
            "the change",
        )
        seen = time.monotonic() - changed_at
        time.sleep(3)  # anything the change causes later (echoes) is counted too
        window.close()
        reconciles = _reconciles_not_resync(metrics_address) - before
        rows.append(
            (
                "daemon: one change, file edit -> slice",
                f"{seen * 1000:.0f} ms (file polled every 1 s)",
            )
        )
        rows.append(
            ("daemon: one change, API writes", f"{window.writes} ({dict(window.requests)})")
        )
        rows.append(("daemon: one change, reconciles (not resync)", f"{reconciles:.0f}"))

        print(f"daemon: idle for {args.idle:.0f} s ...", flush=True)
        window = AuditWindow(apiserver).open()
        cpu_before, rss_before = cpu_seconds(daemon.pid), rss_mib(daemon.pid)
        idle_started = time.monotonic()
        samples = []
        previous = metric(metrics_address, "syncd_reconciles_total")
        scrapes = []
        while time.monotonic() - idle_started < args.idle:
            time.sleep(SAMPLE_SECONDS)
            scrape_started = time.monotonic()
            now = metric(metrics_address, "syncd_reconciles_total")
            scrapes.append(time.monotonic() - scrape_started)
            samples.append(now - previous)
            previous = now
        idle = time.monotonic() - idle_started
        cpu = cpu_seconds(daemon.pid) - cpu_before
        window.close()
        minutes = idle / 60
        rows.append(("daemon idle: API writes", f"{window.writes}"))
        rows.append(
            (
                "daemon idle: API requests/min",
                f"{window.total / minutes:.2f} ({dict(window.requests)})",
            )
        )
        scrape = statistics.mean(scrapes) if scrapes else 0.0
        rows.append(
            (
                "daemon idle: CPU",
                f"{100 * cpu / idle:.2f} % of a core (incl. a /metrics scrape every "
                f"{SAMPLE_SECONDS} s, {scrape * 1000:.0f} ms each)",
            )
        )
        rows.append(
            ("daemon idle: RSS start -> end", f"{rss_before:.0f} -> {rss_mib(daemon.pid):.0f} MiB")
        )
        rows.append(("daemon idle: threads", f"{thread_count(daemon.pid)}"))
        if samples:
            rows.append(
                (
                    f"daemon idle: reconciles per {SAMPLE_SECONDS} s",
                    f"mean {statistics.mean(samples):.1f}, max {max(samples):.0f}, "
                    f"min {min(samples):.0f} (resync spread over 300 s)",
                )
            )

        stopping = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        rows.append(("daemon: SIGTERM to exit", f"{(time.monotonic() - stopping) * 1000:.0f} ms"))
        daemon = None
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        apiserver.stop()
        apiserver.cleanup()

    width = max(len(name) for name, _ in rows)
    print(f"\nstatic scale: {size}, syncd args: {' '.join(extra) or '(defaults)'}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


def _started_reconciles(address: str) -> float:
    return metric(address, "syncd_reconciles_total")


def _reconciles_not_resync(address: str) -> float:
    text = scrape(address)
    return metric_in(text, "syncd_reconciles_total") - metric_in(
        text, "syncd_reconciles_total", trigger="resync"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
