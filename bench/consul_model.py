"""Benchmark (soak): random Consul operations against real servers, and how long each kind
of change takes to show in the cluster, watched or feed-followed.

The long version of the suite's randomized model test (tests/integration/test_consul_model.py):
a real kube-apiserver + etcd and a real `consul agent -dev`, `syncd run` following one target
per Consul service (plus failover and drain-protected targets) within a small connection
budget, so a few services are watched and the rest feed-followed. A seeded stream of random
operations (harness/consul_model.py) changes Consul; a Kubernetes watch sees every
EndpointSlice change. For every operation that changes what a target must show, the time
from the Consul write until the target shows exactly that is one staleness sample, by kind
of operation and by mode; a sample superseded by a later operation on the same target
before it showed is counted, not timed. After the stream, once the stated bound has passed,
every target must equal the model, and no write may have touched anything outside the config.

Run: `make soak` (three runs of 300 services, 6,000 operations in about 5 minutes each), or
`.venv/bin/python -m bench.consul_model --help`. For the sweep bound at 10,000 services with
the default settings: `--services 10000 --max-connections 32 --operations 300 --pause 0.5
--only register,deregister,move`.
"""

from __future__ import annotations

import argparse
import builtins
import functools
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import yaml

from bench.common import metric, percentile, rss_mib
from harness.consul_agent import ConsulAgent
from harness.consul_model import (
    GUARD_CONFIRM_AFTER,
    ConsulModel,
    Operation,
    TargetSpec,
    mismatch,
)
from harness.kube_apiserver import KubeApiServer, free_port
from harness.syncd_process import start_syncd
from syncd.errors import KubeError
from syncd.kube import Kube, KubeSettings

Readiness = dict[tuple[str, int], bool]


def targets_for(services: list[str], guard: bool) -> list[TargetSpec]:
    """One target per service, then a few drain-protected and failover targets."""
    specs = [TargetSpec(service, (service,), guard=guard) for service in services]
    specs += [
        TargetSpec(f"{s}-guarded", (s,), drain_floor=1, guard=guard)
        for s in services[:: max(1, len(services) // 5)][:5]
    ]
    pairs = list(zip(services[1::2], services[2::2], strict=False))
    step = max(1, len(pairs) // 5)
    specs += [
        TargetSpec(f"failover-{n}", pair, drain_floor=n % 2, guard=guard)
        for n, pair in enumerate(pairs[::step][:5])
    ]
    return specs


class Tracker:
    """What the cluster shows (from a watch) against what the model says, over time."""

    def __init__(self, targets: list[TargetSpec], watched: set[str]):
        self.targets = {t.service: t for t in targets}
        self.watched = watched
        self.lock = threading.Lock()
        self.slices: dict[str, dict[str, Readiness]] = defaultdict(dict)  # service -> slices
        self.pending: dict[str, tuple[str, str, float, Readiness]] = {}
        self.samples: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.superseded: Counter[str] = Counter()

    def live(self, service: str) -> Readiness:
        shown: Readiness = {}
        for readiness in self.slices.get(service, {}).values():
            shown.update(readiness)
        return shown

    def expect(self, model: ConsulModel, operation: Operation, at: float) -> None:
        """After an operation: the targets it concerns must now show the model's answer."""
        touched = set(operation.services)
        for target in self.targets.values():
            tiers = touched.intersection(target.tiers)
            if not tiers:
                continue
            mode = "watched" if sorted(tiers)[0] in self.watched else "feed-followed"
            expectation = model.expect(target)
            with self.lock:
                previous = self.pending.pop(target.service, None)
                if expectation.held:
                    continue  # drain protection / no tier: what shows is checked at the end
                if previous is not None and previous[3] == expectation.endpoints:
                    self.pending[target.service] = previous  # no visible change: keep timing
                    continue
                if previous is not None:
                    self.superseded[previous[0]] += 1
                if self.live(target.service) != expectation.endpoints:
                    self.pending[target.service] = (operation.kind, mode, at, expectation.endpoints)

    def on_slice(self, event: str, obj: dict) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        service = labels.get("kubernetes.io/service-name", "")
        name = (obj.get("metadata") or {}).get("name", "")
        now = time.monotonic()
        with self.lock:
            if event == "DELETED":
                self.slices[service].pop(name, None)
            else:
                self.slices[service][name] = {
                    (endpoint["addresses"][0], port["port"]): bool(
                        (endpoint.get("conditions") or {}).get("ready")
                    )
                    for endpoint in obj.get("endpoints") or ()
                    for port in obj.get("ports") or ()
                }
            pending = self.pending.get(service)
            if pending is not None and self.live(service) == pending[3]:
                kind, mode, at, _ = self.pending.pop(service)
                self.samples[(kind, mode)].append(now - at)


def follow_slices(admin: Kube, namespace: str, tracker: Tracker, stop: threading.Event) -> None:
    version = ""
    while not stop.is_set():
        try:
            if not version:
                items, version = admin.list_with_version("EndpointSlice", namespace)
                for item in items:
                    tracker.on_slice("ADDED", item)
            for event, obj in admin.watch("EndpointSlice", namespace, "", version, 60):
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                tracker.on_slice(event, obj)
                if stop.is_set():
                    return
        except KubeError:
            version = ""
            time.sleep(0.2)


def wrong_targets(model: ConsulModel, tracker: Tracker) -> dict[str, str]:
    wrong = {}
    for target in tracker.targets.values():
        listed = set().union(*(model.listed[tier] for tier in target.tiers))
        with tracker.lock:
            shown = tracker.live(target.service)
        problem = mismatch(model.expect(target), shown, listed)
        if problem:
            wrong[target.service] = problem
    return wrong


def one_run(args: argparse.Namespace, seed: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="syncd-soak-"))
    apiserver = KubeApiServer(workdir / "kube")
    agent = ConsulAgent(workdir / "consul")
    daemon = None
    stop = threading.Event()
    try:
        apiserver.start()
        agent.start()
        admin = Kube.connect(KubeSettings(kubeconfig=str(apiserver.admin_kubeconfig)))
        namespace = f"soak-{uuid.uuid4().hex[:6]}"
        apiserver.apply_deploy_rbac(namespace)
        services = [f"s{n}" for n in range(args.services)]
        model = ConsulModel(agent, services, seed)
        model.populate(2)
        targets = targets_for(services, args.guard)
        readers = max(1, min(4, args.max_connections // 8))
        watched = set(services[: max(0, args.max_connections - readers - 4)])
        config = workdir / "syncd.yaml"
        consul: dict = {"address": agent.address, "max_connections": args.max_connections}
        if args.sweep_rate:
            consul["sweep_rate"] = args.sweep_rate
        config.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "consul": consul,
                    "targets": [t.config(namespace) for t in targets],
                }
            )
        )
        metrics = f"127.0.0.1:{free_port()}"
        daemon = start_syncd(
            config,
            apiserver.syncd_kubeconfig,
            workdir / "daemon.log",
            "--metrics-address",
            metrics,
            "--kube-qps",
            "0",
        )
        tracker = Tracker(targets, watched)
        threading.Thread(
            target=follow_slices, args=(admin, namespace, tracker, stop), daemon=True
        ).start()
        started = time.monotonic()
        while wrong_targets(model, tracker):
            if time.monotonic() - started > 600:
                raise SystemExit("the first sync did not finish within 10 minutes")
            time.sleep(1)
        print(
            f"  first sync of {len(targets)} targets: {time.monotonic() - started:.1f} s",
            flush=True,
        )
        mark = apiserver.audit.mark()
        only = args.only.split(",") if args.only else None
        began = time.monotonic()
        operations = model.run(
            args.operations,
            args.pause,
            on_step=lambda op, at: tracker.expect(model, op, at),
            only=only,
        )
        stream = time.monotonic() - began
        sweep_round = (len(services) - len(watched)) / (args.sweep_rate or 100.0)
        bound = sweep_round + (GUARD_CONFIRM_AFTER if args.guard else 0) + args.margin
        deadline = time.monotonic() + bound
        wrong = wrong_targets(model, tracker)
        while wrong and time.monotonic() < deadline:
            time.sleep(0.5)
            wrong = wrong_targets(model, tracker)
        settled = time.monotonic()
        configured = {t.service for t in targets}
        prefixes = tuple(f"{s}-" for s in configured)
        outside = [
            w
            for w in apiserver.audit.writes_since(mark)
            if w.namespace != namespace
            or (
                w.resource not in ("events",)
                and not (w.name in ("", *configured) or w.name.startswith(prefixes))
            )
        ]
        return {
            "seed": seed,
            "operations": Counter(op.kind for op in operations),
            "stream": stream,
            "samples": dict(tracker.samples),
            "superseded": tracker.superseded,
            "unfinished": len(tracker.pending),
            "wrong": wrong,
            "bound": bound,
            "settle": settled - (began + stream),
            "outside": outside,
            "rss": rss_mib(daemon.pid),
            "reads": metric(metrics, "syncd_consul_reads_total"),
        }
    finally:
        stop.set()
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=15)
        agent.stop()
        apiserver.stop()
        apiserver.cleanup()


def report(result: dict) -> bool:
    print = functools.partial(builtins.print, flush=True)
    samples: dict[tuple[str, str], list[float]] = result["samples"]
    applied = sum(len(v) for v in samples.values())
    print(
        f"  seed {result['seed']}: {sum(result['operations'].values())} operations in "
        f"{result['stream']:.0f} s, {applied} changes applied and timed, "
        f"{sum(result['superseded'].values())} superseded before they showed, "
        f"{result['unfinished']} pending at the end; {result['reads']:.0f} Consul reads; "
        f"RSS {result['rss']:.0f} MiB"
    )
    print(f"  {'change':22} {'mode':14} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>9}")
    for (kind, mode), values in sorted(samples.items()):
        print(
            f"  {kind:22} {mode:14} {len(values):5d} {percentile(values, 0.5) * 1000:8.0f} "
            f"{percentile(values, 0.99) * 1000:8.0f} {max(values) * 1000:9.0f}"
        )
    for mode in ("watched", "feed-followed"):
        values = [v for (_k, m), vs in samples.items() if m == mode for v in vs]
        if values:
            print(
                f"  {'all':22} {mode:14} {len(values):5d} {percentile(values, 0.5) * 1000:8.0f} "
                f"{percentile(values, 0.99) * 1000:8.0f} {max(values) * 1000:9.0f}"
            )
    ok = not result["wrong"] and not result["outside"]
    print(
        f"  after the stream: {len(result['wrong'])} targets wrong after the bound "
        f"({result['bound']:.0f} s; all equal after {result['settle']:.1f} s); "
        f"{len(result['outside'])} writes outside the config -> {'OK' if ok else 'FAILED'}"
    )
    if result["wrong"]:
        print(f"  wrong: {dict(list(result['wrong'].items())[:10])}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="consecutive runs (new seeds)")
    parser.add_argument("--services", type=int, default=300)
    parser.add_argument("--operations", type=int, default=6000)
    parser.add_argument("--pause", type=float, default=0.05, help="mean seconds between them")
    parser.add_argument("--max-connections", type=int, default=10)
    parser.add_argument("--sweep-rate", type=float, default=0.0, help="default: syncd's (100)")
    parser.add_argument("--only", default="", help="comma-separated operation kinds")
    parser.add_argument("--margin", type=float, default=30.0, help="seconds past the bound")
    parser.add_argument("--seed", type=int, default=0, help="the first run's seed (random)")
    parser.add_argument(
        "--guard",
        action="store_true",
        help="keep the removal guard on (a removal of more than half the backends then waits "
        f"{GUARD_CONFIRM_AFTER:g} s, which the timings include); off by default: the timings "
        "are propagation",
    )
    args = parser.parse_args()
    seeds = [args.seed or random.randrange(2**32)]
    seeds += [random.randrange(2**32) for _ in range(args.runs - 1)]
    ok = True
    for number, seed in enumerate(seeds, 1):
        print(
            f"run {number}/{len(seeds)}: {args.services} services, budget "
            f"{args.max_connections}, {args.operations} operations, seed {seed}",
            flush=True,
        )
        ok &= report(one_run(args, seed))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
