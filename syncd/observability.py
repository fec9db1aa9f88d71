"""Metrics (Prometheus): every decision syncd makes is countable.

Counters live in one registry so tests and the benchmark can read them in-process, and
`--metrics-address` serves them over HTTP for Prometheus.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from syncd import __version__

REGISTRY = CollectorRegistry()
# The standard process_* (memory, CPU, file descriptors: what pods are sized by) and
# python_* (version, garbage collection) series, beside syncd's own.
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

BUILD_INFO = Gauge(
    "syncd_build_info",
    "Always 1; the labels say which syncd is running",
    ["version", "python"],
    registry=REGISTRY,
)
BUILD_INFO.labels(__version__, ".".join(map(str, sys.version_info[:3]))).set(1)

SOURCE_REQUESTS = Counter(
    "syncd_source_requests_total",
    "Requests made to registries, by source type and result",
    ["source", "result"],
    registry=REGISTRY,
)
DROPPED_ENTRIES = Counter(
    "syncd_registry_entries_dropped_total",
    "Registry entries dropped as unusable (bad or rejected address, bad port, duplicate)",
    ["target", "reason"],
    registry=REGISTRY,
)
KUBE_REQUESTS = Counter(
    "syncd_kube_requests_total",
    "Kubernetes API calls by verb",
    ["verb"],
    registry=REGISTRY,
)
KUBE_FAILURES = Counter(
    "syncd_kube_request_failures_total",
    "Kubernetes API requests that failed, by why: timeout (no answer within "
    "--request-timeout), reset, refused, tls, throttled (429), server (5xx), other",
    ["reason"],
    registry=REGISTRY,
)
RECONCILES = Counter(
    "syncd_reconciles_total",
    "Target reconciles by outcome and by what queued them (source, cluster, resync, retry, "
    "recheck, hold, probe, start, reload, api-recovered)",
    ["outcome", "trigger"],
    registry=REGISTRY,
)

PROBES = Counter(
    "syncd_probes_total",
    "Active health probes by type, result and, for failures, why: refused, timeout, tls, "
    "status (an unexpected HTTP status), reset, error",
    ["type", "result", "reason"],
    registry=REGISTRY,
)
PROBE_PANICS = Counter(
    "syncd_probe_panics_total",
    "Decisions where probes failed too many registry-healthy backends and were ignored",
    ["target"],
    registry=REGISTRY,
)
TIER_SWITCHES = Counter(
    "syncd_tier_switches_total",
    "Failover tier switches",
    ["target", "from_tier", "to_tier"],
    registry=REGISTRY,
)
HELD_REMOVALS = Counter(
    "syncd_held_removals_total",
    "Large removals held for confirmation",
    ["target"],
    registry=REGISTRY,
)


CONSUL_CONNECTIONS = Gauge(
    "syncd_consul_connections",
    "Connections to Consul held now, or that the shared readers may open (<= max_connections)",
    registry=REGISTRY,
)
CONSUL_STREAMS = Gauge(
    "syncd_consul_streams",
    "Requests in flight to Consul over HTTP/2 (blocking queries included), and how many "
    "fit in the connection budget",
    ["state"],
    registry=REGISTRY,
)
UNSUPPORTED_FIELDS = Gauge(
    "syncd_unsupported_field",
    "1 for a field value this cluster's API server does not keep; syncd leaves it out",
    ["field", "value"],
    registry=REGISTRY,
)
CONSUL_SERVICES = Gauge(
    "syncd_consul_services",
    "Consul services followed, by how: watch (its own blocking query) or feed (the change "
    "feeds and the shared readers)",
    ["mode"],
    registry=REGISTRY,
)
CONSUL_READS = Counter(
    "syncd_consul_reads_total",
    "Reads of feed-followed Consul services, by why: catch-up (first read, or the feeds "
    "restarted), health (a check changed), confirm (a check left the non-passing list), "
    "catalog (a service appeared or vanished), sweep (after a registration change), retry",
    ["reason"],
    registry=REGISTRY,
)

LEADER = Gauge(
    "syncd_leader",
    "1 while this replica holds the lease and may write (always 1 without leader election)",
    registry=REGISTRY,
)
WORKQUEUE_DEPTH = Gauge(
    "syncd_workqueue_depth",
    "Targets waiting to be reconciled",
    registry=REGISTRY,
)
WORKQUEUE_RETRIES = Counter(
    "syncd_workqueue_retries_total",
    "Reconciles queued again after a failure (each with its own backoff)",
    registry=REGISTRY,
)


@dataclass(frozen=True)
class TargetStatus:
    """What the per-target gauges show for one target."""

    key: str
    stale: bool
    protected: bool
    ready: int
    not_ready: int
    tier: int | None  # only for targets with several tiers
    last_success: float | None = None  # unix time the target was last in sync (converged)
    refused: bool = False  # a resource pointing into the cluster's own networks


_TARGET_HELP = """\
# HELP syncd_target_stale 1 while no source of the target can answer (last state kept)
# TYPE syncd_target_stale gauge
{stale}# HELP syncd_target_drain_protected 1 while an answer that would drain the target is held
# TYPE syncd_target_drain_protected gauge
{protected}# HELP syncd_target_cluster_address 1 while a resource's target lists an address in \
the cluster's own networks (refused; its endpoints withdrawn)
# TYPE syncd_target_cluster_address gauge
{refused}# HELP syncd_target_backends Backends applied for the target, by readiness
# TYPE syncd_target_backends gauge
{backends}# HELP syncd_active_tier Index of the source tier in use (targets with several tiers)
# TYPE syncd_active_tier gauge
{tier}# HELP syncd_target_last_success_timestamp_seconds When the target was last found or made \
equal to its sources' answer (unix time)
# TYPE syncd_target_last_success_timestamp_seconds gauge
{success}"""


def render_metrics(statuses: Iterable[TargetStatus] = ()) -> bytes:
    """The Prometheus text exposition of everything syncd measures.

    Per-target gauges are written directly: a target key is a validated namespace/name
    (lowercase letters, digits, '-' and one '/'), so nothing needs escaping, and 30,000
    series render in milliseconds rather than the library's third of a second.
    """
    stale, protected, backends, tier, success, refused = [], [], [], [], [], []
    for status in statuses:
        label = f'target="{status.key}"'
        stale.append(f"syncd_target_stale{{{label}}} {int(status.stale)}\n")
        protected.append(f"syncd_target_drain_protected{{{label}}} {int(status.protected)}\n")
        refused.append(f"syncd_target_cluster_address{{{label}}} {int(status.refused)}\n")
        backends.append(f'syncd_target_backends{{{label},ready="true"}} {status.ready}\n')
        backends.append(f'syncd_target_backends{{{label},ready="false"}} {status.not_ready}\n')
        if status.tier is not None:
            tier.append(f"syncd_active_tier{{{label}}} {status.tier}\n")
        if status.last_success is not None:
            name = "syncd_target_last_success_timestamp_seconds"
            success.append(f"{name}{{{label}}} {status.last_success:.3f}\n")
    targets = _TARGET_HELP.format(
        stale="".join(stale),
        protected="".join(protected),
        refused="".join(refused),
        backends="".join(backends),
        tier="".join(tier),
        success="".join(success),
    )
    return generate_latest(REGISTRY) + targets.encode()
