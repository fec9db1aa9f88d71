"""http_sd: backends from an HTTP endpoint in Prometheus' HTTP service-discovery format, the
format NetBox, Proxmox and other inventories serve:

    [{"targets": ["192.0.2.10:8080", "192.0.2.11:8080"], "labels": {"zone": "a"}}, ...]

- Polled every `refresh_interval` seconds, with `If-None-Match` when the server gave an
  `ETag` (a 304 answers "unchanged" in a few bytes).
- A group's labels may choose it (`match_labels`: all must be equal) and name its
  targets' zone (`zone_label`). A target is `address:port`; its port serves the Service
  port `port` names (the only one by default). Entries that are not an IP address and a
  port the API server accepts are dropped with a warning; the rest is used.
- Credentials from files, read again on every request (a rotated token needs no
  restart): a bearer token, or basic auth's password; a CA bundle for https.
- Bounded: the body is read up to `max_bytes`, the whole request within `timeout`.
- Fail static: an unreachable server, a status other than 200 or 304, a body that is not
  the format, are errors (SourceError): the last applied state is kept. `[]` is a real
  answer: no backends.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from syncd.addresses import parse_http_address
from syncd.errors import SourceError
from syncd.kinds import HOSTNAME_RULE, is_label_value, registry_hostname
from syncd.model import Backend, EndpointPort, ServicePort, Snapshot, Target, port_set
from syncd.observability import DROPPED_ENTRIES, SOURCE_REQUESTS
from syncd.sources.base import Dropped, checked_entry
from syncd.sources.types import SourceNeeds, SourceType
from syncd.syntax.checks import (
    Scope,
    beside,
    expect_mapping,
    kind_name,
    nonempty_string,
    numbers,
    served_port,
)
from syncd.syntax.files import ca_bundle_problem

_MAX_SECRET_BYTES = 64 * 1024


@dataclass(frozen=True)
class HttpSdSourceConfig:
    """An HTTP service-discovery endpoint (Prometheus' http_sd format)."""

    url: str
    port_name: str  # the Service port the targets' ports serve
    refresh_interval: float = 30.0
    timeout: float = 10.0  # seconds for a whole request, body included
    max_bytes: int = 8 * 1024 * 1024
    zone_label: str | None = None
    hostname_label: str | None = None  # a group's label naming its targets' endpoints
    match_labels: tuple[tuple[str, str], ...] = ()
    bearer_token_file: Path | None = None
    username: str | None = None  # basic auth, with password_file
    password_file: Path | None = None
    ca_file: Path | None = None

    @property
    def kind(self) -> str:
        return "http_sd"

    @property
    def operators_own(self) -> bool:
        return False

    @property
    def listed(self) -> tuple[Backend, ...]:
        return ()

    def describe(self) -> str:
        return f"http_sd {self.url.split('?', 1)[0]}"


# --------------------------------------------------------------------------- its section

_KEYS = {
    "type",
    "url",
    "port",
    "refresh_interval",
    "timeout",
    "max_bytes",
    "zone_label",
    "hostname_label",
    "match_labels",
    "bearer_token_file",
    "basic_auth",
    "ca_file",
}


def parse(
    raw: dict, scope: Scope, ports: tuple[ServicePort, ...], base_dir: Path
) -> HttpSdSourceConfig | None:
    data = expect_mapping(raw, scope, _KEYS, {"type", "url"})
    if data is None:
        return None
    before = len(scope.checker.problems)
    url = nonempty_string(data.get("url"), scope.at("url")) if "url" in data else None
    if url:
        _check_url(url, scope.at("url"))
    values: dict[str, Any] = numbers(
        data,
        scope,
        {
            "refresh_interval": (1, 86400),
            "timeout": (0.1, 60),
            "max_bytes": (1024, 256 * 1024 * 1024, True),
        },
    )
    values["port_name"] = served_port(
        data, "port", [p.name for p in ports], scope, "the targets serve"
    )
    for key in ("zone_label", "hostname_label"):
        if key in data:
            values[key] = nonempty_string(data[key], scope.at(key))
    if "match_labels" in data:
        values["match_labels"] = _labels(data["match_labels"], scope.at("match_labels"))
    for key in ("bearer_token_file", "ca_file"):
        if key in data:
            name = nonempty_string(data[key], scope.at(key))
            values[key] = beside(base_dir, name) if name else None
    if values.get("ca_file"):
        problem = ca_bundle_problem(values["ca_file"])
        if problem:
            scope.at("ca_file").error(problem)
    if "basic_auth" in data:
        values.update(_basic_auth(data["basic_auth"], scope.at("basic_auth"), base_dir))
    if values.get("bearer_token_file") and values.get("username"):
        scope.error("give one of bearer_token_file or basic_auth, not both")
    if len(scope.checker.problems) > before or not url:
        return None
    return HttpSdSourceConfig(url=url, **values)


def _check_url(url: str, scope: Scope) -> None:
    """http(s)://host[:port]/path: no credentials in it (they would be shown everywhere)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest:
        scope.error(f"{url!r} is not an http:// or https:// URL")
        return
    try:
        parse_http_address(f"{scheme}://{rest.split('/', 1)[0]}", 80)
    except ValueError as exc:
        scope.error(str(exc).replace("token_file", "bearer_token_file or basic_auth"))


def _labels(raw: Any, scope: Scope) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        scope.error(f"must be a mapping of label names to values, got {kind_name(raw)}")
        return ()
    return tuple(sorted(raw.items()))


def _basic_auth(raw: Any, scope: Scope, base_dir: Path) -> dict[str, Any]:
    data = expect_mapping(raw, scope, {"username", "password_file"}, {"username", "password_file"})
    if data is None:
        return {}
    username = nonempty_string(data.get("username"), scope.at("username"))
    name = nonempty_string(data.get("password_file"), scope.at("password_file"))
    if not username or not name:
        return {}
    return {"username": username, "password_file": beside(base_dir, name)}


# --------------------------------------------------------------------------- reading it


def _secret(path: Path, what: str) -> str:
    """A credential file's one line (read on every request: a rotation needs no restart)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(_MAX_SECRET_BYTES).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not text or not text.isprintable():
        raise SourceError(f"{what} {path}: not one line of text")
    return text


class HttpSdSource:
    def __init__(self, config: HttpSdSourceConfig, target: Target):
        self._config = config
        self._target = target
        self._service_port = next(p for p in target.ports if p.name == config.port_name)
        self._session = requests.Session()
        self._etag: str | None = None
        self._last: Snapshot | None = None

    def describe(self) -> str:
        return self._config.describe()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "syncd http_sd"}
        config = self._config
        if config.bearer_token_file is not None:
            token = _secret(config.bearer_token_file, "bearer_token_file")
            headers["Authorization"] = f"Bearer {token}"
        if self._etag and self._last is not None:
            headers["If-None-Match"] = self._etag
        return headers

    def _auth(self) -> tuple[str, str] | None:
        config = self._config
        if config.username is None or config.password_file is None:
            return None
        return (config.username, _secret(config.password_file, "basic_auth.password_file"))

    def fetch(self) -> Snapshot:
        config = self._config
        deadline = time.monotonic() + config.timeout
        try:
            response = self._session.get(
                config.url,
                headers=self._headers(),
                auth=self._auth(),
                verify=str(config.ca_file) if config.ca_file else True,
                timeout=(config.timeout, config.timeout),
                stream=True,
                allow_redirects=False,
            )
            with response:
                if response.status_code == 304 and self._last is not None:
                    SOURCE_REQUESTS.labels("http_sd", "unchanged").inc()
                    return self._last
                if response.status_code != 200:
                    raise SourceError(
                        f"{self.describe()}: the server answered {response.status_code}"
                    )
                body = _body(response, config.max_bytes, deadline)
                etag = response.headers.get("ETag")
        except requests.RequestException as exc:
            SOURCE_REQUESTS.labels("http_sd", "unreachable").inc()
            raise SourceError(f"{self.describe()}: cannot reach it: {_cause(exc)}") from None
        except SourceError:
            SOURCE_REQUESTS.labels("http_sd", "error").inc()
            raise
        snapshot = self._snapshot(body)
        SOURCE_REQUESTS.labels("http_sd", "ok").inc()
        self._etag, self._last = etag, snapshot
        return snapshot

    def poll(self) -> tuple[Snapshot, float | None]:
        return self.fetch(), self._config.refresh_interval

    def _snapshot(self, body: bytes) -> Snapshot:
        try:
            groups = json.loads(body)
        except ValueError:
            raise SourceError(f"{self.describe()}: the answer is not JSON") from None
        if not isinstance(groups, list):
            raise SourceError(f"{self.describe()}: the answer is not a list of target groups")
        backends: set[Backend] = set()
        warnings: list[str] = []
        for index, group in enumerate(groups):
            if not isinstance(group, dict) or not isinstance(group.get("targets"), list):
                raise SourceError(
                    f"{self.describe()}: group {index} is not {{targets: [...], labels: {{...}}}}"
                )
            labels = group.get("labels") or {}
            if not isinstance(labels, dict):
                raise SourceError(f"{self.describe()}: group {index}: labels is not a mapping")
            if any(labels.get(k) != v for k, v in self._config.match_labels):
                continue
            zone = self._zone(labels, index, warnings)
            hostname = self._hostname(labels, index, warnings)
            for entry in group["targets"]:
                backend = self._backend(entry, zone, hostname, warnings)
                if backend is not None:
                    backends.add(backend)
        return Snapshot(frozenset(backends), self.describe(), tuple(warnings))

    def _zone(self, labels: dict, index: int, warnings: list[str]) -> str | None:
        label = self._config.zone_label
        if label is None or label not in labels:
            return None
        zone = labels[label]
        if not is_label_value(zone) or not zone:
            warnings.append(f"group {index}: zone {zone!r} is not a label value; no zone")
            return None
        return str(zone)

    def _hostname(self, labels: dict, index: int, warnings: list[str]) -> str | None:
        label = self._config.hostname_label
        if label is None or not labels.get(label):
            return None
        name = registry_hostname(str(labels[label]))
        if name is None:
            warnings.append(
                f"group {index}: {label} {labels[label]!r} is not a hostname "
                f"({HOSTNAME_RULE}); kept without a name"
            )
        return name

    def _backend(
        self, entry: Any, zone: str | None, hostname: str | None, warnings: list[str]
    ) -> Backend | None:
        host, _, port_text = str(entry).rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        port = int(port_text) if port_text.isascii() and port_text.isdigit() else port_text
        checked = checked_entry(f"target {entry!r}: ", host, [port])
        if isinstance(checked, Dropped):
            warnings.append(checked.warning)
            DROPPED_ENTRIES.labels(self._target.key, checked.reason).inc()
            return None
        service_port = self._service_port
        ports = port_set(EndpointPort(service_port.name, int(port), service_port.protocol))
        return Backend(checked, ports, True, zone, hostname)


def _body(response: requests.Response, limit: int, deadline: float) -> bytes:
    """The body, at most `limit` bytes, all of it before `deadline` (a server that trickles
    bytes never holds a source's turn longer than its timeout)."""
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise SourceError(f"the answer is larger than max_bytes ({limit})")
        if time.monotonic() > deadline:
            raise SourceError("the answer took longer than the timeout")
        chunks.append(chunk)
    return b"".join(chunks)


def _cause(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS: the certificate does not verify" if "CERTIFICATE_VERIFY" in str(exc) else "TLS"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or the host does not resolve"
    return type(exc).__name__


def _build(config: HttpSdSourceConfig, target: Target, needs: SourceNeeds) -> HttpSdSource:
    return HttpSdSource(config, target)


SOURCE_TYPES = (
    SourceType(
        name="http_sd",
        example={"type": "http_sd", "url": "https://inventory.example.com/sd/rgw"},
        parse=parse,
        build=_build,
        crd={
            "url": {
                "type": "string",
                "pattern": "^https?://",
                "description": "http_sd: the endpoint (Prometheus HTTP service discovery)",
            },
            "port": {
                "x-kubernetes-int-or-string": True,
                "description": "http_sd: which Service port the targets serve",
            },
            "refresh_interval": {"type": "number", "minimum": 1, "maximum": 86400},
            "timeout": {"type": "number", "minimum": 0.1, "maximum": 60},
            "max_bytes": {"type": "integer", "minimum": 1024, "maximum": 268435456},
            "zone_label": {
                "type": "string",
                "description": "http_sd: the label naming the targets' zone",
            },
            "hostname_label": {
                "type": "string",
                "description": "http_sd: the label naming a group's endpoints (DNS names)",
            },
            "match_labels": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "http_sd: only groups with all of these labels",
            },
            "bearer_token_file": {"type": "string", "description": "Not allowed in a resource."},
            "basic_auth": {"type": "object", "description": "Not allowed in a resource."},
            "ca_file": {"type": "string", "description": "Not allowed in a resource."},
        },
        crd_rules=(
            {
                "rule": "self.type != 'http_sd' || has(self.url)",
                "message": "an http_sd source needs 'url'",
            },
        ),
        file_keys=("bearer_token_file", "basic_auth", "ca_file"),
    ),
)

__all__ = ["SOURCE_TYPES", "HttpSdSource", "HttpSdSourceConfig"]
