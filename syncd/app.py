"""The composition root: from parsed arguments and a loaded config to a running syncd.

It connects to the API server, serves metrics, installs the signal handlers, tunes the
process for a long life (malloc arenas, the garbage collector), and builds either the
one-pass run (`syncd.once`) or the daemon (`syncd.controller`) with its leader election.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import threading
import uuid
from pathlib import Path

from syncd.controller import Controller, DaemonSettings
from syncd.errors import KubeConfigError, KubeError
from syncd.http_server import ONE_SHOT, ProcessStatus, serve_metrics
from syncd.kube import Kube, KubeSettings
from syncd.leader import LeaderSettings
from syncd.logs import say
from syncd.model import Config
from syncd.once import OnceSettings, run_once
from syncd.output import ResultPrinter, plural
from syncd.results import TargetResult
from syncd.sink import REMOVED_FROM_CONFIG

EXIT_OK = 0
EXIT_TARGET_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("syncd")


def settle() -> None:
    """What is loaded now lives as long as the process: the garbage collector need not
    scan it for cycles again and again."""
    gc.freeze()


def run(args: argparse.Namespace, config: Config) -> int:
    """`syncd run`: one pass (--once, --dry-run) or the daemon; returns the exit code."""
    stop = threading.Event()
    one_shot = args.once or args.dry_run
    replica = f"{socket.gethostname()}_{uuid.uuid4().hex[:6]}"
    settings = _kube_settings(args, replica, one_shot)
    try:
        kube = Kube.connect(settings, stop)
    except KubeConfigError as exc:
        say(f"syncd: {exc}", stamp=True)
        return EXIT_USAGE
    try:
        try:
            kube.read_path("/version")
        except KubeError as exc:
            say(f"syncd: cannot use the Kubernetes API at {kube.host}: {exc}", stamp=True)
            return EXIT_TARGET_FAILED
        _on_signals(stop)
        if one_shot:
            once = OnceSettings(
                owner_id=args.owner_id,
                dry_run=args.dry_run,
                workers=args.workers,
                namespaces=args.namespaces,
                resources=args.resources,
            )
            if not _served(args.metrics_address, ONE_SHOT):
                return EXIT_USAGE
            # results are diagnostics (stderr, timestamped); a dry run's plan is output
            printer = ResultPrinter(args.dry_run, json=args.log_format == "json")
            return _one_pass(kube, config, once, stop, printer)
        daemon = DaemonSettings(
            resync_interval=args.resync_interval,
            workers=args.workers,
            stuck_after=args.stuck_after,
            namespaces=args.namespaces,
            allow_protected=tuple(args.allow_protected),
            resources=args.resources,
        )
        lease = _lease(args, replica) if args.leader_elect else None
        printer = ResultPrinter(json=args.log_format == "json")
        # A daemon's caches (views, slices, backends) keep the young generation busy:
        # collecting it less often halves the cost of a change to a large target. Not for
        # --once, whose short life is all allocation (its peak memory grew by a tenth).
        gc.set_threshold(50_000, 20, 100)
        controller = Controller(config, kube, args.owner_id, daemon, printer, stop, lease)
        if not _served(args.metrics_address, controller):
            return EXIT_USAGE
        return _daemon(controller, config)
    finally:
        kube.close()


def _kube_settings(args: argparse.Namespace, replica: str, one_shot: bool) -> KubeSettings:
    return KubeSettings(
        kubeconfig=args.kubeconfig,
        context=args.context,
        request_timeout=args.request_timeout,
        qps=args.kube_qps,
        burst=args.kube_burst,
        identity=f"{args.owner_id}; {replica}",  # who wrote, in the audit log
        # A one-shot run retries within a call; the daemon's queue retries the target
        # instead, so a call gives up quickly and an API server that is back is seen at once.
        retry_attempts=5 if one_shot else 3,
        retry_max_backoff=5.0 if one_shot else 1.0,
    )


def _lease(args: argparse.Namespace, replica: str) -> LeaderSettings:
    lease = LeaderSettings(
        namespace=args.lease_namespace or _own_namespace(),
        name=args.lease_name or f"syncd-{args.owner_id}"[:253],
        identity=replica,
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
    )
    log.info("leader election on lease %s/%s as %s", lease.namespace, lease.name, replica)
    return lease


def _served(address: str | None, status: ProcessStatus) -> bool:
    """/metrics, /healthz and /readyz on `address` (if given), answered by `status`."""
    if not address:
        return True
    try:
        host, port = serve_metrics(address, status)
    except OSError as exc:
        say(f"syncd: --metrics-address {address}: {exc.strerror or exc}", stamp=True)
        return False
    log.info("metrics at http://%s:%d/metrics", host, port)
    return True


def _on_signals(stop: threading.Event) -> None:
    def request_stop(signum, _frame):
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def _one_pass(
    kube: Kube,
    config: Config,
    settings: OnceSettings,
    stop: threading.Event,
    printer: ResultPrinter,
) -> int:
    """Apply every target once; print one block per target, in config order."""
    writes_before = kube.writes
    texts: dict[str, tuple[str, str]] = {}
    planned = 0
    lock = threading.Lock()

    def report(result: TargetResult) -> None:
        nonlocal planned
        text = printer.render(result)  # now: the result is not kept
        with lock:
            texts[result.target] = text
            planned += len(result.changes)

    results = run_once(kube, config, settings, stop, report)
    for result in results:
        printer.write(*texts.get(result.target, ("", "")))
    failed = [r for r in results if not r.outcome.ok]
    writes = kube.writes - writes_before
    if settings.dry_run:
        printer.summary(f"dry run: {plural(planned, 'change')} planned, nothing written", True)
    elif failed:
        printer.summary(
            f"not converged: {len(failed)} of {plural(len(results), 'target')} failed; "
            f"{plural(writes, 'write')}",
            False,
        )
    else:
        targets = sum(1 for r in results if r.message != REMOVED_FROM_CONFIG)
        printer.summary(f"converged: {plural(targets, 'target')}, {plural(writes, 'write')}", True)
    return EXIT_TARGET_FAILED if failed or stop.is_set() else EXIT_OK


_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str:
    """The pod's namespace in a cluster ($POD_NAMESPACE, else the service account's), or
    syncd."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "syncd"
    except OSError:
        return "syncd"


def _daemon(controller: Controller, config: Config) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the config."""

    def request_reload(_signum, _frame):
        log.info("received SIGHUP; reloading %s", config.path)
        controller.request_reload()

    signal.signal(signal.SIGHUP, request_reload)
    return controller.run()
