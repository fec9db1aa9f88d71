"""`make bench-faults`: the network-fault matrix with its timings.

Real servers (kube-apiserver + etcd, Consul over HTTP and over HTTPS, where syncd speaks
HTTP/2, Toxiproxy between them and syncd); for each
fault, a fresh daemon following five Consul services (harness/faults.py): converged;
fault injected; a registration 5 s into it; healed; converged again. Reported per fault:

- detected: seconds from the injection until the daemon said so while the fault lasted
  (a failed API request counted by syncd_kube_request_failures_total, or a stale target);
  "-" when the fault was too short or mild to notice (latency), or not looked for;
- converged: seconds from healing until every target matched Consul (the issue's bound:
  15 s);
- Consul requests from healing to convergence (one read per service, not a storm), and
  syncd's API writes from the injection to convergence (1: the registration's slice);
- violations of what must hold throughout (an unlisted endpoint, an emptied Service, a
  dead daemon, a /readyz that did not answer).

Usage: python -m bench.faults [--repeat N] [--only NAME[,NAME...]]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client as k8s

from harness.consul_agent import ConsulAgent
from harness.faults import FaultResult, FaultWorld
from harness.kube_apiserver import KubeApiServer
from harness.toxiproxy import Toxiproxy
from syncd.kube import Kube, KubeSettings


@dataclass(frozen=True)
class Fault:
    name: str
    duration: float
    run: Callable[[FaultWorld, float], FaultResult]
    tls: bool = False  # Consul over HTTPS, where syncd speaks HTTP/2


def _api(kind: str, **options: float) -> Callable[[FaultWorld, float], FaultResult]:
    def run(world: FaultWorld, duration: float) -> FaultResult:
        proxy = world.api_proxy
        failures = world.api_failures()
        return world.run_fault(
            f"api {kind}",
            lambda: getattr(proxy, kind)(**options),
            proxy.heal,
            duration,
            detected=lambda: world.api_failures() > failures,
        )

    return run


def _consul(kind: str) -> Callable[[FaultWorld, float], FaultResult]:
    def run(world: FaultWorld, duration: float) -> FaultResult:
        proxy = world.consul_proxy
        return world.run_fault(
            f"consul {kind}",
            getattr(proxy, kind),
            proxy.heal,
            duration,
            detected=lambda: world.stale_targets() > 0,
        )

    return run


def _api_restart(world: FaultWorld, duration: float) -> FaultResult:
    server = world.apiserver
    failures = world.api_failures()
    return world.run_fault(
        "api server restart",
        server.stop_apiserver,
        server.start_apiserver,
        duration,
        detected=lambda: world.api_failures() > failures,
    )


FAULTS = (
    Fault("api stall", 40, _api("stall")),
    Fault("api reset", 20, _api("reset")),
    Fault("api latency", 30, _api("delay", seconds=2.0)),
    Fault("api restart", 10, _api_restart),
    Fault("consul stall", 40, _consul("stall")),
    Fault("consul reset", 20, _consul("reset")),
    Fault("consul stall (HTTP/2)", 40, _consul("stall"), tls=True),
    Fault("consul reset (HTTP/2)", 20, _consul("reset"), tls=True),
)


def _fmt(values: list[float | None]) -> str:
    seen = [v for v in values if v is not None]
    if not seen:
        return "-"
    if len(seen) == 1:
        return f"{seen[0]:.1f}"
    return f"{min(seen):.1f} / {statistics.median(seen):.1f} / {max(seen):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each fault")
    parser.add_argument("--only", default="", help="comma-separated fault names")
    args = parser.parse_args()
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    faults = [f for f in FAULTS if not wanted or f.name in wanted]
    results: dict[str, list[FaultResult]] = {f.name: [] for f in faults}
    with (
        tempfile.TemporaryDirectory(prefix="syncd-faults-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        print("starting kube-apiserver, etcd, consul and toxiproxy ...", flush=True)
        server = KubeApiServer(work / "apiserver")
        stack.callback(server.stop)
        server.start()
        server.apply_deploy_rbac()
        agents = {}
        for tls in sorted({fault.tls for fault in faults}):
            agent = ConsulAgent(work / ("consul-tls" if tls else "consul"), tls=tls)
            stack.callback(agent.stop)
            agent.start()
            agents[tls] = agent
        proxy = Toxiproxy(work / "toxiproxy")
        stack.callback(proxy.stop)
        proxy.start()
        admin = Kube.connect(KubeSettings(kubeconfig=str(server.admin_kubeconfig)))
        core = k8s.CoreV1Api(server.admin_client())
        for fault in faults:
            for run in range(args.repeat):
                namespace = f"f-{uuid.uuid4().hex[:10]}"
                core.create_namespace({"metadata": {"name": namespace}})
                where = work / namespace
                where.mkdir()
                world = FaultWorld(server, agents[fault.tls], proxy, admin, namespace, where)
                try:
                    world.start()
                    result = fault.run(world, fault.duration)
                finally:
                    world.stop()
                results[fault.name].append(result)
                print(f"{fault.name} #{run + 1}: {result}", flush=True)
    print()
    print(
        "| fault | for | detected after (s) | converged after healing (s) "
        "| Consul requests in recovery | API writes | violations |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for fault in faults:
        runs = results[fault.name]
        violations = sorted({v for r in runs for v in r.violations})
        print(
            f"| {fault.name} | {fault.duration:g} s | {_fmt([r.detected for r in runs])} "
            f"| {_fmt([r.converged for r in runs])} "
            f"| {_fmt([float(r.consul_requests) for r in runs])} "
            f"| {_fmt([float(r.writes) for r in runs])} | {'; '.join(violations) or 'none'} |"
        )
    if args.repeat > 1:
        print("\n(min / median / max over the runs)")


if __name__ == "__main__":
    main()
