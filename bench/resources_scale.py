"""Benchmark: ExternalService resources at scale, against a real kube-apiserver + etcd.

Default size: 1,000 resources of 10 static backends in 10 namespaces, the CRD and RBAC
from deploy/components/resources, syncd run with a config of no targets and --resources.
Measures, with request counts from the API server's audit log (syncd's user only):

1. cold `run --once --resources`: wall time, requests by verb, writes (objects and status);
2. converged `run --once --resources`: writes (0: no object, no status);
3. the daemon: start to converged; one resource edited (one object write, one status write);
4. the daemon idle for --idle seconds (default 120 at --resync-interval 60: two resync
   rounds): writes (status included), requests per minute, CPU share, RSS.

It stops by itself and removes what it started. Run: `make bench-resources`, or
`.venv/bin/python -m bench.resources_scale --resources 100 --idle 60` for a quick look.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    AuditWindow,
    cpu_seconds,
    measured_once,
    metric,
    rss_mib,
    serves_address,
    wait_until,
)
from harness.kube_apiserver import REPO, KubeApiServer, free_port
from syncd.kube import Kube, KubeSettings

FIRST = ipaddress.ip_address("172.16.0.0")


def resource(namespace: str, index: int, backends: int) -> dict:
    return {
        "apiVersion": "syncd.io/v1alpha1",
        "kind": "ExternalService",
        "metadata": {"name": f"svc-{index}", "namespace": namespace},
        "spec": {
            "ports": [{"name": "http", "port": 80}],
            "sources": [
                {
                    "type": "static",
                    "backends": [f"{FIRST + index * backends + n}:8080" for n in range(backends)],
                }
            ],
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--idle", type=float, default=120.0, help="idle seconds (default 120)")
    parser.add_argument("--resync-interval", type=float, default=60.0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="syncd-resources-"))
    apiserver = KubeApiServer(workdir / "kube", service_cidr="10.96.0.0/12")
    daemon = None
    rows: list[tuple[str, str]] = []
    try:
        print("starting kube-apiserver and etcd ...", flush=True)
        apiserver.start()
        namespaces = [f"team-{n}" for n in range(args.namespaces)]
        apiserver.apply_deploy_rbac(*namespaces)
        admin = Kube.connect(KubeSettings(kubeconfig=str(apiserver.admin_kubeconfig), qps=0))
        apiserver.install_resources_component()
        print(f"creating {args.resources:,} ExternalServices ...", flush=True)
        for index in range(args.resources):
            admin.create(resource(namespaces[index % len(namespaces)], index, args.backends))
        config = workdir / "syncd.yaml"
        config.write_text("version: 1\nowner_id: bench\n")
        syncd = [sys.executable, "-m", "syncd", "run", "--config", str(config), "--resources"]
        syncd += ["--kubeconfig", str(apiserver.syncd_kubeconfig), "--kube-qps", "0"]

        def once_run(label: str) -> None:
            log = workdir / f"once-{label}.log"
            rows.extend(measured_once(apiserver, [*syncd, "--once"], log, f"{label}, --resources"))

        once_run("cold")
        once_run("converged")

        print("daemon: starting ...", flush=True)
        address = f"127.0.0.1:{free_port()}"
        log = (workdir / "daemon.log").open("w")
        started = time.monotonic()
        window = AuditWindow(apiserver).open()
        daemon = subprocess.Popen(
            [*syncd, "--metrics-address", address, "--resync-interval", str(args.resync_interval)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: metric(address, "syncd_reconciles_total") >= args.resources, 600, "up")
        wait_until(lambda: metric(address, "syncd_workqueue_depth") == 0, 600, "the queue")
        rows.append(("daemon: start to converged", f"{time.monotonic() - started:.1f} s"))
        time.sleep(2)
        window.close()
        rows.append(("daemon: start-up writes", f"{window.writes} ({dict(window.requests)})"))

        print("daemon: one resource edited ...", flush=True)
        index = args.resources - 1
        namespace, name = namespaces[index % len(namespaces)], f"svc-{index}"
        moved = resource(namespace, index, args.backends)["spec"]
        moved["sources"][0]["backends"][0] = f"{FIRST + 16_000_000 - 1}:8080"
        window = AuditWindow(apiserver).open()
        edited = time.monotonic()
        admin.merge_patch("ExternalService", namespace, name, {"spec": moved})
        wait_until(
            lambda: serves_address(admin, namespace, name, str(FIRST + 16_000_000 - 1)),
            60,
            "the edit",
        )
        seen = time.monotonic() - edited
        time.sleep(3)  # the status write and any echo are counted too
        window.close()
        rows.append(("daemon: one edit, kubectl -> slice", f"{seen * 1000:.0f} ms"))
        rows.append(("daemon: one edit, writes", f"{window.writes} ({dict(window.requests)})"))

        print(f"daemon: idle for {args.idle:.0f} s ...", flush=True)
        window = AuditWindow(apiserver).open()
        cpu_before, rss_before = cpu_seconds(daemon.pid), rss_mib(daemon.pid)
        idle_started = time.monotonic()
        time.sleep(args.idle)
        idle = time.monotonic() - idle_started
        cpu = cpu_seconds(daemon.pid) - cpu_before
        window.close()
        rows.append(("daemon idle: writes (status included)", f"{window.writes}"))
        rows.append(
            (
                "daemon idle: API requests/min",
                f"{window.total / (idle / 60):.2f} ({dict(window.requests)})",
            )
        )
        rows.append(("daemon idle: CPU", f"{100 * cpu / idle:.2f} % of a core"))
        rows.append(
            ("daemon idle: RSS start -> end", f"{rss_before:.0f} -> {rss_mib(daemon.pid):.0f} MiB")
        )
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        daemon = None
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        apiserver.stop()
        apiserver.cleanup()

    width = max(len(name) for name, _ in rows)
    print(
        f"\nresources: {args.resources:,} ExternalServices x {args.backends} backends, "
        f"resync every {args.resync_interval:.0f} s"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
