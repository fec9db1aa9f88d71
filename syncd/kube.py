"""The Kubernetes API as syncd uses it: a few verbs on the kinds of `syncd.kinds`, raw JSON.

Objects travel as plain dicts (the JSON the API server speaks), so what `render` produces,
what `plan` compares and what the server returns are the same shape. Requests are built
from each kind's REST path and sent through the official client's connection pool and
authentication (kubeconfig, exec plugins, in-cluster token rotation), without its model
classes: they would cost a conversion of every object in both directions.

- Every request waits for a token of one client-side bucket (`qps`, `burst`, like
  client-go's), so a cold start with thousands of targets cannot flood the API server.
  The wait is not cut short by a shutdown: a target whose first write is out finishes its
  others (a few tokens, milliseconds), so a stop never leaves one half-written.
- Transient failures (connection errors, timeouts, 429, 5xx) are retried with capped,
  jittered exponential backoff; anything else (validation errors, forbidden, not found) is
  raised at once as a `KubeError`, never retried in a loop. A shutdown interrupts the
  pauses between retries.
- Lists are paginated (`limit` + `continue`), so memory stays bounded for large clusters.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import stat
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import tenacity
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from syncd import __version__
from syncd.errors import KubeConfigError, KubeConflict, KubeError, KubeNotFound
from syncd.kinds import EVENT, KINDS, Kind
from syncd.observability import KUBE_REQUESTS
from syncd.ratelimit import TokenBucket

log = logging.getLogger(__name__)

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError)


@dataclass(frozen=True)
class KubeSettings:
    """How to reach the API server, how hard to try, and how fast to go."""

    kubeconfig: str | None = None
    context: str | None = None
    request_timeout: float = 30.0
    retry_attempts: int = 5
    retry_max_backoff: float = 5.0
    qps: float = 50.0  # sustained requests per second (0: no limit)
    burst: int = 100  # requests allowed at once above qps
    page_size: int = 500  # objects per list page, as client-go's reflector
    identity: str = ""  # who this process is, in the User-Agent (audit logs show it)


def load_client_configuration(settings: KubeSettings) -> k8s.Configuration:
    """Kubeconfig from --kubeconfig, else $KUBECONFIG / ~/.kube/config, else in-cluster.

    Each kubeconfig file must be a regular file of at most 1 MiB (a FIFO would block the
    loader for ever). Its credential plugin, if any, runs here: if it fails, that is
    said as the kubeconfig's problem, not left as a stray line of the client library's."""
    configuration = k8s.Configuration()
    path = settings.kubeconfig or os.environ.get("KUBECONFIG")
    default = Path.home() / ".kube" / "config"
    use_file = bool(path) or default.exists()
    where = (path or str(default)) if use_file else "in-cluster config"
    try:
        if use_file:
            file = path or str(default)
            files = [p for p in file.split(os.pathsep) if p]
            if not any(Path(p).exists() for p in files):
                raise KubeConfigError(f"{file}: kubeconfig not found")
            for name in files:
                _regular_kubeconfig(Path(name))
            with _plugin_errors(where):
                k8s_config.load_kube_config(
                    config_file=file, context=settings.context, client_configuration=configuration
                )
        elif not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise KubeConfigError(
                "no kubeconfig: give --kubeconfig, set $KUBECONFIG or create ~/.kube/config "
                "(in a pod, syncd uses its service account instead)"
            )
        else:
            k8s_config.load_incluster_config(client_configuration=configuration)
    except KubeConfigError:
        raise
    except ConfigException as exc:
        raise KubeConfigError(f"{where}: {_one_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"{where}: not valid YAML: {_one_line(exc)}") from None
    except Exception as exc:  # the loader fails in many ways on bad files: all are one line
        raise KubeConfigError(
            f"{where}: cannot load kubeconfig: {type(exc).__name__}: {_one_line(exc)}"
        ) from None
    configuration.retries = False  # syncd retries itself, with backoff, and counts it
    return configuration


_MAX_KUBECONFIG = 1024 * 1024


def _regular_kubeconfig(path: Path) -> None:
    """A kubeconfig that exists is a regular file of at most 1 MiB, else KubeConfigError."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return  # KUBECONFIG may list files that do not exist (kubectl skips them too)
    except OSError as exc:
        raise KubeConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KubeConfigError(f"{path}: not a regular file; a kubeconfig must be one")
    if info.st_size > _MAX_KUBECONFIG:
        raise KubeConfigError(f"{path}: {info.st_size} bytes; a kubeconfig is at most 1 MiB")


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _plugin_errors(where: str) -> Iterator[None]:
    """The client library logs a failed credential plugin to the root logger and goes on
    without credentials: here it is a KubeConfigError naming the kubeconfig."""
    root = logging.getLogger()
    captured = _Captured()
    handlers, root.handlers = root.handlers, [captured]
    try:
        yield
    finally:
        root.handlers = handlers
    if captured.messages:
        said = "; ".join(_one_line(m) for m in captured.messages)
        raise KubeConfigError(f"{where}: its credential plugin failed: {said}")


class HttpError(Exception):
    """A non-2xx answer, before it becomes a KubeError."""

    def __init__(self, status: int, body: bytes, headers: Any = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, HttpError):
        return exc.status == 429 or 500 <= exc.status <= 599
    return isinstance(exc, _NETWORK_ERRORS)


def _status_message(exc: HttpError) -> tuple[str, str]:
    try:
        body = json.loads(exc.body or b"{}")
        return body.get("message") or str(exc.status), body.get("reason") or ""
    except (ValueError, TypeError, AttributeError):
        return (exc.body or b"").decode(errors="replace")[:200] or str(exc.status), ""


class Transport(Protocol):
    """Where requests go: HTTP to an API server, or (tests) an in-memory API."""

    host: str

    def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]],
        body: bytes | None,
        content_type: str,
        timeout: urllib3.Timeout,
    ) -> Any:  # a urllib3 response, or what reads like one (status, data, stream())
        ...


class HttpTransport:
    """Requests over HTTP with the kubeconfig's credentials (the official client's)."""

    def __init__(self, api_client: k8s.ApiClient, user_agent: str):
        self._api_client = api_client
        self._pool = api_client.rest_client.pool_manager
        api_client.user_agent = user_agent
        self.host: str = api_client.configuration.host

    def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]],
        body: bytes | None,
        content_type: str,
        timeout: urllib3.Timeout,
    ) -> urllib3.BaseHTTPResponse:
        _method, url, headers, _body, _post = self._api_client.param_serialize(
            method, path, query_params=query, auth_settings=["BearerToken"]
        )
        headers["Accept"] = "application/json"
        if body is not None:
            headers["Content-Type"] = content_type
        return self._pool.request(
            method,
            url,
            body=body,
            headers=headers,
            timeout=timeout,
            preload_content=False,
            retries=False,
        )

    def close(self) -> None:
        self._api_client.close()


class Kube:
    """Reads and writes the objects syncd works with; counts every call by verb."""

    def __init__(
        self,
        transport: Transport,
        settings: KubeSettings | None = None,
        stop: threading.Event | None = None,
    ):
        self._transport = transport
        self._settings = settings or KubeSettings()
        self._stop = stop or threading.Event()
        self._bucket = TokenBucket(self._settings.qps, self._settings.burst)
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    @classmethod
    def connect(cls, settings: KubeSettings, stop: threading.Event | None = None) -> Kube:
        configuration = load_client_configuration(settings)
        if not configuration.verify_ssl:  # said once here, not by urllib3 on every request
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
            log.warning("the kubeconfig turns off TLS verification of %s", configuration.host)
        identity = f" ({settings.identity})" if settings.identity else ""
        transport = HttpTransport(k8s.ApiClient(configuration), f"syncd/{__version__}{identity}")
        return cls(transport, settings, stop)

    @property
    def host(self) -> str:
        return self._transport.host

    @property
    def writes(self) -> int:
        return sum(n for verb, n in self.calls.items() if verb in WRITE_VERBS)

    def close(self) -> None:
        close = getattr(self._transport, "close", None)
        if close is not None:
            close()

    # -- the one place every request goes through

    def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: urllib3.Timeout | float | None = None,
    ) -> Any:
        """One request; raises HttpError on non-2xx."""
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        if not isinstance(timeout, urllib3.Timeout):
            timeout = urllib3.Timeout(total=timeout or self._settings.request_timeout)
        response = self._transport.request(
            method, path, query or [], payload, content_type, timeout
        )
        if not 200 <= response.status <= 299:
            data = response.data
            response.release_conn()
            raise HttpError(response.status, data, response.headers)
        return response

    def _call(
        self,
        verb: str,
        what: str,
        method: str,
        path: str,
        fence: Callable[[], bool] | None = None,
        **kwargs,
    ) -> Any:
        """One request, retried while its failure is transient. `fence` (a leader's) is
        checked before every attempt: a replica that lost the lease while a write was
        being retried (frozen, partitioned) sends nothing more."""

        def attempt() -> Any:
            if fence is not None and not fence():
                raise KubeError(f"{verb} {what}: not sent: this replica is not the leader any more")
            self._bucket.wait()
            with self._calls_lock:
                self.calls[verb] += 1
            KUBE_REQUESTS.labels(verb).inc()
            response = self._send(method, path, **kwargs)
            data = response.data
            response.release_conn()
            return json.loads(data) if data else None

        retrying = _retrying(self._settings, self._stop, f"{verb} {what}")
        try:
            return retrying(attempt)
        except (HttpError, *_NETWORK_ERRORS) as exc:
            raise _error(verb, what, exc, self.host) from None

    # -- verbs

    def read_path(self, path: str) -> Any:
        """GET what is not an object (`/version`: reachable, credentials work; `/apis/<group>/
        <version>`: which kinds the server has), as JSON. KubeNotFound: not served."""
        return self._call("get", path, "GET", path)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        row = KINDS[kind]
        try:
            obj = self._call(
                "get", f"{kind} {namespace}/{name}", "GET", row.item_path(namespace, name)
            )
        except KubeNotFound:
            return None
        return _with_kind(obj, row)

    def list(
        self, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """Objects of `kind` matching the selector, in one namespace or all of them."""
        return self.list_with_version(kind, namespace, label_selector)[0]

    def list_with_version(
        self, kind: str, namespace: str | None, label_selector: str = ""
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """Like list, plus the collection's resourceVersion to start a watch from."""
        items: builtins.list[dict[str, Any]] = []
        version = ""
        for page, page_version in self.list_pages(kind, namespace, label_selector):
            items.extend(page)
            version = page_version or version
        return items, version

    def list_pages(
        self, kind: str, namespace: str | None, label_selector: str = ""
    ) -> Iterator[tuple[builtins.list[dict[str, Any]], str]]:
        """The list one page at a time (`page_size` objects), with the collection's
        resourceVersion on the last page: a caller that keeps less than whole objects
        never holds them all at once."""
        row = KINDS[kind]
        where = namespace or "all namespaces"
        token = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", self._settings.page_size)]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if token:
                query.append(("continue", token))
            result = self._call(
                "list", f"{kind} in {where}", "GET", row.collection_path(namespace), query=query
            )
            result = result or {}
            metadata = result.get("metadata") or {}
            token = metadata.get("continue") or ""
            page = [_with_kind(item, row) for item in result.get("items") or ()]
            yield page, ("" if token else metadata.get("resourceVersion", ""))
            if not token:
                return

    def watch(
        self,
        kind: str,
        namespace: str | None,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int = 300,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events (type, object) for `kind`, from `resource_version` on.

        The request is made here (a KubeError if it fails); the events follow as the
        returned iterator is read. It ends when the server closes the watch and raises
        KubeError on failure, including 410 Gone (list again and start from there).
        """
        row = KINDS[kind]
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", timeout_seconds),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        self._bucket.wait()
        with self._calls_lock:
            self.calls["watch"] += 1
        KUBE_REQUESTS.labels("watch").inc()
        try:
            response = self._send(
                "GET",
                row.collection_path(namespace),
                query=query,
                timeout=urllib3.Timeout(
                    connect=self._settings.request_timeout, read=timeout_seconds + 30
                ),
            )
        except (HttpError, *_NETWORK_ERRORS) as exc:
            raise _error("watch", kind, exc, self.host) from None
        return _watch_events(response, row)

    def create(
        self,
        obj: dict[str, Any],
        dry_run: bool = False,
        fence: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """POST; with `dry_run` the server validates, defaults and answers, storing nothing."""
        row, metadata = KINDS[obj["kind"]], obj["metadata"]
        namespace = metadata["namespace"]
        result = self._call(
            "dry-run create" if dry_run else "create",  # a dry run is not a write
            f"{row.name} {namespace}/{metadata.get('name') or metadata.get('generateName')}",
            "POST",
            row.collection_path(namespace),
            body=obj,
            fence=fence,
            **({"query": [("dryRun", "All")]} if dry_run else {}),
        )
        return _with_kind(result, row)

    def replace(
        self, obj: dict[str, Any], fence: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """PUT, guarded by metadata.resourceVersion: fails with KubeConflict if it changed."""
        row, metadata = KINDS[obj["kind"]], obj["metadata"]
        result = self._call(
            "update",
            f"{row.name} {metadata['namespace']}/{metadata['name']}",
            "PUT",
            row.item_path(metadata["namespace"], metadata["name"]),
            body=obj,
            fence=fence,
        )
        return _with_kind(result, row)

    def merge_patch(
        self,
        kind: str,
        namespace: str,
        name: str,
        patch: dict,
        fence: Callable[[], bool] | None = None,
        subresource: str = "",
    ) -> dict[str, Any]:
        """JSON merge patch: lists in `patch` replace the live lists whole. `subresource`:
        e.g. "status", a custom resource's status (what its controller alone writes)."""
        row = KINDS[kind]
        path = row.item_path(namespace, name) + (f"/{subresource}" if subresource else "")
        result = self._call(
            "patch",
            f"{kind} {namespace}/{name}" + (f" {subresource}" if subresource else ""),
            "PATCH",
            path,
            body=patch,
            content_type="application/merge-patch+json",
            fence=fence,
        )
        return _with_kind(result, row)

    def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        """Record a core/v1 Event (what `kubectl describe` shows under the object)."""
        self._call(
            "create", f"Event in {namespace}", "POST", EVENT.collection_path(namespace), body=event
        )

    def delete_collection(self, kind: str, namespace: str, label_selector: str) -> None:
        """Delete every object of `kind` in `namespace` matching the selector (one call)."""
        row = KINDS[kind]
        self._call(
            "deletecollection",
            f"{kind} in {namespace}",
            "DELETE",
            row.collection_path(namespace),
            query=[("labelSelector", label_selector)],
        )

    def delete(
        self,
        kind: str,
        namespace: str,
        name: str,
        uid: str | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> bool:
        """Delete, only if it is still the object we read (same uid); False if already gone."""
        row = KINDS[kind]
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            self._call(
                "delete",
                f"{kind} {namespace}/{name}",
                "DELETE",
                row.item_path(namespace, name),
                body=body,
                fence=fence,
            )
        except KubeNotFound:
            return False
        return True


def _retrying(settings: KubeSettings, stop: threading.Event, what: str) -> tenacity.Retrying:
    """Retry while the failure is transient: capped, jittered backoff; a shutdown ends it."""

    def pause(seconds: float) -> None:
        stop.wait(seconds)  # a shutdown cuts a pause short

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s failed (%s); retrying in %.1fs", what, _describe(exc), state.upcoming_sleep)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_transient),
        wait=tenacity.wait_random_exponential(multiplier=0.2, max=settings.retry_max_backoff),
        stop=(
            tenacity.stop_after_attempt(settings.retry_attempts)
            | tenacity.stop_when_event_set(stop)
        ),
        sleep=pause,
        before_sleep=before_sleep,
        reraise=True,
    )


def _error(verb: str, what: str, exc: BaseException, host: str) -> KubeError:
    """The KubeError (or subclass) a failed call becomes."""
    if isinstance(exc, HttpError):
        message, reason = _status_message(exc)
        error = {404: KubeNotFound, 409: KubeConflict}.get(exc.status, KubeError)
        return error(f"{verb} {what}: {exc.status} {message}", exc.status, reason)
    return KubeError(f"{verb} {what}: cannot reach {host}: {_describe(exc)}")


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, HttpError):
        message, _ = _status_message(exc)
        return f"{exc.status} {message}".strip()
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return _one_line(exc.reason)
    return _one_line(exc) if exc else "unknown error"


def _watch_events(response: Any, row: Kind) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        for line in iter_resp_lines(response):
            event = json.loads(line)
            obj = event.get("object") or {}
            if event.get("type") == "ERROR":
                raise KubeError(
                    f"watch {row.name}: {obj.get('message', 'error')}",
                    obj.get("code"),
                    obj.get("reason", ""),
                )
            yield event.get("type", ""), _with_kind(obj, row)
    except (*_NETWORK_ERRORS, ValueError) as exc:
        raise KubeError(f"watch {row.name}: interrupted: {_describe(exc)}") from None
    finally:
        response.release_conn()


def _with_kind(obj: Any, row: Kind) -> dict[str, Any]:
    """List and watch items omit kind/apiVersion; every object syncd handles carries them."""
    if not isinstance(obj, dict):
        return obj
    obj.setdefault("kind", row.name)
    obj.setdefault("apiVersion", row.api_version)
    return obj


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
