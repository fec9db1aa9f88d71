"""How syncd talks to Consul: where it is (config and CONSUL_* variables), clients, and
one GET that turns every failure into a counted SourceError.

Connections are what Consul limits (`limits.http_max_conns_per_client`, 200 by default,
per client IP). Over HTTP/1.1 a client here is one HTTP connection: it is used by one
thread at a time, and `ConsulClients` hands out at most `size` of them. Over HTTPS, when
the agent offers HTTP/2, every client shares the pool of syncd.sources.consul_h2: a
request is a stream, hundreds to a connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import consul
import requests
import urllib3
from requests.adapters import HTTPAdapter

from syncd.addresses import parse_http_address
from syncd.errors import ConfigError, SourceError, SourceUnreachable
from syncd.model import CONSUL_PORT, ConsulConnection
from syncd.observability import SOURCE_REQUESTS
from syncd.redact import without_query
from syncd.sources.consul_h2 import (
    Http2HTTPClient,
    Http2Pool,
    Http2Unavailable,
    StreamFailed,
    tls_context,
)

log = logging.getLogger(__name__)


class _Adapter(HTTPAdapter):
    """Verify the server's certificate against `server_name` (a name other than the host
    dialled), and/or remember every socket opened in `sockets` (so it can be cut short)."""

    def __init__(self, server_name: str | None = None, sockets: weakref.WeakSet | None = None):
        self._server_name = server_name
        self._sockets = sockets
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        if self._server_name:
            kwargs["server_hostname"] = self._server_name
            kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)
        if self._sockets is not None:
            self.poolmanager.pool_classes_by_scheme = _tracking_pools(self._sockets)


def _tracking_pools(sockets: weakref.WeakSet) -> dict[str, type]:
    """urllib3 connection pools whose connections add their socket to `sockets`."""

    class Plain(urllib3.connection.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            sockets.add(self.sock)

    class Secure(urllib3.connection.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            sockets.add(self.sock)

    class PlainPool(urllib3.HTTPConnectionPool):
        ConnectionCls = Plain

    class SecurePool(urllib3.HTTPSConnectionPool):
        ConnectionCls = Secure

    return {"http": PlainPool, "https": SecurePool}


class TokenSource:
    """Where the ACL token comes from: a file, re-read whenever it changes (a rotated
    Secret takes effect without a restart), or a fixed value; never printed.

    A file that turns empty or unreadable (a rotation caught half-way) keeps the last
    token it held: syncd never falls back to an anonymous request, which a default-deny
    Consul would answer with nothing (and that would drain every Service)."""

    def __init__(self, value: str | None = None, path: Path | None = None, where: str = ""):
        self.where = where  # the config field or variable it came from, for messages
        self._path = path
        self._value = value
        self._seen: tuple[int, int, int] | None = None
        self._generation = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenSource({self.where or 'none'})"

    @property
    def rereadable(self) -> bool:
        """From a file (it may be rotated), not a fixed value."""
        return self._path is not None

    @property
    def generation(self) -> int:
        """How many times the token has changed (read the file first: `current()`)."""
        return self._generation

    def current(self) -> str | None:
        if self._path is None:
            return self._value
        with self._lock:
            try:
                stat = self._path.stat()
                seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                if seen != self._seen:
                    token, _problem = read_token(self._path, self.where)
                    if token:
                        if self._seen is not None and token != self._value:
                            log.info("%s: the token file changed; using the new token", self.where)
                            self._generation += 1
                        self._value, self._seen = token, seen
                    elif self._value is not None:
                        log.warning(
                            "%s: %s is empty or not one line of text now; keeping the last token",
                            self.where,
                            self._path,
                        )
            except (OSError, UnicodeDecodeError) as exc:
                if self._value is not None:
                    log.warning(
                        "%s: cannot read %s (%s); keeping the last token",
                        self.where,
                        self._path,
                        getattr(exc, "strerror", None) or exc,
                    )
            return self._value


_MAX_TOKEN_BYTES = 64 * 1024


def read_token(path: Path, where: str) -> tuple[str | None, str | None]:
    """A token file's token, or the problem with it (one line naming `where`)."""
    try:
        if not os.path.exists(path):
            return None, f"{where}: {path}: no such file"
        if not os.path.isfile(path):  # a device or pipe would never end, or never answer
            return None, f"{where}: {path} is not a regular file"
        with open(path, "rb") as handle:
            token = handle.read(_MAX_TOKEN_BYTES).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        return None, f"{where}: cannot read {path}: {why}"
    if not token:
        return None, f"{where}: {path} is empty (an empty token would be an anonymous request)"
    if not token.isprintable():
        return None, f"{where}: the token in {path} is not one line of text"
    return token, None


@dataclass(frozen=True)
class ConsulEndpoint:
    """Where and how to reach Consul: the config's `consul:` section, and the usual CONSUL_*
    environment variables for what it leaves out (a config value always wins). The token
    is never logged or printed."""

    scheme: str
    host: str
    port: int
    token: TokenSource = field(default_factory=TokenSource, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


_VARIABLE = re.compile(r"\$\((\w+)\)|\$\{(\w+)\}")


def _expand(text: str, env: Mapping[str, str]) -> str:
    """$(NAME) and ${NAME} from the environment, as Kubernetes does for `env` values but
    not for `envFrom` (deploy/components/consul: CONSUL_HTTP_ADDR=http://$(HOST_IP):8500)."""
    return _VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


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
    scheme, host, port = _address(connection, env, problems)
    token = _token(connection, env, problems)
    files = _tls_files(connection, env, problems)
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


def _address(
    connection: ConsulConnection, env: Mapping[str, str], problems: list[str]
) -> tuple[str, str, int]:
    """consul.address, else CONSUL_HTTP_ADDR (with CONSUL_HTTP_SSL), else the local agent."""
    ssl_text = env.get("CONSUL_HTTP_SSL", "").strip().lower()
    if ssl_text not in _TRUE + _FALSE:
        problems.append(f"CONSUL_HTTP_SSL: {env['CONSUL_HTTP_SSL']!r} is not true or false")
    _said_ssl_verify(env)
    if connection.address:
        address, where = connection.address, "consul.address"
    elif env.get("CONSUL_HTTP_ADDR"):
        address, where = _expand(env["CONSUL_HTTP_ADDR"], env), "CONSUL_HTTP_ADDR"
        unset = _VARIABLE.search(address)
        if unset:
            problems.append(
                f"CONSUL_HTTP_ADDR: {unset.group(0)} is not set in the environment (syncd "
                "expands $(NAME) and ${NAME} in it from the environment)"
            )
            return "http", "127.0.0.1", CONSUL_PORT
    else:
        address, where = f"127.0.0.1:{CONSUL_PORT}", "the default address"
    if "://" not in address and ssl_text in _TRUE:
        address = "https://" + address
    try:
        return parse_http_address(address, CONSUL_PORT)
    except ValueError as exc:
        problems.append(f"{where}: {without_query(str(exc))}")
        return "http", "127.0.0.1", CONSUL_PORT


_SAID: set[str] = set()


def _said_ssl_verify(env: Mapping[str, str]) -> None:
    """CONSUL_HTTP_SSL_VERIFY=false asks the Consul CLI not to verify the agent's
    certificate; syncd always does: said once, rather than silently ignored."""
    value = env.get("CONSUL_HTTP_SSL_VERIFY", "").strip().lower()
    if value in _FALSE[1:] and "ssl_verify" not in _SAID:
        _SAID.add("ssl_verify")
        log.warning(
            "CONSUL_HTTP_SSL_VERIFY=%s is ignored: syncd always verifies Consul's "
            "certificate (give its CA in consul.ca_file or CONSUL_CACERT)",
            value,
        )


def _token(
    connection: ConsulConnection, env: Mapping[str, str], problems: list[str]
) -> TokenSource:
    """consul.token_file beats the environment; there, as Consul's own CLI, the token
    before the token file."""
    variable_token = env.get("CONSUL_HTTP_TOKEN")
    variable_file = env.get("CONSUL_HTTP_TOKEN_FILE")
    if connection.token_file is not None:
        value, problem = read_token(connection.token_file, "consul.token_file")
        problems += [problem] if problem else []
        return TokenSource(value, connection.token_file, "consul.token_file")
    if variable_token is not None:
        value = variable_token.strip()
        if not value:
            problems.append(
                "CONSUL_HTTP_TOKEN is set but empty (an empty token would be an anonymous "
                "request); unset it or give the token"
            )
        elif not value.isprintable():
            problems.append("CONSUL_HTTP_TOKEN: the token contains control characters")
        return TokenSource(value or None, None, "CONSUL_HTTP_TOKEN")
    if variable_file is not None:
        value, problem = read_token(Path(variable_file), "CONSUL_HTTP_TOKEN_FILE")
        problems += [problem] if problem else []
        return TokenSource(value, Path(variable_file), "CONSUL_HTTP_TOKEN_FILE")
    return TokenSource()


def _tls_files(
    connection: ConsulConnection, env: Mapping[str, str], problems: list[str]
) -> dict[str, str | None]:
    """The CA, client certificate and key: from the config, else CONSUL_* variables."""
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
    return files


def make_client(
    connection: ConsulConnection,
    sockets: weakref.WeakSet | None = None,
    token: TokenSource | None = None,
    pool: Http2Pool | None = None,
) -> consul.Consul:
    """A py-consul client for `connection` (see resolve_endpoint); with `sockets`, every
    socket it opens is added there; with `token`, that source of the token (shared); with
    `pool`, its requests are HTTP/2 streams of that pool."""
    try:
        endpoint = resolve_endpoint(connection)
    except ConfigError as exc:  # valid at start; a file since removed, say
        raise SourceError("; ".join(exc.problems)) from None
    client = _Client(
        token or endpoint.token,
        host=endpoint.host.strip("[]"),
        port=endpoint.port,
        scheme=endpoint.scheme,
        verify=endpoint.ca_file or True,
        cert=(endpoint.cert_file, endpoint.key_file)
        if endpoint.cert_file and endpoint.key_file
        else None,
        connections_timeout=connection.timeout,
    )
    if pool is not None:
        client.http = Http2HTTPClient(
            pool, endpoint.host.strip("[]"), endpoint.port, connection.timeout
        )
        return client
    server_name = endpoint.server_name if endpoint.scheme == "https" else None
    if server_name or sockets is not None:
        client.http.session.mount(f"{endpoint.scheme}://", _Adapter(server_name, sockets))
    return client


class _Client(consul.Consul):
    """py-consul's client with the token syncd resolved, read again on every request:
    py-consul's own constructor lets $CONSUL_HTTP_TOKEN override the token it is given,
    and a rotated token file must take effect without a restart."""

    def __init__(self, token: TokenSource, **kwargs: Any):
        super().__init__(**kwargs)
        self._token_source = token
        self.token = None

    def prepare_headers(self, token: str | None = None) -> dict[str, str]:
        current = token or self._token_source.current()
        return {"X-Consul-Token": current} if current else {}


class HeldClient:
    """A client one thread keeps for its blocking queries. Another thread can `interrupt`
    it: the query in flight fails at once (over HTTP/1.1 its connection is shut down; over
    HTTP/2 its stream is reset, the connection is shared), so a stopped watch lets go now,
    not when its wait runs out."""

    def __init__(
        self,
        connection: ConsulConnection,
        token: TokenSource | None = None,
        pool: Http2Pool | None = None,
    ):
        self._sockets: weakref.WeakSet = weakref.WeakSet()
        self.client = make_client(connection, self._sockets, token, pool)

    def interrupt(self) -> None:
        if isinstance(self.client.http, Http2HTTPClient):
            self.client.http.interrupt()
            return
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if not isinstance(self.client.http, Http2HTTPClient):
            self.client.http.session.close()


@dataclass(frozen=True)
class Reply:
    """One answer from Consul."""

    index: int  # X-Consul-Index; 0 when absent
    body: Any  # the parsed JSON; None when `unless_index` matched (not parsed)
    filtered_by_acls: bool = False  # Consul hid what the token may not read


def get(
    client: consul.Consul,
    path: str,
    params: list[tuple[str, Any]] | None,
    *,
    kind: str,
    name: str,
    denied: str,
    unless_index: int | None = None,
    keep: Callable[[dict[str, Any]], Any] | None = None,
) -> Reply:
    """GET `path`; every failure becomes a SourceError naming `name`, counted by `kind`.

    With `unless_index`, an answer whose index equals it is not parsed (the caller has
    it already): a sweep over thousands of unchanged services then costs little CPU.
    With `keep`, each /v1/health/service entry of the answer becomes `keep(entry)` as soon
    as it is parsed: the answer of a service of thousands of instances is never held whole
    as dicts (its size many times over), only as what is kept of it.
    """

    def parse(response: Any) -> Reply:
        return _parse_reply(response, unless_index, keep)

    headers = client.prepare_headers()
    try:
        try:
            reply = client.http.get(parse, path, params=params, headers=headers)
        except consul.ACLPermissionDenied:
            # Refused with a token that a rotation just replaced (the old one revoked before
            # syncd looked at the file again): ask once more with the new one.
            fresh = client.prepare_headers()
            if fresh == headers:
                raise
            reply = client.http.get(parse, path, params=params, headers=fresh)
    except _FAILURES as exc:
        raise _failure(exc, kind, name, denied, client.http.base_uri) from None
    SOURCE_REQUESTS.labels(kind, "ok").inc()
    return reply


def interpret(
    result: consul.base.Response | BaseException,
    *,
    kind: str,
    name: str,
    denied: str,
    uri: str,
    unless_index: int | None = None,
    keep: Callable[[dict[str, Any]], Any] | None = None,
) -> Reply:
    """What `get` makes of a request's outcome, for one made without a thread (an HTTP/2
    stream's answer, or what ended it): the Reply, or a SourceError, counted alike."""
    try:
        if isinstance(result, BaseException):
            raise requests.ConnectionError(str(result) or type(result).__name__) from result
        reply = _parse_reply(result, unless_index, keep)
    except _FAILURES as exc:
        raise _failure(exc, kind, name, denied, uri) from None
    SOURCE_REQUESTS.labels(kind, "ok").inc()
    return reply


def token_headers(token: TokenSource | None) -> dict[str, str]:
    """The request headers that carry the token (read again: it may have been rotated)."""
    current = token.current() if token is not None else None
    return {"X-Consul-Token": current} if current else {}


class _TooMany(Exception):
    """Consul answered 429."""


_FAILURES = (_TooMany, consul.ConsulException, requests.RequestException)


def _failure(exc: BaseException, kind: str, name: str, denied: str, uri: str) -> SourceError:
    """The one-line error a failed request becomes, counted by `kind` and outcome."""
    if isinstance(exc, _TooMany):
        SOURCE_REQUESTS.labels(kind, "throttled").inc()
        return SourceError(
            f"{name}: Consul refused the request (429: too many requests or connections "
            "from this client; see consul.max_connections)"
        )
    if isinstance(exc, consul.ACLPermissionDenied):
        SOURCE_REQUESTS.labels(kind, "denied").inc()
        return SourceError(f"{name}: {denied}")
    if isinstance(exc, consul.NotFound):
        SOURCE_REQUESTS.labels(kind, "error").inc()
        return SourceError(f"{name}: not found")
    if isinstance(exc, consul.ConsulException):
        SOURCE_REQUESTS.labels(kind, "error").inc()
        return SourceError(f"{name}: {' '.join(str(exc).split())[:300]}")
    SOURCE_REQUESTS.labels(kind, "unreachable").inc()
    return SourceUnreachable(f"{name}: cannot reach Consul at {uri}: {network_cause(exc)}")


_CAUSES: tuple[tuple[Any, str], ...] = (
    ((urllib3.exceptions.NameResolutionError, socket.gaierror), "the host name does not resolve"),
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
    ((TimeoutError, requests.Timeout, urllib3.exceptions.TimeoutError), "timed out"),
)


def network_cause(exc: BaseException) -> str:
    """Why a request could not be made, in a few words: a name that does not resolve, a
    refused connection, a timeout, a certificate that does not verify (and why), a reset.
    requests wraps the cause in urllib3's errors two or three levels down."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 10:
        current = todo.pop(0)
        seen.append(current)
        todo += [c for c in (getattr(current, "reason", None), current.__cause__,
                             current.__context__, *current.args)
                 if isinstance(c, BaseException) and c not in seen]  # fmt: skip
    for found in seen:  # the most telling first: what the whole chain says
        if isinstance(found, ssl.SSLCertVerificationError):
            return f"TLS: the certificate does not verify ({found.verify_message})"
    for found in seen:
        if isinstance(found, ssl.SSLError):
            return f"TLS: {found.reason or found}"
    for found in seen:
        if isinstance(found, StreamFailed | Http2Unavailable):
            return str(found)
    for kinds, said in _CAUSES:
        if any(isinstance(found, kinds) for found in seen):
            return said
    return type(exc).__name__


def _parse_reply(
    response: Any, unless_index: int | None, keep: Callable[[dict[str, Any]], Any] | None
) -> Reply:
    """Consul's answer: its index, and its body unless the index is `unless_index`."""
    if response.code == 429:
        raise _TooMany()
    headers = response.headers
    try:
        index = int(headers.get("X-Consul-Index", 0))
    except ValueError:
        index = 0
    filtered = str(headers.get("X-Consul-Results-Filtered-By-ACLs", "")).lower() == "true"
    if unless_index is not None and index == unless_index and response.code == 200:
        return Reply(index, None, filtered)
    if keep is None:
        return Reply(index, consul.callback.CB.json(allow_404=False)(response), filtered)
    text = consul.callback.CB.binary()(response)  # the status checks CB.json makes

    def kept(obj: dict[str, Any]) -> Any:
        # An entry: Node and Service objects and a list of Checks (a meta map, whose values
        # are strings, cannot pass for one, whatever its keys).
        if not (
            isinstance(obj.get("Node"), dict)
            and isinstance(obj.get("Service"), dict)
            and isinstance(obj.get("Checks"), list)
        ):
            return obj
        try:
            return keep(obj)
        except (AttributeError, TypeError, ValueError):  # not one after all: as it came
            return obj

    try:
        return Reply(index, json.loads(text, object_hook=kept), filtered)
    except (ValueError, TypeError) as exc:  # not JSON (`kept` lets nothing else through)
        raise consul.ConsulException(f"Failed to decode JSON: {exc}") from None


class ConsulClients:
    """At most `size` clients (connections) to one Consul, lent to one thread at a time.

    Clients are made when first needed, so an unused pool holds no connection. `held`
    makes a client outside the pool for a thread that keeps it (a blocking watch); the
    caller counts those against its own budget.
    """

    def __init__(self, connection: ConsulConnection, size: int = 4):
        self.connection = connection
        self.size = max(1, size)
        self._endpoint: ConsulEndpoint | None
        try:  # one source of the token for every client: a rotation is seen once
            self._endpoint = resolve_endpoint(connection)
            self.token: TokenSource | None = self._endpoint.token
        except ConfigError:
            self._endpoint = None
            self.token = None  # make_client reports it when a client is needed
        https = self._endpoint is not None and self._endpoint.scheme == "https"
        # True: the agent speaks HTTP/2; None: not known yet (over HTTPS, it is tried
        # first); False: HTTP/1.1 (plain HTTP, turned off, or the agent did not offer h2)
        self.http2: bool | None = None if https and connection.http2 else False
        self._pool: Http2Pool | None = None
        self.on_transport: Callable[[], None] = lambda: None  # HTTP/2 confirmed or refused
        self._idle: queue.LifoQueue[consul.Consul] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()
        self._answered_at = time.monotonic()  # the last answer of any request (start: now)

    def answered(self) -> None:
        """Some request was answered: the agent is there (see consul_readers' check)."""
        self._answered_at = time.monotonic()

    def silent_for(self) -> float:
        """Seconds since any request was last answered."""
        return time.monotonic() - self._answered_at

    def budget(self) -> int:
        """Connections syncd may hold to Consul (consul.max_connections, or its default)."""
        return self.connection.budget(http2=self.http2 is not False)

    def pool(self) -> Http2Pool | None:
        """The HTTP/2 pool every request shares, unless the agent speaks HTTP/1.1 only."""
        if self.http2 is False or self._endpoint is None:
            return None
        with self._lock:
            if self._pool is None:
                endpoint = self._endpoint
                self._pool = Http2Pool(
                    endpoint.host.strip("[]"),
                    endpoint.port,
                    tls_context(endpoint.ca_file, endpoint.cert_file, endpoint.key_file),
                    endpoint.server_name or endpoint.host.strip("[]"),
                    self.budget(),
                    self.connection.timeout,
                    on_unavailable=self._http1_only,
                    on_connected=self._http2_confirmed,
                )
            return self._pool

    def _http2_confirmed(self) -> None:
        if self.http2 is None:
            self.http2 = True
            pool = self._pool
            streams = pool.max_streams if pool is not None else None
            log.info(
                "Consul at %s speaks HTTP/2: up to %s requests on each of %d connections",
                self._endpoint.url if self._endpoint else "?",
                streams,
                self.budget(),
            )
            self.on_transport()

    def _http1_only(self, why: BaseException) -> None:
        if self.http2 is not False:
            self.http2 = False
            log.warning(
                "Consul at %s does not speak HTTP/2 (%s): HTTP/1.1 from now on, one blocking "
                "query per connection",
                self._endpoint.url if self._endpoint else "?",
                why,
            )
            self.on_transport()

    @property
    def open(self) -> int:
        """Clients made by the pool so far (each holds at most one connection)."""
        return self._made

    @contextmanager
    def borrow(self) -> Iterator[consul.Consul]:
        """A client for one request (or a few); waits while all `size` are lent out."""
        client = self._take()
        try:
            yield client
        finally:
            self._idle.put(client)

    def _take(self) -> consul.Consul:
        while True:  # a client made for HTTP/2 before the agent turned out not to speak it
            try:
                client = self._idle.get_nowait()
            except queue.Empty:
                break
            if self.http2 is not False or not isinstance(client.http, Http2HTTPClient):
                return client
            with self._lock:
                self._made -= 1
        with self._lock:
            if self._made < self.size:
                self._made += 1
                make = True
            else:
                make = False
        if make:
            try:
                return make_client(self.connection, token=self.token, pool=self.pool())
            except SourceError:
                with self._lock:
                    self._made -= 1
                raise
        return self._idle.get()

    def held(self) -> HeldClient:
        """A client outside the pool, for a thread that keeps it (counted by the caller:
        over HTTP/2 it is a stream of the shared pool, not a connection)."""
        return HeldClient(self.connection, self.token, self.pool())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


__all__ = [
    "ConsulClients",
    "ConsulEndpoint",
    "Reply",
    "get",
    "interpret",
    "make_client",
    "resolve_endpoint",
    "token_headers",
]
