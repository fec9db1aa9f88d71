"""Benchmark: what a feed-followed Consul service costs in memory, and where it goes.

Against a real Consul agent and a real kube-apiserver + etcd, N Consul services of 3
instances each (default 2,000: every one beyond the watch budget is followed by the change
feeds) are synced by the daemon *in this process*, with `tracemalloc` on. Once every
target is in sync and the garbage is collected, the memory allocated since the daemon
started is grouped by the module that allocated it, and divided by N: the cost of one
feed-followed service, broken down (the Consul query state, the sources' snapshots, the
cluster cache's objects, the policy memory ...). RSS before and after says how that
compares with what the process holds.

With `--tls` the agent speaks HTTPS and every service has its own blocking query over
HTTP/2 instead: the cost of a watched service.

It stops by itself and removes what it started. Run: `make bench-consul-memory`, or
`.venv/bin/python -m bench.consul_memory --services 500` for a quick look.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import yaml

from bench.common import rss_mib
from bench.consul_scale import INSTANCES, Catalog, create_services
from harness.consul_agent import ConsulAgent
from harness.kube_apiserver import KubeApiServer
from syncd.config import load_config
from syncd.controller import Controller, DaemonSettings
from syncd.kube import Kube, KubeSettings
from syncd.process_memory import tune_malloc

NAMESPACE = "cmemory"


def group(path: str) -> str:
    """Which part of syncd (or which library) allocated it."""
    if "/syncd/" in path:
        return "syncd/" + path.rsplit("/syncd/", 1)[1]
    for library in ("consul", "requests", "urllib3", "json", "kubernetes", "prometheus_client"):
        if f"/{library}/" in path:
            return library
    return path.rsplit("/", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=2000, help="Consul services (targets)")
    parser.add_argument("--top", type=int, default=14, help="rows of the breakdown")
    parser.add_argument("--lines", type=int, default=0, help="also the N largest source lines")
    parser.add_argument("--frames", type=int, default=1, help="frames kept per allocation")
    parser.add_argument(
        "--tracebacks", type=int, default=6, help="with --frames > 1: the N largest, in full"
    )
    parser.add_argument(
        "--focus",
        default="",
        help="with --frames > 1: these lines' allocations ('syncd/kinds.py:64,...'), by caller",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="a TLS agent: every service its own blocking query over HTTP/2",
    )
    parser.add_argument(
        "--idle-waits",
        type=int,
        default=0,
        help="then stay idle while every blocking query is re-armed N times, and show what grew",
    )
    parser.add_argument(
        "--wait", type=int, default=0, help="consul.wait in seconds (short: re-armed often)"
    )
    parser.add_argument(
        "--allocator",
        action="store_true",
        help="no tracemalloc: RSS and Python's allocator statistics (arenas, free pools)",
    )
    args = parser.parse_args()
    tune_malloc()  # as the daemon's command line does, before any thread starts
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="syncd-consul-memory-"))
    apiserver = KubeApiServer(workdir / "kube", service_cidr="10.96.0.0/12")
    agent = ConsulAgent(workdir / "consul", tls=args.tls)
    stop = threading.Event()
    runner: threading.Thread | None = None
    try:
        print("starting kube-apiserver, etcd and consul ...", flush=True)
        apiserver.start()
        agent.start()
        apiserver.apply_deploy_rbac(NAMESPACE)
        admin = Kube.connect(KubeSettings(kubeconfig=str(apiserver.admin_kubeconfig), qps=0))
        services = [f"m-s{n}" for n in range(args.services)]
        print(f"registering {len(services):,} services and creating their Services ...")
        Catalog(agent, "m", 0).add_services(services, INSTANCES)
        create_services(admin, NAMESPACE, services)
        config_path = workdir / "syncd.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "owner_id": "memory",
                    "consul": agent.config_section() | ({"wait": args.wait} if args.wait else {}),
                    "targets": [
                        {
                            "namespace": NAMESPACE,
                            "service": name,
                            "manage_service": False,
                            "ports": [{"name": "http", "port": 80}],
                            "sources": [{"type": "consul", "service": name}],
                        }
                        for name in services
                    ],
                }
            )
        )
        config = load_config(config_path)
        kube = Kube.connect(KubeSettings(kubeconfig=str(apiserver.syncd_kubeconfig), qps=0), stop)
        gc.collect()
        rss_before = rss_mib_self()
        if not args.allocator:
            tracemalloc.start(args.frames)
        baseline = tracemalloc.take_snapshot() if not args.allocator else None
        controller = Controller(config, kube, "memory", DaemonSettings(), stop=stop)
        runner = threading.Thread(target=controller.run, daemon=True)
        started = time.monotonic()
        runner.start()
        print("syncing ...", flush=True)
        while controller.readiness() != (True, "ok"):
            if time.monotonic() - started > 1800:
                raise SystemExit("not in sync after 30 minutes")
            time.sleep(1.0)
        time.sleep(10.0)  # the feeds' first answers and their catch-up reads
        gc.collect()
        if baseline is None:
            print(f"\nRSS {rss_before:.0f} -> {rss_mib_self():.0f} MiB; Python's allocator:")
            sys._debugmallocstats()
            if args.idle_waits:
                idle = idle_seconds(args.idle_waits, args.wait or 300)
                print(f"\nidle for {idle:.0f} s ...", flush=True)
                time.sleep(idle)
                gc.collect()
                print(f"\nRSS then {rss_mib_self():.0f} MiB; Python's allocator:")
                sys._debugmallocstats()
            return
        snapshot = tracemalloc.take_snapshot()
        rss_after = rss_mib_self()
        by_group: Counter[str] = Counter()
        for stat in snapshot.compare_to(baseline, "filename"):
            by_group[group(stat.traceback[0].filename)] += stat.size_diff
        total = sum(by_group.values())
        n = len(services)
        print(f"\nin sync after {time.monotonic() - started:.0f} s (tracemalloc slows it)")
        print("\n| allocated by | KiB per service | share |\n|---|---|---|")
        for name, size in by_group.most_common(args.top):
            print(f"| {name} | {size / n / 1024:.2f} | {100 * size / total:.0f} % |")
        rest = total - sum(size for _name, size in by_group.most_common(args.top))
        print(f"| everything else | {rest / n / 1024:.2f} | {100 * rest / total:.0f} % |")
        print(f"| **total (Python objects)** | **{total / n / 1024:.2f}** | |")
        if args.lines:
            print("\n| line | KiB per service |\n|---|---|")
            for stat in snapshot.compare_to(baseline, "lineno")[: args.lines]:
                frame = stat.traceback[0]
                where = f"{group(frame.filename)}:{frame.lineno}"
                print(f"| {where} | {stat.size_diff / n / 1024:.2f} |")
        if args.frames > 1:
            for stat in snapshot.compare_to(baseline, "traceback")[: args.tracebacks]:
                print(f"\n{stat.size_diff / n / 1024:.2f} KiB per service allocated at:")
                for frame in stat.traceback.format()[-2 * args.frames :]:
                    print("   ", frame.strip())
        for line in filter(None, args.focus.split(",")):
            focused(snapshot.compare_to(baseline, "traceback"), line, n)
        print(
            f"\nRSS {rss_before:.0f} -> {rss_after:.0f} MiB: "
            f"{(rss_after - rss_before) * 1024 / n:.1f} KiB per service, tracemalloc's own "
            "bookkeeping included"
        )
        if args.idle_waits:
            idle_growth(snapshot, args.idle_waits, args.wait or 300, args.lines or 12, n)
    finally:
        stop.set()
        if runner is not None:
            runner.join(10)  # the daemon first: Consul going away is no news then
        agent.stop()
        apiserver.stop()


def idle_seconds(waits: int, wait: int) -> float:
    """Long enough for every blocking query to be re-armed `waits` times: a wait runs out
    after `wait` s plus Consul's jitter of up to wait/16."""
    return waits * (wait * 17 / 16 + 2)


def idle_growth(synced: tracemalloc.Snapshot, waits: int, wait: int, lines: int, n: int) -> None:
    """What the process gains while idle: every blocking query re-armed `waits` times."""
    idle = idle_seconds(waits, wait)
    rss_synced = rss_mib_self()
    print(f"\nidle for {idle:.0f} s ({waits} waits of {wait} s) ...", flush=True)
    time.sleep(idle)
    gc.collect()
    later = tracemalloc.take_snapshot()
    stats = later.compare_to(synced, "lineno")
    grown = sum(stat.size_diff for stat in stats)
    print(
        f"grew {grown / 1024:.0f} KiB ({grown / n:.0f} B per service) of Python objects; "
        f"RSS {rss_synced:.0f} -> {rss_mib_self():.0f} MiB"
    )
    print("\n| line | KiB grown | objects grown |\n|---|---|---|")
    for stat in stats[:lines]:
        frame = stat.traceback[0]
        print(
            f"| {group(frame.filename)}:{frame.lineno} | {stat.size_diff / 1024:.0f} "
            f"| {stat.count_diff} |"
        )


def focused(stats: list[tracemalloc.StatisticDiff], line: str, n: int) -> None:
    """What is kept of the allocations at `line`, grouped by the callers above it."""
    by_callers: Counter[tuple[str, ...]] = Counter()
    for stat in stats:
        frames = list(reversed(stat.traceback))  # the allocation first
        if frames and f"{group(frames[0].filename)}:{frames[0].lineno}" == line:
            callers = tuple(f"{group(f.filename)}:{f.lineno}" for f in frames[1:])
            by_callers[callers] += stat.size_diff
    print(f"\nkept of what {line} allocated, by its callers (KiB per service):")
    for callers, size in by_callers.most_common(12):
        print(f"  {size / n / 1024:.2f}  " + " <- ".join(callers))


def rss_mib_self() -> float:
    return rss_mib(os.getpid())


if __name__ == "__main__":
    main()
