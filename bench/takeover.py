"""Benchmark: leader takeover after SIGKILL, as a distribution.

Two replicas of `syncd run --leader-elect` against a real kube-apiserver + etcd; the leader
is killed (SIGKILL: the Lease is not released and must run out), a change is made at once,
and the time until the standby has applied it (seen by a Kubernetes watch of the slice) is
one sample. Repeated `--runs` times (default 10), each with fresh replicas.

With client-go's timings (lease 15 s, renew deadline 10 s, retry 2 s with jitter up to 1.2)
a takeover is expected between about 13 s (the leader renewed just before it was killed,
and the standby happened to look right after the lease ran out) and about 20 s.
Run: `make bench-takeover`.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from kubernetes import client as k8s

from bench.common import percentile
from harness.helpers import endpoint_pairs, slices_of, wait_for
from harness.kube_apiserver import KubeApiServer
from harness.syncd_process import start_syncd
from syncd.kube import Kube, KubeSettings


def replica(apiserver: KubeApiServer, config: Path, log: Path, owner: str) -> subprocess.Popen:
    return start_syncd(
        config,
        apiserver.syncd_kubeconfig,
        log,
        "--owner-id",
        owner,
        "--leader-elect",
        "--lease-namespace",
        "syncd",
        "--lease-name",
        f"takeover-{owner}",
        "--log-level",
        "info",
    )


def one_takeover(apiserver: KubeApiServer, admin: Kube, workdir: Path, run: int) -> float:
    """Two fresh replicas; kill the leader, change the backends: seconds until applied."""
    namespace = f"takeover-{uuid.uuid4().hex[:6]}"
    api = apiserver.admin_client()
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    api.close()
    backends = workdir / f"{namespace}.backends.yaml"
    backends.write_text(yaml.safe_dump(["198.51.100.1:8080"]))
    config = workdir / f"{namespace}.yaml"
    target = {
        "namespace": namespace,
        "service": "ha",
        "ports": [{"name": "http", "port": 80}],
        "sources": [{"type": "static", "file": str(backends)}],
        "guards": {"max_removal_fraction": 1},
    }
    config.write_text(yaml.safe_dump({"version": 1, "targets": [target]}))
    first, second = (workdir / f"{namespace}.{n}.log" for n in range(2))
    leader = replica(apiserver, config, first, namespace)
    wait_for(lambda: "became the leader" in first.read_text(), "a leader", timeout=60)
    standby = replica(apiserver, config, second, namespace)
    try:
        wait_for(lambda: "standing by until" in second.read_text(), "a standby", timeout=60)
        wait_for(lambda: slices_of(admin, namespace, "ha"), "the slice", timeout=30)
        time.sleep(1 + run % 3 * 0.7)  # kill at varied points of the renewal cycle
        leader.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        backends.write_text(yaml.safe_dump(["198.51.100.2:8080"]))
        wait_for(
            lambda: endpoint_pairs(slices_of(admin, namespace, "ha")) == {("198.51.100.2", 8080)},
            "the takeover",
            timeout=60,
            interval=0.02,
        )
        return time.monotonic() - killed
    finally:
        for process in (leader, standby):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="syncd-takeover-"))
    apiserver = KubeApiServer(workdir / "kube")
    samples: list[float] = []
    try:
        apiserver.start()
        apiserver.apply_deploy_rbac()
        admin = Kube.connect(KubeSettings(kubeconfig=str(apiserver.admin_kubeconfig)))
        for run in range(args.runs):
            samples.append(one_takeover(apiserver, admin, workdir, run))
            print(f"  run {run + 1}: change applied {samples[-1]:.1f} s after SIGKILL", flush=True)
    finally:
        apiserver.stop()
        apiserver.cleanup()
    print(
        f"takeover after SIGKILL ({len(samples)} runs): min {min(samples):.1f} s, median "
        f"{statistics.median(samples):.1f} s, p90 {percentile(samples, 0.9):.1f} s, "
        f"max {max(samples):.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
