"""Benchmark: registry event -> the first client request served by the new backend.

Real servers end to end: Consul (the registry), kube-apiserver + etcd, syncd as a daemon,
and a real kube-proxy (nftables mode) in a node namespace, with HTTP backends and a client
in namespaces of their own (harness/dataplane.py). A client in its namespace sends
a new request every few milliseconds and timestamps each answer (CLOCK_MONOTONIC is the
same clock in every namespace), so the latency is measured where users see it:

- plain add: a new instance registers in Consul -> the first request it answers;
- failover: the primary tier's only instance turns critical -> the first request the
  secondary tier answers (then the primary recovers and traffic fails back).

Prints p50/p99/max over --rounds rounds (default 20) of each. Stops by itself and removes
everything it created. Run: `make bench-dataplane`.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

from bench.common import percentile
from harness.consul_agent import ConsulAgent
from harness.dataplane import DataPlane, cluster_ip
from harness.kube_apiserver import REPO, KubeApiServer
from syncd.kube import Kube, KubeSettings

# Runs in the client namespace: one request every `gap` seconds, forever; prints
# "<monotonic time> <answer>" per request.
_CLIENT = """
import socket, sys, time
host, port, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
while True:
    sent = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        answer = data.split(b"\\r\\n\\r\\n", 1)[-1].decode() or "empty"
    except OSError as exc:
        answer = "error"
    print(f"{time.monotonic():.6f} {answer}", flush=True)
    time.sleep(max(0.0, gap - (time.monotonic() - sent)))
"""


class Client:
    """A client in a namespace of the data plane; answers arrive on a queue."""

    def __init__(self, plane: DataPlane, host: str, gap: float = 0.005):
        self.answers: queue.Queue[tuple[float, str]] = queue.Queue()
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", plane.nodes[0].client_namespace, sys.executable, "-c",
             _CLIENT, host, "80", str(gap)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            stamp, _, answer = line.strip().partition(" ")
            self.answers.put((float(stamp), answer))

    def first(self, answer: str, after: float, timeout: float = 30.0) -> float:
        """When `answer` was first received after monotonic time `after`."""
        deadline = time.monotonic() + timeout
        while True:
            stamp, seen = self.answers.get(timeout=max(0.01, deadline - time.monotonic()))
            if stamp >= after and seen == answer:
                return stamp

    def only(self, answers: set[str], timeout: float = 30.0, quiet: float = 0.3) -> None:
        """Wait until nothing but `answers` has been received for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        since = time.monotonic()
        while time.monotonic() < deadline:
            stamp, seen = self.answers.get(timeout=5)
            if seen not in answers:
                since = stamp
            elif stamp - since >= quiet:
                return
        raise SystemExit(f"traffic did not settle on {answers}")

    def stop(self) -> None:
        self.process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="syncd-dataplane-"))
    apiserver = KubeApiServer(workdir / "kube")
    agent = ConsulAgent(workdir / "consul")
    plane = daemon = client = None
    adds: list[float] = []
    failovers: list[float] = []
    try:
        print("starting kube-apiserver, etcd, consul and a kube-proxy node ...", flush=True)
        apiserver.start()
        agent.start()
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        apiserver.apply_deploy_rbac(namespace)
        plane = DataPlane(apiserver, workdir / "plane", (None,)).create()
        admin = Kube.connect(KubeSettings(kubeconfig=str(apiserver.admin_kubeconfig)))
        first, primary, fallback = "198.51.100.10", "198.51.100.11", "198.51.100.12"
        for address in (first, primary, fallback):
            plane.serve(address, 8080)
        agent.register("add-0", "grows", first, 8080)
        agent.register("primary", "primary", primary, 8080)
        agent.register("fallback", "fallback", fallback, 8080)
        config = workdir / "syncd.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "consul": {"address": agent.address},
                    "targets": [
                        _target(namespace, "grows", [{"type": "consul", "service": "grows"}]),
                        _target(
                            namespace,
                            "tiers",
                            [
                                {"type": "consul", "service": "primary"},
                                {"type": "consul", "service": "fallback"},
                            ],
                            failover={"failback_after": 1},
                        ),
                    ],
                }
            )
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "--config", str(config), "--kubeconfig",
             str(apiserver.syncd_kubeconfig)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=(workdir / "daemon.log").open("w"),
        )  # fmt: skip
        for service in ("grows", "tiers"):
            _wait(lambda s=service: admin.get("Service", namespace, s), f"Service {service}")

        print(f"plain add: {args.rounds} rounds ...", flush=True)
        client = Client(plane, cluster_ip(admin, namespace, "grows"))
        client.only({f"{first}:8080"})
        for n in range(1, args.rounds + 1):
            address = f"198.51.100.{20 + n}"
            plane.serve(address, 8080)
            event = time.monotonic()
            agent.register(f"add-{n}", "grows", address, 8080)
            adds.append(client.first(f"{address}:8080", event) - event)
            agent.deregister(f"add-{n}")
            client.only({f"{first}:8080"})
            plane.stop_serving(address, 8080)
        client.stop()

        print(f"failover: {args.rounds} rounds ...", flush=True)
        client = Client(plane, cluster_ip(admin, namespace, "tiers"))
        client.only({f"{primary}:8080"})
        for _ in range(args.rounds):
            event = time.monotonic()
            agent.set_status("primary", "critical")
            failovers.append(client.first(f"{fallback}:8080", event) - event)
            agent.set_status("primary", "passing")
            client.only({f"{primary}:8080"})  # failback after failback_after (1 s)
    finally:
        if client is not None:
            client.stop()
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=10)
        if plane is not None:
            plane.remove()
        agent.stop()
        apiserver.stop()
        apiserver.cleanup()

    print()
    print("registry event -> first client request served by the new backend (kube-proxy "
          "nftables, default 1 s min-sync-period):")  # fmt: skip
    for name, values in (("plain add", adds), ("failover", failovers)):
        ms = [v * 1000 for v in values]
        print(
            f"  {name:<10} p50 {percentile(ms, 0.5):6.0f} ms   p99 {percentile(ms, 0.99):6.0f} ms"
            f"   max {max(ms):6.0f} ms   ({len(ms)} rounds)"
        )
    return 0


def _target(namespace: str, service: str, sources: list, **extra) -> dict:
    return {
        "namespace": namespace,
        "service": service,
        "ports": [{"name": "http", "port": 80}],
        "sources": sources,
        **extra,
    }


def _wait(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
