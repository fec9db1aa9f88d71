"""The container image, built from the Dockerfile and run the way a cluster runs it.

There is no registry here, so the image is built on a Python base made from Debian
packages (scripts/build-test-image.sh) with podman, and run with testcontainers through
podman's Docker-compatible API. In the container, as a non-root user with a read-only
root file system, syncd renders the example byte for byte, and `run --once` and the
daemon reach the test API server with in-cluster config: a real ServiceAccount token from
the TokenRequest API, mounted where Kubernetes mounts it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client as k8s

from harness.helpers import slices_of, target, write_config
from harness.kube_apiserver import REPO, ServerStartError, free_port, stop_process

pytestmark = pytest.mark.apiserver

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
CONTAINERS_CONF = REPO / "tests" / "image" / "containers.conf"


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> str:
    """syncd's image, built from the Dockerfile on a base made from Debian packages."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-test-image.sh")],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"building the image failed:\n{result.stderr[-4000:]}", pytrace=False)
    return dict(line.split("=", 1) for line in result.stdout.split())["IMAGE"]


@pytest.fixture(scope="session")
def docker_api(tmp_path_factory):
    """podman's Docker-compatible API, which testcontainers talks to."""
    socket = tmp_path_factory.mktemp("podman") / "podman.sock"
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not socket.exists():
        if time.monotonic() > deadline or service.poll() is not None:
            stop_process(service)
            pytest.fail("podman system service did not start", pytrace=False)
        time.sleep(0.1)
    previous = {k: os.environ.get(k) for k in ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED")}
    os.environ.update(DOCKER_HOST=f"unix://{socket}", TESTCONTAINERS_RYUK_DISABLED="true")
    yield
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    stop_process(service)


@pytest.fixture
def service_account(apiserver, admin_api, tmp_path) -> Path:
    """What the kubelet mounts for a pod: a TokenRequest token, the CA, the namespace."""
    request = k8s.CoreV1Api(admin_api).create_namespaced_service_account_token(
        "syncd", "syncd", {"spec": {"expirationSeconds": 3600}}
    )
    directory = tmp_path / "serviceaccount"
    directory.mkdir(mode=0o755)
    (directory / "token").write_text(request.status.token)
    shutil.copy(apiserver.workdir / "certs" / "apiserver.crt", directory / "ca.crt")
    (directory / "namespace").write_text("syncd")
    for path in directory.iterdir():
        path.chmod(0o644)
    return directory


def _run(image: str, command: list[str], *, user: str = "65532:0", volumes=(), env=None):
    """Run the image to completion; (exit code, logs)."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(image).with_command(command)
    for source, target_path in volumes:
        container = container.with_volume_mapping(str(source), target_path, "ro")
    for key, value in (env or {}).items():
        container = container.with_env(key, value)
    container = container.with_kwargs(network_mode="host", read_only=True, user=user)
    container.start()
    try:
        wrapped = container.get_wrapped_container()
        code = wrapped.wait(timeout=120)["StatusCode"]
        logs = wrapped.logs(stdout=True, stderr=True).decode()
    finally:
        container.stop()
    return code, logs


def _config_dir(tmp_path: Path, namespace: str, service: str) -> Path:
    """A config directory readable by any user, as a mounted ConfigMap is."""
    directory = tmp_path / "config"
    directory.mkdir(mode=0o755)
    write_config(directory / "c.yaml", target(namespace, service, ["198.51.100.1:8080"]))
    (directory / "c.yaml").chmod(0o644)
    return directory


def _in_cluster(apiserver) -> dict[str, str]:
    return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(apiserver.port)}


def test_the_image_runs_as_non_root_and_renders_the_example_byte_for_byte(image, docker_api):
    inspect = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Config.User}} {{.Size}}", image],
        capture_output=True, text=True, check=True,
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
    ).stdout.split()  # fmt: skip
    user, size = inspect[0], int(inspect[1])
    print(f"image {image}: user {user}, {size / 1e6:.0f} MB")
    assert not user.startswith("0") and user != "root"
    code, logs = _run(
        image,
        ["render", "--config", "config/ceph-rgw.yaml"],
        volumes=[(REPO / "config", "/config")],
    )
    assert code == 0, logs
    assert logs == (REPO / "tests" / "golden" / "ceph-rgw.yaml").read_text()


def test_an_arbitrary_uid_as_openshift_assigns_works_too(image, docker_api):
    code, logs = _run(
        image,
        ["check", "--config", "config/ceph-rgw.yaml"],
        user="1000650000:0",
        volumes=[(REPO / "config", "/config")],
    )
    assert code == 0 and "OK (1 target, 12 static backends" in logs, logs


def test_run_once_with_in_cluster_config_and_a_service_account_token(
    image, docker_api, apiserver, service_account, admin, namespace, tmp_path
):
    config = _config_dir(tmp_path, namespace, "inpod")
    volumes = [(service_account, SERVICE_ACCOUNT_DIR), (config, "/etc/syncd")]
    command = ["run", "--once", "--config", "/etc/syncd/c.yaml", "--owner-id", namespace]
    code, logs = _run(image, command, volumes=volumes, env=_in_cluster(apiserver))
    assert code == 0 and "converged: 1 target, 2 writes" in logs, logs
    assert slices_of(admin, namespace, "inpod")
    code, logs = _run(image, command, volumes=volumes, env=_in_cluster(apiserver))
    assert code == 0 and "converged: 1 target, 0 writes" in logs, logs


def test_the_daemon_in_the_container_applies_and_answers_its_probes(
    image, docker_api, apiserver, service_account, admin, namespace, tmp_path
):
    from testcontainers.core.container import DockerContainer

    config = _config_dir(tmp_path, namespace, "daemon")
    port = free_port()
    container = (
        DockerContainer(image)
        .with_command(
            [
                "run",
                "--config",
                "/etc/syncd/c.yaml",
                "--owner-id",
                namespace,
                "--metrics-address",
                f"127.0.0.1:{port}",
                "--leader-elect",
            ]
        )
        .with_volume_mapping(str(service_account), SERVICE_ACCOUNT_DIR, "ro")
        .with_volume_mapping(str(config), "/etc/syncd", "ro")
        .with_kwargs(network_mode="host", read_only=True, user="65532:0")
    )
    for key, value in _in_cluster(apiserver).items():
        container = container.with_env(key, value)
    container.start()
    try:
        deadline = time.monotonic() + 60
        while not slices_of(admin, namespace, "daemon"):
            assert time.monotonic() < deadline, container.get_logs()
            time.sleep(0.2)
        for path, answer in (("/healthz", "ok"), ("/readyz", "leader")):
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                        assert r.read().decode().strip() == answer
                        break
                except (urllib.error.URLError, AssertionError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        wrapped = container.get_wrapped_container()
        started = time.monotonic()
        wrapped.stop(timeout=10)  # SIGTERM, as the kubelet stops a pod
        assert wrapped.wait(timeout=10)["StatusCode"] == 0
        assert time.monotonic() - started < 3
    finally:
        try:
            container.stop()
        except Exception as exc:  # already stopped
            if "no such container" not in str(exc).lower():
                raise ServerStartError(str(exc)) from None
