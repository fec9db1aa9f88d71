"""Metrics (Prometheus) and log set-up: every decision syncd makes is countable.

Counters live in one registry so tests and the benchmark can read them in-process, and
`--metrics-address` serves them over HTTP for Prometheus.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry()

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
RECONCILES = Counter(
    "syncd_reconciles_total",
    "Target reconciles by outcome and by what queued them (source, cluster, resync, retry, "
    "recheck, hold, probe, start, reload, api-recovered)",
    ["outcome", "trigger"],
    registry=REGISTRY,
)

PROBES = Counter(
    "syncd_probes_total",
    "Active health probes by type and result",
    ["type", "result"],
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
    ready: int
    not_ready: int
    tier: int | None  # only for targets with several tiers


class _TargetGauges:
    """syncd_target_stale, syncd_target_backends and syncd_active_tier, read from the
    daemon's own state when scraped: no gauge objects per target to keep in step, and
    cheap at tens of thousands of targets."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[TargetStatus]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stale = GaugeMetricFamily(
            "syncd_target_stale",
            "1 while no source of the target can answer (last state kept)",
            labels=["target"],
        )
        backends = GaugeMetricFamily(
            "syncd_target_backends",
            "Backends applied for the target, by readiness",
            labels=["target", "ready"],
        )
        tier = GaugeMetricFamily(
            "syncd_active_tier",
            "Index of the source tier in use (targets with several tiers)",
            labels=["target"],
        )
        for status in self.source() if self.source else ():
            stale.add_metric([status.key], 1.0 if status.stale else 0.0)
            backends.add_metric([status.key, "true"], status.ready)
            backends.add_metric([status.key, "false"], status.not_ready)
            if status.tier is not None:
                tier.add_metric([status.key], status.tier)
        yield from (stale, backends, tier)


TARGET_GAUGES = _TargetGauges()
REGISTRY.register(TARGET_GAUGES)  # type: ignore[arg-type]


def parse_listen_address(text: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or '[v6]:PORT' -> (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (port 0-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def serve_metrics(address: str) -> tuple[str, int]:
    """Serve /metrics on host:port (port 0 picks one); returns where it listens."""
    host, port = parse_listen_address(address)
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    bound_host, bound_port = server.server_address[:2]
    return bound_host, bound_port


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
