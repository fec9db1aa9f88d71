"""Fixtures shared by all tests. Servers start lazily, only for tests that ask for them."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import settings
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils

from harness.helpers import wait_for
from harness.kube_apiserver import KubeApiServer, ServerStartError, server_binaries
from harness.syncd_process import start_syncd
from syncd.kube import Kube, KubeSettings

settings.register_profile("ci", max_examples=300, derandomize=True, deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("thorough", max_examples=5000, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


# What a test needs beyond Python, by the fixtures it uses or the tier it is in; `-m` selects
# (e.g. `pytest -m "not podman"`). tests/unit needs none of them: a unit test asking for a
# server is an error, so `make unit` stays fast and runs without root.
_SERVER_FIXTURES = {
    "apiserver", "private_apiserver", "admin", "admin_api", "namespace", "run_syncd", "daemon",
    "consul", "consul_acl", "consul_persistent", "consul_tight", "consul_dev", "consul_tls",
    "consul_dev_any",
    "bind", "bind_private", "test_hosts", "coredns", "toxiproxy",
}  # fmt: skip
_TIER_MARKS = {"dataplane": ("root", "netns"), "image": ("root", "podman")}


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = item.path.parent.name
        used = set(getattr(item, "fixturenames", ()))
        if tier == "unit" and used & _SERVER_FIXTURES:
            raise pytest.UsageError(
                f"{item.nodeid}: a unit test may not use {used & _SERVER_FIXTURES}"
            )
        marks = set(_TIER_MARKS.get(tier, ()))
        if used & _SERVER_FIXTURES:
            marks.add("servers")
        if "test_hosts" in used:
            marks |= {"root", "netns"}
        for mark in sorted(marks):
            item.add_marker(mark)


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory) -> Iterator[KubeApiServer]:
    """A real kube-apiserver + etcd with RBAC, deploy/rbac.yaml applied for the syncd user."""
    server = KubeApiServer(tmp_path_factory.mktemp("kube-apiserver"))
    try:
        server.start()
    except ServerStartError as exc:
        server.stop()
        pytest.fail(f"the real kube-apiserver could not start: {exc}", pytrace=False)
    server.apply_deploy_rbac()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_apiserver(tmp_path_factory) -> Iterator[KubeApiServer]:
    """A kube-apiserver + etcd of the test module's own (for tests that load it heavily)."""
    server = _started(KubeApiServer(tmp_path_factory.mktemp("private-apiserver")), "kube-apiserver")
    server.apply_deploy_rbac()
    yield server
    server.stop()


@pytest.fixture
def admin_api(apiserver) -> Iterator[k8s.ApiClient]:
    """The official client as cluster admin, for setup and for looking at the results."""
    api_client = apiserver.admin_client()
    yield api_client
    api_client.close()


@pytest.fixture
def admin(apiserver) -> Iterator[Kube]:
    """syncd's own thin client, but with admin rights: reads raw JSON like syncd sees it."""
    kube = Kube.connect(KubeSettings(kubeconfig=str(apiserver.admin_kubeconfig)))
    yield kube
    kube.close()


@pytest.fixture
def namespace(admin_api) -> str:
    """A fresh namespace per test (namespaces are never deleted: no controller-manager runs)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s.CoreV1Api(admin_api).create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture
def run_syncd(apiserver, namespace):
    """`syncd run --once` as the syncd service account, as its own instance (owner id).

    Every test is a separate syncd instance: pruning is per owner id, so tests sharing the
    API server never prune each other's objects.
    """
    from harness.helpers import run_once

    def run(config, *extra: str, check: int | None = 0, owner: str | None = ""):
        """owner: "" for the test's own (the namespace), None for syncd's default."""
        identity = [] if owner is None else ["--owner-id", owner or namespace]
        return run_once(config, apiserver.syncd_kubeconfig, *identity, *extra, check=check)

    return run


def _started(server, what: str):
    """Start a real server for a fixture; if it cannot start the test fails (never skips)."""
    try:
        server.start()
    except ServerStartError as exc:
        server.stop()
        pytest.fail(f"the real {what} could not start: {exc}", pytrace=False)
    return server


def _start_consul(workdir: Path, **options):
    from harness.consul_agent import ConsulAgent

    return _started(ConsulAgent(workdir, **options), "Consul agent")


@pytest.fixture(scope="session")
def consul(tmp_path_factory):
    """A real `consul agent -dev` on loopback; tests use their own service names."""
    agent = _start_consul(tmp_path_factory.mktemp("consul"))
    yield agent
    agent.stop()


@pytest.fixture(scope="session", params=["http", "https"])
def consul_acl(request, tmp_path_factory):
    """A real Consul agent with ACLs on and default policy deny, over plain HTTP and over
    HTTPS (HTTP/2): each test using it runs on both."""
    agent = _start_consul(
        tmp_path_factory.mktemp("consul-acl"), acl=True, tls=request.param == "https"
    )
    yield agent
    agent.stop()


@pytest.fixture
def consul_persistent(tmp_path):
    """A one-node Consul server with a data dir: registrations survive restart()."""
    agent = _start_consul(tmp_path / "consul", dev=False)
    yield agent
    agent.stop()


@pytest.fixture
def consul_tight(tmp_path):
    """A private `consul agent -dev` that allows only 8 connections per client IP."""
    agent = _start_consul(tmp_path / "consul-tight", limits={"http_max_conns_per_client": 8})
    yield agent
    agent.stop()


@pytest.fixture
def consul_dev(tmp_path):
    """A private `consul agent -dev`: restarting it loses everything and resets the index."""
    agent = _start_consul(tmp_path / "consul-dev")
    yield agent
    agent.stop()


@pytest.fixture(params=["http", "https"])
def consul_dev_any(request, tmp_path):
    """A private `consul agent -dev`, over plain HTTP (HTTP/1.1) and over HTTPS (HTTP/2):
    the test runs once on each."""
    agent = _start_consul(tmp_path / "consul-dev", tls=request.param == "https")
    yield agent
    agent.stop()


@pytest.fixture(scope="session")
def consul_tls(tmp_path_factory):
    """A real Consul agent serving HTTPS only, requiring client certificates."""
    agent = _start_consul(tmp_path_factory.mktemp("consul-tls"), tls=True)
    yield agent
    agent.stop()


def _start_bind(workdir: Path):
    from harness.bind_server import BindServer

    return _started(BindServer(workdir), "DNS server (BIND)")


@pytest.fixture(scope="session")
def bind(tmp_path_factory):
    """A real BIND 9 serving example.test. on loopback; tests use their own record names."""
    server = _start_bind(tmp_path_factory.mktemp("bind"))
    yield server
    server.stop()


@pytest.fixture
def bind_private(tmp_path):
    """A BIND server of the test's own, which it may stop and start."""
    server = _start_bind(tmp_path / "bind")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def coredns(apiserver, tmp_path_factory):
    """A real CoreDNS answering cluster.local. from the API server's Services and slices."""
    from harness.coredns_server import CoreDns

    server = _started(
        CoreDns(tmp_path_factory.mktemp("coredns"), apiserver.admin_kubeconfig), "CoreDNS"
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def toxiproxy(tmp_path_factory):
    """A real Toxiproxy: `toxiproxy.proxy("host:port")` relays to a server with faults."""
    from harness.toxiproxy import Toxiproxy

    server = _started(Toxiproxy(tmp_path_factory.mktemp("toxiproxy")), "Toxiproxy")
    yield server
    server.stop()


@pytest.fixture
def daemon(apiserver, namespace, tmp_path):
    """Start `syncd run` in the background; stopped with SIGTERM at the end of the test."""
    started = []

    def start(config, *extra: str):
        log = tmp_path / f"daemon-{len(started)}.log"
        process = start_syncd(
            config,
            apiserver.syncd_kubeconfig,
            log,
            "--log-level",
            "info",
            "--owner-id",
            namespace,
            *extra,
        )
        process.log_path = log
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session")
def test_hosts():
    """Real listeners on test hosts in a network namespace (198.51.100.10-29)."""
    from harness.netns_hosts import NetnsHosts

    hosts = NetnsHosts()
    try:
        hosts.create()
    except ServerStartError as exc:
        pytest.fail(f"the test hosts could not be created: {exc}", pytrace=False)
    yield hosts
    hosts.remove()


@pytest.fixture(scope="session")
def monitoring_crds(apiserver):
    """The Prometheus Operator's CRDs for ServiceMonitor and PrometheusRule."""
    crds = Path(server_binaries()["prometheus-crds"])
    api = apiserver.admin_client()
    try:
        for name in ("servicemonitors", "prometheusrules"):
            document = yaml.safe_load((crds / f"monitoring.coreos.com_{name}.yaml").read_text())
            try:
                k8s_utils.create_from_dict(api, document)
            except k8s_utils.FailToCreateError as exc:
                if "AlreadyExists" not in str(exc):
                    raise
        wait_for(
            lambda: _established(api, "servicemonitors") and _established(api, "prometheusrules"),
            "the CRDs",
        )
    finally:
        api.close()


def _established(api, name: str) -> bool:
    full_name = name if "." in name else f"{name}.monitoring.coreos.com"
    crd = k8s.ApiextensionsV1Api(api).read_custom_resource_definition(full_name)
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or ())


@pytest.fixture(scope="session")
def external_services(apiserver):
    """The ExternalService CRD and its RBAC, installed from deploy/components/resources."""
    apiserver.install_resources_component()


@pytest.fixture(scope="module")
def controller_manager(private_apiserver, tmp_path_factory):
    """The real kube-controller-manager (garbage collector, role aggregation) on the
    module's private API server."""
    from harness.controller_manager import KubeControllerManager

    manager = KubeControllerManager(private_apiserver, tmp_path_factory.mktemp("kcm"))
    yield _started(manager, "kube-controller-manager")
    manager.stop()
