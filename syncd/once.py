"""`syncd run --once`: every target once, in parallel, against one read of the cluster.

The cluster is read with one paginated list per kind (not one read per target); the
targets are then decided and applied on a bounded pool of workers, each through the same
pipeline and sink as the daemon. What differs from the daemon:

- each source is asked once (non-blocking), probes run one round (rise and fall of 1);
- the policy's memory comes from the cluster alone, so a failback happens on the first
  run that finds the higher tier qualifying;
- a large removal held by the guard is read again `confirm_after` later, within the run;
- a write refused because the object changed meanwhile (409) re-reads that target and
  tries again, up to three times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from syncd.cache import ClusterCache
from syncd.cluster_networks import ClusterNetworks, describe_networks
from syncd.errors import KubeError, KubeNotFound, SourceError
from syncd.health import Prober
from syncd.kube import Kube
from syncd.live import seed_memory
from syncd.model import Answer, Config, ProbeKey, Target
from syncd.network_watch import ClusterNetworkWatch
from syncd.policy import PolicyState, probe_keys
from syncd.reconcile import reconcile, record_blocked
from syncd.resources import ResourceSet
from syncd.results import Outcome, TargetResult
from syncd.sink import Sink
from syncd.sources import ConsulClients, build_source

log = logging.getLogger(__name__)

_WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class OnceSettings:
    owner_id: str
    dry_run: bool = False
    workers: int = 4
    namespaces: tuple[str, ...] | None = None
    resources: bool = False  # also the ExternalServices (status written for each)


def ask_sources(target: Target, consul: ConsulClients | None = None) -> list[Answer]:
    """One answer from every source of the target (a Snapshot or the SourceError).
    Dropped registry entries are logged here. Consul is asked through the `consul`
    clients, shared by all targets."""
    answers: list[Answer] = []
    for source_config in target.sources:
        source = build_source(source_config, target, consul)
        try:
            snapshot = source.fetch()
        except SourceError as exc:
            answers.append(exc)
            continue
        for warning in snapshot.warnings:
            about = {"target": target.key, "source": snapshot.source, "action": "drop"}
            log.warning("%s: %s: %s", target.key, snapshot.source, warning, extra=about)
        answers.append(snapshot)
    return answers


def probe_round(target: Target, answers: list[Answer]) -> Prober | None:
    """Probe every registry-ready backend once (no rise/fall history in one run)."""
    if target.health_check is None:
        return None
    check = replace(target.health_check, rise=1, fall=1)
    prober = Prober(check, target.key)
    prober.run_round(probe_keys(answers, check.port))
    return prober


def run_once(
    kube: Kube,
    config: Config,
    settings: OnceSettings,
    stop: threading.Event | None = None,
    report: Callable[[TargetResult], None] | None = None,
) -> list[TargetResult]:
    """Reconcile every target once, then prune what removed targets left behind.

    `report` sees each result whole as soon as it is known. The results come back in
    config order (removed targets last) without their changes, which hold every object
    written: at 10,000 targets, keeping them all would cost more than the cache.
    """
    stop = stop or threading.Event()
    cache = ClusterCache(kube, settings.namespaces)
    resources = ResourceSet(kube, settings.namespaces) if settings.resources else None
    unreadable = _read_cluster(cache, resources)
    if unreadable is not None:
        failed = TargetResult("(cluster)", Outcome.FAILED, message=unreadable)
        if report is not None:
            report(failed)
        return [failed]
    if resources is not None:
        config = resources.merge(config).config  # the file's targets and the resources'
    networks = read_networks(kube, config, settings)
    sink = _sink(kube, cache, config, settings, stop, resources is not None)
    consul = ConsulClients(config.consul, min(settings.workers, config.consul.budget()))

    def reported(result: TargetResult) -> TargetResult:
        if report is not None:
            report(result)
        return replace(result, changes=(), decision=None)

    def one(target: Target) -> TargetResult:
        unhealthy = None
        try:
            result, unhealthy = _one_target(
                target, config, consul, cache, sink, settings, stop, networks
            )
        except KubeError as exc:
            result = TargetResult(target.key, Outcome.FAILED, message=str(exc))
        if resources is not None and target.resource is not None and not settings.dry_run:
            live = cache.live_state(target)
            resources.publish(target, result, live, settings.owner_id, unhealthy)
        return reported(result)

    with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="once") as pool:
        results = list(pool.map(one, config.targets))
    keep = {t.key for t in config.targets} | (resources.held if resources else frozenset())
    if resources is not None and not settings.dry_run:
        resources.publish_unapplied()
    results.extend(reported(result) for result in sink.prune(keep))
    return results


def _sink(
    kube: Kube,
    cache: ClusterCache,
    config: Config,
    settings: OnceSettings,
    stop: threading.Event,
    prunes_resources: bool,
) -> Sink:
    """The sink of one pass, knowing which fields this API server keeps."""
    sink = Sink(
        kube,
        cache,
        settings.owner_id,
        settings.dry_run,
        stop,
        allow_protected=lambda: config.allow_protected,
        prunes_resources=lambda: prunes_resources,
    )
    try:
        sink.learn_served_fields(config.targets)
    except KubeError as exc:  # the writes will tell; a probe failing is no reason to stop
        log.info("could not ask the API server which fields it keeps: %s", exc)
    return sink


def read_networks(kube: Kube, config: Config, settings: OnceSettings) -> ClusterNetworks:
    """The cluster's own networks, read once (syncd.network_watch): resources may not point
    into them, and the file's targets are warned when they do."""
    probe_namespace = (settings.namespaces or ("default",))[0]
    networks = ClusterNetworkWatch(kube, config.address_policy, probe_namespace).load()
    if networks.unknown:
        log.warning(
            "cannot read the cluster's own networks (%s): %s",
            networks.unknown,
            "ExternalServices are not applied"
            if settings.resources
            else "the targets' backends are not checked against them",
        )
    else:
        log.info(describe_networks(networks))
    return networks


def _read_cluster(cache: ClusterCache, resources: ResourceSet | None) -> str | None:
    """One list per kind into the caches; or why the cluster cannot be read."""
    try:
        cache.load()
    except KubeError as exc:
        return f"cannot read the cluster: {exc}"
    if resources is None:
        return None
    try:
        resources.cache.load()
    except KubeNotFound as exc:
        return (
            f"cannot list ExternalServices ({exc}): is their CRD installed? "
            "(deploy/components/resources, or the chart's externalServices.enabled)"
        )
    except KubeError as exc:
        return f"cannot list ExternalServices: {exc}"
    return None


def _one_target(
    target: Target,
    config: Config,
    consul: ConsulClients,
    cache: ClusterCache,
    sink: Sink,
    settings: OnceSettings,
    stop: threading.Event,
    networks: ClusterNetworks,
) -> tuple[TargetResult, Mapping[ProbeKey, str] | None]:
    """Reconcile one target; wait once for a held removal, re-read after a 409. Returns
    the result and what its probes call unhealthy, and why (None: it has no probes)."""
    memory: PolicyState | None = None  # None: seed from the cluster
    held_once = False
    attempts = 0
    while True:
        answers = ask_sources(target, consul)
        live = cache.live_state(target)
        prober = probe_round(target, answers)
        unhealthy = prober.failing() if prober is not None else None
        done = reconcile(
            target,
            answers,
            memory or seed_memory(target, live, settings.owner_id, one_shot=True),
            live,
            sink,
            now=time.monotonic(),
            address_policy=config.address_policy,
            owner_id=settings.owner_id,
            health=prober.health() if prober is not None else None,
            networks=networks,
        )
        for warning in done.step.evaluation.warnings:
            log.warning("%s: %s", target.key, warning, extra={"target": target.key})
        result = done.result
        if result.outcome is Outcome.HELD and done.hold_until is not None and not held_once:
            held_once = True
            reason = done.step.evaluation.verdict.reason
            log.warning(
                "%s: %s", target.key, reason, extra={"target": target.key, "action": "hold"}
            )
            if stop.wait(max(0.0, done.hold_until - time.monotonic())):
                return result, unhealthy
            cache.refresh_target(target)  # the cluster may have changed while we waited
            memory = done.memory
            continue
        record_blocked(sink, target, result)
        attempts += 1
        if not (result.stale_read and attempts < _WRITE_ATTEMPTS):
            return result, unhealthy
        log.info(
            "%s: an object changed while syncing (%s); re-reading",
            target.key,
            result.message,
            extra={"target": target.key, "action": "retry"},
        )
        cache.refresh_target(target)
        memory = None
