"""How syncd reaches the API server: the kubeconfig (or the pod's service account), the
HTTP transport through the official client's connection pool and authentication, and
what a failure is (transient: retried with capped, jittered backoff; anything else raised
at once as a KubeError). The typed calls are `syncd.kube`'s."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import stat
import threading
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

from syncd.errors import KubeConfigError, KubeConflict, KubeError, KubeNotFound
from syncd.observability import KUBE_FAILURES

log = logging.getLogger(__name__)

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
NETWORK_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError)


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
        raise KubeConfigError(f"{where}: {one_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"{where}: not valid YAML: {one_line(exc)}") from None
    except Exception as exc:  # the loader fails in many ways on bad files: all are one line
        raise KubeConfigError(
            f"{where}: cannot load kubeconfig: {type(exc).__name__}: {one_line(exc)}"
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
        said = "; ".join(one_line(m) for m in captured.messages)
        raise KubeConfigError(f"{where}: its credential plugin failed: {said}")


class HttpError(Exception):
    """A non-2xx answer, before it becomes a KubeError."""

    def __init__(self, status: int, body: bytes, headers: Any = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, HttpError):
        return exc.status == 429 or 500 <= exc.status <= 599
    return isinstance(exc, NETWORK_ERRORS)


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


def retry_policy(
    settings: KubeSettings,
    stop: threading.Event,
    what: str,
    on_failure: Callable[[BaseException], None] = lambda exc: None,
) -> tenacity.Retrying:
    """Retry while the failure is transient: capped, jittered backoff; a shutdown ends it.
    `on_failure` hears of every failed attempt that is retried."""

    def pause(seconds: float) -> None:
        stop.wait(seconds)  # a shutdown cuts a pause short

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            KUBE_FAILURES.labels(failure_reason(exc)).inc()
            on_failure(exc)
        log.warning(
            "%s failed (%s); retrying in %.1fs",
            what,
            describe_failure(exc),
            state.upcoming_sleep,
        )

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_random_exponential(multiplier=0.2, max=settings.retry_max_backoff),
        stop=(
            tenacity.stop_after_attempt(settings.retry_attempts)
            | tenacity.stop_when_event_set(stop)
        ),
        sleep=pause,
        before_sleep=before_sleep,
        reraise=True,
    )


def api_error(verb: str, what: str, exc: BaseException, host: str) -> KubeError:
    """The KubeError (or subclass) a failed call becomes (its last attempt counted, when
    the network or the server failed it: retried attempts are counted as they fail)."""
    if is_transient(exc):
        KUBE_FAILURES.labels(failure_reason(exc)).inc()
    if isinstance(exc, HttpError):
        message, reason = _status_message(exc)
        error = {404: KubeNotFound, 409: KubeConflict}.get(exc.status, KubeError)
        return error(f"{verb} {what}: {exc.status} {message}", exc.status, reason)
    return KubeError(f"{verb} {what}: cannot reach {host}: {describe_failure(exc)}")


def failure_reason(exc: BaseException) -> str:
    """The reason label of syncd_kube_request_failures_total for a failed request."""
    if isinstance(exc, HttpError):
        return "throttled" if exc.status == 429 else "server" if exc.status >= 500 else "other"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    for kinds, reason in _FAILURE_REASONS:
        if isinstance(exc, kinds):
            return reason
    text = str(exc).lower()
    return "reset" if "reset" in text or "ended prematurely" in text else "other"


_FAILURE_REASONS: tuple[tuple[Any, str], ...] = (
    ((TimeoutError, urllib3.exceptions.TimeoutError), "timeout"),
    ((ConnectionRefusedError, urllib3.exceptions.NewConnectionError), "refused"),
    ((ConnectionResetError, urllib3.exceptions.ProtocolError), "reset"),
    ((urllib3.exceptions.SSLError, ssl.SSLError), "tls"),
)


def describe_failure(exc: BaseException | None) -> str:
    if isinstance(exc, HttpError):
        message, _ = _status_message(exc)
        return f"{exc.status} {message}".strip()
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return one_line(exc.reason)
    return one_line(exc) if exc else "unknown error"


def one_line(exc: object) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
