"""Metrics (Prometheus) and log set-up: every decision syncd makes is countable.

Counters live in one registry so tests and the benchmark can read them in-process, and
`--metrics-address` serves them over HTTP for Prometheus.
"""

from __future__ import annotations

import http.server
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

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


CONSUL_CONNECTIONS = Gauge(
    "syncd_consul_connections",
    "Connections to Consul held now, or that the shared readers may open (<= max_connections)",
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


# The daemon sets these: the per-target gauges are read from its state at scrape time, and
# /healthz and /readyz ask it. Until it does (the process is starting, or it is a --once
# run), the process alive is healthy but not ready: nothing would answer for it yet.
target_statuses: Callable[[], Iterable[TargetStatus]] | None = None


def _starting() -> tuple[bool, str]:
    return False, "starting"


health: Callable[[], list[str]] = list
readiness: Callable[[], tuple[bool, str]] = _starting

_TARGET_HELP = """\
# HELP syncd_target_stale 1 while no source of the target can answer (last state kept)
# TYPE syncd_target_stale gauge
{stale}# HELP syncd_target_drain_protected 1 while an answer that would drain the target is held
# TYPE syncd_target_drain_protected gauge
{protected}# HELP syncd_target_backends Backends applied for the target, by readiness
# TYPE syncd_target_backends gauge
{backends}# HELP syncd_active_tier Index of the source tier in use (targets with several tiers)
# TYPE syncd_active_tier gauge
{tier}"""


def render_metrics() -> bytes:
    """The Prometheus text exposition of everything syncd measures.

    Per-target gauges are written directly: a target key is a validated namespace/name
    (lowercase letters, digits, '-' and one '/'), so nothing needs escaping, and 30,000
    series render in milliseconds rather than the library's third of a second.
    """
    stale, protected, backends, tier = [], [], [], []
    for status in target_statuses() if target_statuses else ():
        label = f'target="{status.key}"'
        stale.append(f"syncd_target_stale{{{label}}} {int(status.stale)}\n")
        protected.append(f"syncd_target_drain_protected{{{label}}} {int(status.protected)}\n")
        backends.append(f'syncd_target_backends{{{label},ready="true"}} {status.ready}\n')
        backends.append(f'syncd_target_backends{{{label},ready="false"}} {status.not_ready}\n')
        if status.tier is not None:
            tier.append(f"syncd_active_tier{{{label}}} {status.tier}\n")
    targets = _TARGET_HELP.format(
        stale="".join(stale),
        protected="".join(protected),
        backends="".join(backends),
        tier="".join(tier),
    )
    return generate_latest(REGISTRY) + targets.encode()


def parse_listen_address(text: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or '[v6]:PORT' -> (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (port 0-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "syncd"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, render_metrics(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":  # liveness: the process and its loops work
            problems = health()
            text = "\n".join(problems) if problems else "ok"
            self._send(500 if problems else 200, f"{text}\n".encode(), "text/plain")
        elif path == "/readyz":  # readiness: caches synced; the leader has done a first pass
            ready, why = readiness()
            self._send(200 if ready else 503, f"{why}\n".encode(), "text/plain")
        else:
            self._send(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes are not news


def serve_metrics(address: str) -> tuple[str, int]:
    """Serve /metrics, /healthz and /readyz on host:port (port 0 picks one); returns where
    it listens."""
    host, port = parse_listen_address(address)
    server = http.server.ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    bound_host, bound_port = server.server_address[:2]
    return str(bound_host), int(bound_port)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
