"""The Kubernetes API as syncd uses it: a few verbs on three kinds, raw JSON, with retries.

Objects travel as plain dicts (the JSON the API server speaks), so what `render` produces,
what `plan` compares and what the server returns are the same shape. Transient failures
(connection errors, timeouts, 429, 5xx) are retried with capped, jittered exponential
backoff; anything else (validation errors, forbidden, not found) is raised at once as a
`KubeError`, never retried in a loop. Every call has a timeout.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenacity
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from syncd.errors import KubeConfigError, KubeConflict, KubeError, KubeNotFound
from syncd.observability import KUBE_REQUESTS

log = logging.getLogger(__name__)

WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class KubeSettings:
    """How to reach the API server and how hard to try."""

    kubeconfig: str | None = None
    context: str | None = None
    request_timeout: float = 30.0
    retry_attempts: int = 5
    retry_max_backoff: float = 5.0


@dataclass(frozen=True)
class _Kind:
    api: str  # "core" or "discovery"
    snake: str  # method name part, e.g. "endpoint_slice"


_KINDS = {
    "Service": _Kind("core", "service"),
    "Endpoints": _Kind("core", "endpoints"),
    "EndpointSlice": _Kind("discovery", "endpoint_slice"),
}


def load_client_configuration(settings: KubeSettings) -> k8s.Configuration:
    """Kubeconfig from --kubeconfig, else $KUBECONFIG / ~/.kube/config, else in-cluster."""
    configuration = k8s.Configuration()
    path = settings.kubeconfig or os.environ.get("KUBECONFIG")
    default = Path.home() / ".kube" / "config"
    try:
        if path or default.exists():
            file = path or str(default)
            if not any(Path(p).exists() for p in file.split(os.pathsep)):
                raise KubeConfigError(f"{file}: kubeconfig not found")
            k8s_config.load_kube_config(
                config_file=file, context=settings.context, client_configuration=configuration
            )
        else:
            k8s_config.load_incluster_config(client_configuration=configuration)
    except ConfigException as exc:
        where = path or str(default) if (path or default.exists()) else "in-cluster config"
        raise KubeConfigError(f"{where}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise KubeConfigError(f"{path or default}: cannot load kubeconfig: {exc}") from None
    configuration.retries = False  # syncd retries itself, with backoff, and counts it
    return configuration


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or 500 <= (exc.status or 0) <= 599
    return isinstance(exc, _NETWORK_ERRORS)


def _status_message(exc: ApiException) -> tuple[str, str]:
    try:
        body = json.loads(exc.body or "{}")
        return body.get("message") or exc.reason or "", body.get("reason") or ""
    except (ValueError, TypeError, AttributeError):
        return (exc.reason or str(exc.status)), ""


class Kube:
    """Reads and writes the objects syncd works with; counts every call by verb."""

    def __init__(self, api_client: k8s.ApiClient, settings: KubeSettings = KubeSettings()):
        self._api_client = api_client
        self._settings = settings
        # resourceVersions of objects syncd itself wrote, so watch events it caused are skipped
        self.written_versions: collections.deque[str] = collections.deque(maxlen=1000)
        self._apis = {
            "core": k8s.CoreV1Api(api_client),
            "discovery": k8s.DiscoveryV1Api(api_client),
        }
        self.calls: Counter[str] = Counter()

    @classmethod
    def connect(cls, settings: KubeSettings) -> Kube:
        return cls(k8s.ApiClient(load_client_configuration(settings)), settings)

    @property
    def host(self) -> str:
        return self._api_client.configuration.host

    @property
    def writes(self) -> int:
        return sum(n for verb, n in self.calls.items() if verb in WRITE_VERBS)

    def close(self) -> None:
        self._api_client.close()

    # -- the one place every request goes through

    def _call(self, verb: str, what: str, method: Callable[..., Any], *args, **kwargs) -> Any:
        kwargs.setdefault("_request_timeout", self._settings.request_timeout)
        kwargs["_preload_content"] = False

        def attempt() -> Any:
            self.calls[verb] += 1
            KUBE_REQUESTS.labels(verb).inc()
            response = method(*args, **kwargs)
            data = response.data
            result = json.loads(data) if data else None
            if verb in ("create", "update", "patch") and isinstance(result, dict):
                version = (result.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.written_versions.append(version)
            return result

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "%s %s failed (%s); retrying in %.1fs",
                verb,
                what,
                _describe(exc),
                state.upcoming_sleep,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_transient),
            wait=tenacity.wait_random_exponential(
                multiplier=0.2, max=self._settings.retry_max_backoff
            ),
            stop=tenacity.stop_after_attempt(self._settings.retry_attempts),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except (ApiException, *_NETWORK_ERRORS) as exc:
            raise self._error(verb, what, exc) from None

    def _error(self, verb: str, what: str, exc: Exception) -> KubeError:
        """The KubeError (or subclass) a failed call becomes."""
        if isinstance(exc, ApiException):
            message, reason = _status_message(exc)
            error = {404: KubeNotFound, 409: KubeConflict}.get(exc.status, KubeError)
            return error(f"{verb} {what}: {exc.status} {message}", exc.status, reason)
        return KubeError(f"{verb} {what}: cannot reach {self.host}: {_describe(exc)}")

    def _method(self, kind: str, template: str) -> Callable[..., Any]:
        spec = _KINDS[kind]
        return getattr(self._apis[spec.api], template.format(spec.snake))

    # -- verbs

    def version(self) -> dict[str, Any]:
        """GET /version: proves the API server is reachable and the credentials work."""
        api = k8s.VersionApi(self._api_client)
        return self._call("get", "/version", api.get_code)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call(
                "get",
                f"{kind} {namespace}/{name}",
                self._method(kind, "read_namespaced_{}"),
                name,
                namespace,
            )
        except KubeNotFound:
            return None

    def list(self, kind: str, namespace: str | None, label_selector: str) -> list[dict[str, Any]]:
        """Objects of `kind` matching the selector, in one namespace or all of them."""
        return self.list_with_version(kind, namespace, label_selector)[0]

    def list_with_version(
        self, kind: str, namespace: str | None, label_selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        """Like list, plus the collection's resourceVersion to start a watch from."""
        where = namespace or "all namespaces"
        if namespace:
            method = self._method(kind, "list_namespaced_{}")
            result = self._call(
                "list", f"{kind} in {where}", method, namespace, label_selector=label_selector
            )
        else:
            method = self._method(kind, "list_{}_for_all_namespaces")
            result = self._call("list", f"{kind} in {where}", method, label_selector=label_selector)
        items = (result or {}).get("items") or []
        for item in items:  # list responses omit kind/apiVersion on items
            item.setdefault("kind", kind)
        return items, ((result or {}).get("metadata") or {}).get("resourceVersion", "")

    def watch(
        self, kind: str, label_selector: str, resource_version: str, timeout_seconds: int = 300
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events (type, object) for `kind` in all namespaces, from `resource_version` on.

        Ends when the server closes the watch; raises KubeError on failure, including
        410 Gone (the caller lists again and restarts from the new version).
        """
        method = self._method(kind, "list_{}_for_all_namespaces")
        self.calls["watch"] += 1
        KUBE_REQUESTS.labels("watch").inc()
        try:
            response = method(
                label_selector=label_selector,
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _preload_content=False,
                _request_timeout=(self._settings.request_timeout, timeout_seconds + 30),
            )
        except (ApiException, *_NETWORK_ERRORS) as exc:
            raise self._error("watch", kind, exc) from None
        try:
            for line in iter_resp_lines(response):
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise KubeError(
                        f"watch {kind}: {obj.get('message', 'error')}",
                        obj.get("code"),
                        obj.get("reason", ""),
                    )
                obj.setdefault("kind", kind)
                yield event.get("type", ""), obj
        except (*_NETWORK_ERRORS, ValueError) as exc:
            raise KubeError(f"watch {kind}: interrupted: {_describe(exc)}") from None
        finally:
            response.release_conn()

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind, namespace = obj["kind"], obj["metadata"]["namespace"]
        return self._call(
            "create",
            f"{kind} {namespace}/{obj['metadata']['name']}",
            self._method(kind, "create_namespaced_{}"),
            namespace,
            obj,
        )

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT, guarded by metadata.resourceVersion: fails with KubeConflict if it changed."""
        kind, metadata = obj["kind"], obj["metadata"]
        return self._call(
            "update",
            f"{kind} {metadata['namespace']}/{metadata['name']}",
            self._method(kind, "replace_namespaced_{}"),
            metadata["name"],
            metadata["namespace"],
            obj,
        )

    def merge_patch(self, kind: str, namespace: str, name: str, patch: dict) -> dict[str, Any]:
        """JSON merge patch: lists in `patch` replace the live lists whole."""
        return self._call(
            "patch",
            f"{kind} {namespace}/{name}",
            self._method(kind, "patch_namespaced_{}"),
            name,
            namespace,
            patch,
            _content_type="application/merge-patch+json",
        )

    def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        """Record a core/v1 Event (what `kubectl describe` shows under the object)."""
        api = self._apis["core"]
        self._call("create", f"Event in {namespace}", api.create_namespaced_event, namespace, event)

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete, only if it is still the object we read (same uid); gone already is fine."""
        body = {"preconditions": {"uid": uid}} if uid else None
        with contextlib.suppress(KubeNotFound):
            self._call(
                "delete",
                f"{kind} {namespace}/{name}",
                self._method(kind, "delete_namespaced_{}"),
                name,
                namespace,
                body=body,
            )


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, ApiException):
        message, _ = _status_message(exc)
        return f"{exc.status} {message}".strip()
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return str(exc.reason)
    return str(exc) or type(exc).__name__
