"""Small helpers to write configs and run syncd the way a user does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from harness.kube_apiserver import server_binaries
from syncd.kube import Kube

REPO = Path(__file__).resolve().parents[1]
CEPH_EXAMPLE = REPO / "config" / "ceph-rgw.yaml"
CEPH_HOSTS = [f"192.168.7.{n}" for n in range(50, 56)]
CEPH_PAIRS = {(host, port) for host in CEPH_HOSTS for port in (8080, 8081)}


def target_with(namespace: str, service: str, *sources: dict, **extra: Any) -> dict:
    """A one-port (http: 80) target with these sources (tiers) and extra settings."""
    return {
        "namespace": namespace,
        "service": service,
        "ports": [{"name": "http", "port": 80}],
        "sources": list(sources),
        **extra,
    }


def target(namespace: str, service: str, backends: Iterable[Any], **extra: Any) -> dict:
    """A one-port (http: 80) target with a static source."""
    return target_with(namespace, service, {"type": "static", "backends": list(backends)}, **extra)


def write_config(path: Path, *targets: dict, **top_level: Any) -> Path:
    """A config file with these targets and top-level sections (consul=..., ...)."""
    document = {"version": 1, **top_level, "targets": list(targets)}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def ceph_target(namespace: str, **extra: Any) -> dict:
    """The shipped Ceph example's target, moved into a test namespace."""
    data = yaml.safe_load(CEPH_EXAMPLE.read_text())
    return {**data["targets"][0], "namespace": namespace, **extra}


def syncd(
    *args: str | Path, check: int | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (a new process); optionally assert the exit code.
    `env` adds to (or, with "" values, removes from) the environment."""
    environment = {**os.environ, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "syncd", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
        env={k: v for k, v in environment.items() if v},
    )
    if check is not None:
        assert result.returncode == check, (
            f"exit {result.returncode}, wanted {check}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def run_once(config: Path, kubeconfig: Path, *extra: str, check: int | None = 0):
    return syncd(
        "run", "--config", config, "--kubeconfig", kubeconfig, "--once", *extra, check=check
    )


def slices_of(kube: Kube, namespace: str, service: str) -> list[dict]:
    return sorted(
        kube.list("EndpointSlice", namespace, f"kubernetes.io/service-name={service}"),
        key=lambda s: s["metadata"]["name"],
    )


def endpoint_pairs(slices: Iterable[dict]) -> set[tuple[str, int]]:
    """(address, port) for every endpoint of every slice."""
    pairs = set()
    for obj in slices:
        for endpoint in obj.get("endpoints") or ():
            for port in obj.get("ports") or ():
                pairs.add((endpoint["addresses"][0], port["port"]))
    return pairs


def readiness(slices: Iterable[dict]) -> dict[tuple[str, int], bool]:
    return {
        (endpoint["addresses"][0], port["port"]): endpoint["conditions"]["ready"]
        for obj in slices
        for endpoint in obj.get("endpoints") or ()
        for port in obj.get("ports") or ()
    }


def wait_for(condition, what: str, timeout: float = 10.0, interval: float = 0.05):
    """Poll until `condition()` is truthy; returns its value, or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process `pid` to local port `port` (from `ss`)."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", "dport", f"= :{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if re.search(rf"pid={pid},", line))


def scrape(address: str) -> str:
    """syncd's /metrics; "" while it is not serving yet."""
    try:
        return urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    except OSError:
        return ""


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` that carry all these labels."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric == name and all(
            w in label_text.split(",") or w + "}" in label_text.split(",") for w in wanted
        ):
            total += float(value)
    return total


def pod_templates(documents: list[dict]) -> list[dict]:
    """The pod templates of the Deployments and CronJobs among rendered manifests."""
    templates = []
    for doc in documents:
        spec = doc.get("spec") or {}
        if doc["kind"] == "Deployment":
            templates.append(spec["template"])
        elif doc["kind"] == "CronJob":
            templates.append(spec["jobTemplate"]["spec"]["template"])
    return templates


def kustomize_build(where: Path, components: Iterable[str] | None = None) -> list[dict]:
    """`kustomize build` of an overlay directory; or, given components, of a copy of deploy/
    (under `where`) with those components (e.g. "components/monitoring") listed in its own
    kustomization.yaml, the way the README says to add them."""
    directory = where
    if components is not None:
        directory = where / f"deploy-{uuid.uuid4().hex[:6]}"
        shutil.copytree(REPO / "deploy", directory)
        kustomization = directory / "kustomization.yaml"
        settings = yaml.safe_load(kustomization.read_text())
        kustomization.write_text(yaml.safe_dump({**settings, "components": list(components)}))
    result = subprocess.run(
        [server_binaries()["kustomize"], "build", str(directory)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def dry_run_apply(api_client, documents: Iterable[dict], namespace: str | None = None) -> None:
    """`kubectl apply --dry-run=server` of every document: validated and admitted by the
    API server, stored nowhere. `namespace`: for namespaced objects that name none (Helm's)."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(api_client)
    for document in documents:
        resource = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        dynamic.server_side_apply(
            resource,
            body=document,
            name=document["metadata"]["name"],
            namespace=document["metadata"].get("namespace")
            or (namespace if resource.namespaced else None),
            field_manager="syncd-tests",
            force_conflicts=True,
            dry_run="All",
        )


def only_stale_events(writes: Iterable) -> bool:
    """Audit writes of a stale target: nothing but its SourcesUnavailable Event (if it
    was recorded in the window; the same Event again is a 409): no object written."""
    return all(e.resource == "events" and ".syncd-" in e.name for e in writes)
