"""Consul: the instances of one service, from /v1/health/service/<name>.

`fetch` makes one non-blocking read (for --once and render). `watch` runs blocking queries
(index + wait) so a registry change wakes syncd at once, and follows Consul's rules for the
index: unchanged on timeout (nothing to do), reset or backwards (start over from 0), never
below 1; after a failure it starts over from 0 too, as the agent may have restarted with a
lower index and would hold a query with the old one for the whole wait. A minimum pause
between queries keeps a churning service from spinning the CPU.

Answers filtered by ACLs (Consul returns 200 and hides what the token may not read) are
errors, not empty answers: a token missing a permission must never drain a Service.

Registry data is untrusted: entries whose address is invalid or rejected by the API server,
whose port is out of range, or that duplicate another entry are dropped with a warning and
counted; the rest is still used. Errors (unreachable, 5xx, ACL denied, timeouts) raise
SourceError: the caller keeps the last applied state.

The ACL token is sent as a header and never logged or printed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import consul
import requests
import tenacity
from consul.callback import CB
from requests.adapters import HTTPAdapter

from syncd.addresses import AddressRejected, canonical_endpoint_ip, parse_http_address
from syncd.errors import ConfigError, SourceError
from syncd.kinds import is_label_value
from syncd.model import (
    CONSUL_PORT,
    Backend,
    ConsulAddress,
    ConsulConnection,
    ConsulConsistency,
    ConsulQuerySourceConfig,
    ConsulSourceConfig,
    EndpointPort,
    Snapshot,
    Target,
    port_set,
)
from syncd.observability import DROPPED_ENTRIES, SOURCE_REQUESTS
from syncd.sources.base import ChangeEmitter, Emit, retry_until_stopped

log = logging.getLogger(__name__)

RETRY_MAX_BACKOFF = 5.0  # seconds between attempts while Consul is failing, at most


# --------------------------------------------------------------------------- pure mapping


def instance_ready(checks: Iterable[Mapping[str, Any]], warning_is_ready: bool) -> bool:
    """All checks passing -> ready; any critical (incl. maintenance mode) -> not ready."""
    for check in checks:
        status = check.get("Status")
        if status == "passing":
            continue
        if status == "warning" and warning_is_ready:
            continue
        return False
    return True


def _instance_address(entry: Mapping[str, Any], choice: ConsulAddress) -> tuple[str, Any]:
    service = entry.get("Service") or {}
    node = entry.get("Node") or {}
    port = service.get("Port")
    if choice is ConsulAddress.SERVICE:
        return (service.get("Address") or node.get("Address") or ""), port
    tagged = (service.get("TaggedAddresses") or {}).get(choice.value)
    if isinstance(tagged, Mapping) and tagged.get("Address"):
        return tagged["Address"], tagged.get("Port") or port
    node_tagged = (node.get("TaggedAddresses") or {}).get(choice.value)
    return (node_tagged or ""), port


def backends_from_health(
    entries: Iterable[Mapping[str, Any]], source: ConsulSourceConfig, target: Target
) -> tuple[frozenset[Backend], list[str]]:
    """Turn /v1/health/service entries into backends, plus a warning per dropped entry."""
    protocol = next(p.protocol for p in target.ports if p.name == source.port_name)
    by_identity: dict[tuple[str, int], bool] = {}
    zones: dict[tuple[str, int], str | None] = {}
    warnings: list[str] = []
    for entry in entries:
        service = entry.get("Service") or {}
        name = f"{(entry.get('Node') or {}).get('Node', '?')}/{service.get('ID', '?')}"
        address, port = _instance_address(entry, source.address)
        if not address:
            warnings.append(f"{name}: no {source.address.value} address; dropped")
            DROPPED_ENTRIES.labels(target.key, "no_address").inc()
            continue
        try:
            address = canonical_endpoint_ip(address)
        except AddressRejected as exc:
            warnings.append(f"{name}: {exc}; dropped")
            DROPPED_ENTRIES.labels(target.key, "address").inc()
            continue
        if port is None or port == 0:  # Consul leaves out a port of 0
            warnings.append(f"{name}: {address} is registered without a port (port 0); dropped")
            DROPPED_ENTRIES.labels(target.key, "port").inc()
            continue
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            warnings.append(f"{name}: port {port!r} is out of range 1-65535; dropped")
            DROPPED_ENTRIES.labels(target.key, "port").inc()
            continue
        ready = instance_ready(entry.get("Checks") or (), source.warning_is_ready)
        zone = _instance_zone(entry, source.zone_meta, name, warnings)
        key = (address, port)
        if key in by_identity:
            warnings.append(f"{name}: duplicates {address} port {port}; merged")
            DROPPED_ENTRIES.labels(target.key, "duplicate").inc()
            ready = ready or by_identity[key]  # one healthy registration is enough
            zone = zones[key] or zone
        by_identity[key] = ready
        zones[key] = zone
    backends = frozenset(
        Backend(address, port_set(EndpointPort(source.port_name, port, protocol)), ready, zone)
        for (address, port), ready in by_identity.items()
        for zone in (zones[(address, port)],)
    )
    return backends, warnings


def _instance_zone(
    entry: Mapping[str, Any], key: str, name: str, warnings: list[str]
) -> str | None:
    """The instance's zone: its service meta `key`, else its node's; None if neither."""
    service_meta = (entry.get("Service") or {}).get("Meta") or {}
    node_meta = (entry.get("Node") or {}).get("Meta") or {}
    zone = service_meta.get(key) or node_meta.get(key)
    if zone is None:
        return None
    if not is_label_value(zone) or not zone:
        warnings.append(f"{name}: meta {key}={zone!r} is not a zone name; zone left out")
        return None
    return str(zone)


# --------------------------------------------------------------------------- the client


class _ServerNameAdapter(HTTPAdapter):
    """Verify the server's certificate against a name other than the host we dial."""

    def __init__(self, server_name: str):
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["server_hostname"] = self._server_name
        kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


@dataclass(frozen=True)
class ConsulEndpoint:
    """Where and how to reach Consul: the config's `consul:` section, and the usual CONSUL_*
    environment variables for what it leaves out. The token is never logged or printed."""

    scheme: str
    host: str
    port: int
    token: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def resolve_endpoint(
    connection: ConsulConnection, environ: Mapping[str, str] | None = None
) -> ConsulEndpoint:
    """Check everything that decides how Consul is reached, once, before it is used.

    Raises ConfigError with one line per problem, naming the config field or the
    environment variable (`check` and `run` exit 2 on it).
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    ssl_text = env.get("CONSUL_HTTP_SSL", "").strip().lower()
    if ssl_text not in _TRUE + _FALSE:
        problems.append(f"CONSUL_HTTP_SSL: {env['CONSUL_HTTP_SSL']!r} is not true or false")
    if connection.address:
        address, where = connection.address, "consul.address"
    elif env.get("CONSUL_HTTP_ADDR"):
        address, where = env["CONSUL_HTTP_ADDR"], "CONSUL_HTTP_ADDR"
    else:
        address, where = f"127.0.0.1:{CONSUL_PORT}", "the default address"
    if "://" not in address and ssl_text in _TRUE:
        address = "https://" + address
    scheme, host, port = "http", "127.0.0.1", CONSUL_PORT
    try:
        scheme, host, port = parse_http_address(address, CONSUL_PORT)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")

    token = None
    if connection.token_file is not None:
        try:
            token = connection.token_file.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            problems.append(f"consul.token_file: cannot read {connection.token_file}: {why}")
        where = "consul.token_file"
    else:
        token = env.get("CONSUL_HTTP_TOKEN", "").strip() or None
        where = "CONSUL_HTTP_TOKEN"
    if token is not None and not token.isprintable():
        problems.append(f"{where}: the token contains control characters (a second line?)")

    files: dict[str, str | None] = {}
    for name, variable in (
        ("ca_file", "CONSUL_CACERT"),
        ("cert_file", "CONSUL_CLIENT_CERT"),
        ("key_file", "CONSUL_CLIENT_KEY"),
    ):
        configured = getattr(connection, name)
        path = str(configured) if configured is not None else (env.get(variable) or None)
        label = f"consul.{name}" if configured is not None else variable
        if path is not None and not os.access(path, os.R_OK):
            problems.append(f"{label}: cannot read {path}")
        files[name] = path
    if bool(files["cert_file"]) != bool(files["key_file"]):
        problems.append(
            "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY (or consul.cert_file and key_file) "
            "go together"
        )
    server_name = connection.tls_server_name or env.get("CONSUL_TLS_SERVER_NAME") or None
    if server_name is not None:
        try:
            parse_http_address(server_name, CONSUL_PORT)
        except ValueError:
            where = (
                "consul.tls_server_name" if connection.tls_server_name else "CONSUL_TLS_SERVER_NAME"
            )
            problems.append(f"{where}: {server_name!r} is not a host name")
    if problems:
        raise ConfigError(problems)
    return ConsulEndpoint(scheme, host, port, token, server_name=server_name, **files)


def make_client(connection: ConsulConnection) -> consul.Consul:
    """A py-consul client for `connection` (see resolve_endpoint)."""
    try:
        endpoint = resolve_endpoint(connection)
    except ConfigError as exc:  # valid at start; a file since removed, say
        raise SourceError("; ".join(exc.problems)) from None
    client = consul.Consul(
        host=endpoint.host.strip("[]"),
        port=endpoint.port,
        token=endpoint.token,
        scheme=endpoint.scheme,
        verify=endpoint.ca_file or True,
        cert=(endpoint.cert_file, endpoint.key_file)
        if endpoint.cert_file and endpoint.key_file
        else None,
        connections_timeout=connection.timeout,
    )
    if endpoint.server_name and endpoint.scheme == "https":
        client.http.session.mount("https://", _ServerNameAdapter(endpoint.server_name))
    return client


def consul_get(client: consul.Consul, parse, path: str, params, kind: str, name: str, denied: str):
    """GET from Consul through py-consul; every failure becomes a counted SourceError."""
    try:
        result = client.http.get(parse, path, params=params, headers=client.prepare_headers())
    except consul.ACLPermissionDenied:
        SOURCE_REQUESTS.labels(kind, "denied").inc()
        raise SourceError(f"{name}: {denied}") from None
    except consul.NotFound:
        SOURCE_REQUESTS.labels(kind, "error").inc()
        raise SourceError(f"{name}: not found") from None
    except consul.ConsulException as exc:
        SOURCE_REQUESTS.labels(kind, "error").inc()
        raise SourceError(f"{name}: {' '.join(str(exc).split())[:300]}") from None
    except requests.RequestException as exc:
        SOURCE_REQUESTS.labels(kind, "unreachable").inc()
        raise SourceError(
            f"{name}: cannot reach Consul at {client.http.base_uri}: {type(exc).__name__}"
        ) from None
    SOURCE_REQUESTS.labels(kind, "ok").inc()
    return result


def _query_params(source: ConsulSourceConfig, index: int, wait: float) -> list[tuple[str, Any]]:
    params: list[tuple[str, Any]] = []
    if index:
        params += [("index", index), ("wait", f"{int(wait)}s")]
    params += [("tag", tag) for tag in source.tags]
    params += [("node-meta", f"{key}:{value}") for key, value in source.node_meta]
    for name, value in (
        ("dc", source.datacenter),
        ("filter", source.filter),
        ("ns", source.namespace),
        ("partition", source.partition),
    ):
        if value:
            params.append((name, value))
    if source.consistency is not ConsulConsistency.DEFAULT:
        params.append((source.consistency.value, ""))
    return params


class ConsulSource:
    """One Consul service as the backends of one target."""

    def __init__(self, config: ConsulSourceConfig, target: Target, connection: ConsulConnection):
        self._config = config
        self._target = target
        self._connection = connection
        self._client: consul.Consul | None = None

    def describe(self) -> str:
        return self._config.describe()

    def _query(self, index: int) -> tuple[int, list[dict[str, Any]]]:
        """One read; blocking when index > 0. Raises SourceError on any failure."""
        if self._client is None:
            self._client = make_client(self._connection)
        client = self._client
        path = f"/v1/health/service/{urllib.parse.quote(self._config.service, safe='')}"
        params = _query_params(self._config, index, self._connection.wait)
        headers: dict[str, str] = {}

        def parse(response):
            headers.update({k.lower(): v for k, v in response.headers.items()})
            return CB.json(index=True)(response)

        raw_index, entries = consul_get(
            client, parse, path, params, "consul", self.describe(), "ACL token lacks read access"
        )
        if str(headers.get("x-consul-results-filtered-by-acls", "")).lower() == "true":
            # Consul hides what the token may not read and answers 200: an empty or partial
            # list here is not the registry's answer, and applying it would drain the Service.
            raise SourceError(
                f"{self.describe()}: Consul filtered the answer by ACLs; the token needs "
                f'\'service "{self._config.service}" {{ policy = "read" }}\' and node read'
            )
        try:
            new_index = int(raw_index)
        except (TypeError, ValueError):
            new_index = 0
        if not isinstance(entries, list):
            raise SourceError(f"{self.describe()}: unexpected answer from Consul")
        return new_index, entries

    def _snapshot(self, entries: list[dict[str, Any]]) -> Snapshot:
        backends, warnings = backends_from_health(entries, self._config, self._target)
        return Snapshot(backends=backends, source=self.describe(), warnings=tuple(warnings))

    def fetch(self) -> Snapshot:
        _index, entries = self._query(0)
        return self._snapshot(entries)

    def watch(self, stop: threading.Event, emit: Emit) -> None:
        """Blocking-query loop until `stop` is set; emits each change and each new failure."""
        index = 0
        emitter = ChangeEmitter(emit, self._target.key)

        def on_failure(error: SourceError) -> None:
            nonlocal index
            # After a failure the agent may have restarted with a fresh, lower index: a
            # query with the old index would then hold for the whole wait. Start over.
            index = 0
            emitter.failure(error)

        retrying = retry_until_stopped(stop, on_failure, RETRY_MAX_BACKOFF)

        def query() -> tuple[int, list[dict[str, Any]]]:
            return self._query(index)  # the current index: a failure resets it to 0

        while not stop.is_set():
            started = time.monotonic()
            try:
                new_index, entries = retrying(query)
            except tenacity.RetryError:
                return  # stopped while failing
            if new_index < index:
                log.info(
                    "%s: Consul index went backwards (%d < %d); starting over",
                    self._target.key,
                    new_index,
                    index,
                )
                index = 0
            elif new_index != index or not isinstance(emitter.last, Snapshot):
                index = max(new_index, 1)
                emitter.answer(self._snapshot(entries))
            pause = self._connection.min_query_interval - (time.monotonic() - started)
            if pause > 0:
                stop.wait(pause)


class ConsulQuerySource:
    """A Consul prepared query as one tier: /v1/query/<name>/execute, polled.

    Consul itself fails over between datacenters inside the query; the answer lists the
    nodes of whichever datacenter served it. Prepared queries cannot block, so the watch
    polls every `poll_interval` seconds and emits only changes.
    """

    def __init__(
        self, config: ConsulQuerySourceConfig, target: Target, connection: ConsulConnection
    ):
        self._config = config
        self._target = target
        self._connection = connection
        self._client: consul.Consul | None = None
        # The health mapping only needs these fields of a service source:
        self._as_service = ConsulSourceConfig(
            service=config.query,
            port_name=config.port_name,
            address=config.address,
            warning_is_ready=config.warning_is_ready,
            zone_meta=config.zone_meta,
        )

    def describe(self) -> str:
        return self._config.describe()

    def fetch(self) -> Snapshot:
        if self._client is None:
            self._client = make_client(self._connection)
        client = self._client
        path = f"/v1/query/{urllib.parse.quote(self._config.query, safe='')}/execute"
        result = consul_get(
            client,
            CB.json(allow_404=False),
            path,
            None,
            "consul_query",
            self.describe(),
            "ACL token may not execute it",
        )
        if not isinstance(result, dict) or not isinstance(result.get("Nodes"), list):
            raise SourceError(f"{self.describe()}: unexpected answer from Consul")
        backends, warnings = backends_from_health(result["Nodes"], self._as_service, self._target)
        datacenter = result.get("Datacenter", "?")
        return Snapshot(backends, f"{self.describe()} (served by {datacenter})", tuple(warnings))

    def poll(self) -> tuple[Snapshot, float | None]:
        """Prepared queries cannot block: ask again every poll_interval."""
        return self.fetch(), self._config.poll_interval
