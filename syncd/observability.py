"""Metrics (Prometheus) and log set-up: every decision syncd makes is countable.

Counters live in one registry so tests and the benchmark can read them in-process, and
`--metrics-address` serves them over HTTP for Prometheus.
"""

from __future__ import annotations

import logging
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

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
    "Target reconciles by outcome",
    ["outcome"],
    registry=REGISTRY,
)
TARGET_STALE = Gauge(
    "syncd_target_stale",
    "1 while no source of the target can answer (last state kept)",
    ["target"],
    registry=REGISTRY,
)
TARGET_BACKENDS = Gauge(
    "syncd_target_backends",
    "Backends applied for the target, by readiness",
    ["target", "ready"],
    registry=REGISTRY,
)


def serve_metrics(address: str) -> tuple[str, int]:
    """Serve /metrics on host:port (port 0 picks one); returns where it listens."""
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)
    bound_host, bound_port = server.server_address[:2]
    return bound_host, bound_port


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
