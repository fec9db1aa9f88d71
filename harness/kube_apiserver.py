"""A real kube-apiserver backed by a real etcd, on free loopback ports (the envtest pattern).

The binaries come from scripts/build-test-servers.sh (built from their Go modules and cached
outside the repository). RBAC is on; two token users exist:

- `admin` (system:masters) for test setup and assertions;
- `system:serviceaccount:syncd:syncd`, which has only what deploy/rbac.yaml grants it, so
  every syncd run in the tests proves the shipped RBAC is sufficient.

An audit log records every request, so tests count syncd's write calls from the server's
side rather than trusting syncd's own counters.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "build-test-servers.sh"
SYNCD_USER = "system:serviceaccount:syncd:syncd"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


class ServerStartError(RuntimeError):
    """A real server could not be started: tests must fail, never skip."""


def stop_process(process: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_HANDED_OUT: set[int] = set()
_PORT_LOCK = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port free now that this process has never handed out before.

    Picked below the kernel's ephemeral range, where bind(0) and every outgoing connection
    take theirs: a port picked there can be taken by a client between the pick and the
    server's bind (two Consul ports once collided so). Here only another test server could
    take it, and this process hands each port out once.
    """
    low, _high = _ephemeral_range()
    first, last = (10000, low - 1) if low > 12000 else (low // 2, low - 1)
    with _PORT_LOCK:
        for _ in range(1000):
            port = random.randint(first, last)
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    raise ServerStartError("no free loopback port found below the ephemeral range")


_BINARIES: dict[str, str] = {}


def server_binaries() -> dict[str, str]:
    """Paths of kube-apiserver, kube-proxy, etcd, consul, coredns and the tools, building
    them first if the cache is empty. $KUBE_APISERVER, $KUBE_PROXY, $ETCD, $CONSUL,
    $COREDNS ... override the built ones.
    """
    if not _BINARIES:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ServerStartError(f"building the test servers failed:\n{result.stderr[-4000:]}")
        paths = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
        for name, variable in (
            ("kube-apiserver", "KUBE_APISERVER"),
            ("kube-proxy", "KUBE_PROXY"),
            ("kube-controller-manager", "KUBE_CONTROLLER_MANAGER"),
            ("etcd", "ETCD"),
            ("consul", "CONSUL"),
            ("kustomize", "KUSTOMIZE"),
            ("prometheus-crds", "PROMETHEUS_CRDS"),
            ("kube-apiserver-matrix", "KUBE_APISERVER_MATRIX"),
            ("promtool", "PROMTOOL"),
            ("helm", "HELM"),
            ("coredns", "COREDNS"),
            ("toxiproxy", "TOXIPROXY"),
        ):
            _BINARIES[name] = os.environ.get(variable) or paths[variable]
    return _BINARIES


def apiserver_versions() -> dict[str, str]:
    """Every kube-apiserver the version matrix runs (newest first): version -> binary."""
    pairs = [item.split("=", 1) for item in server_binaries()["kube-apiserver-matrix"].split(",")]
    return dict(sorted(pairs, key=lambda p: [int(n) for n in p[0][1:].split(".")], reverse=True))


def _wait(check, timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        try:
            if check():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.2)
    raise ServerStartError(f"{what} not ready after {timeout}s ({last}):\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class AuditEvent:
    verb: str
    user: str
    uri: str
    resource: str
    namespace: str
    name: str
    code: int
    user_agent: str = ""


class AuditLog:
    """Reads the API server's audit log; `mark()` fences off what a test step did."""

    def __init__(self, path: Path, admin_request):
        self.path = path
        self._admin_request = admin_request

    def _events(self) -> list[dict]:
        if not self.path.exists():
            return []
        events = []
        for line in self.path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line being written right now
        return events

    def mark(self) -> int:
        """Send a uniquely named request and wait until it is logged; returns its position.

        Requests that completed before the mark was sent are logged before it, so events
        after a mark belong to what the test did next.
        """
        token = f"syncd-test-mark-{uuid.uuid4().hex}"
        self._admin_request(f"/api/v1/namespaces/default/configmaps/{token}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for index, event in enumerate(self._events()):
                if token in event.get("requestURI", ""):
                    return index
            time.sleep(0.05)
        raise AssertionError("audit log did not record the marker request")

    def since(self, start: int, user: str = SYNCD_USER) -> list[AuditEvent]:
        end = self.mark()
        result = []
        for event in self._events()[start + 1 : end]:
            if event.get("user", {}).get("username") != user:
                continue
            ref = event.get("objectRef") or {}
            result.append(
                AuditEvent(
                    verb=event.get("verb", ""),
                    user=user,
                    uri=event.get("requestURI", ""),
                    resource=ref.get("resource", ""),
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                    code=(event.get("responseStatus") or {}).get("code", 0),
                    user_agent=event.get("userAgent", ""),
                )
            )
        return result

    def writes_since(self, start: int, user: str = SYNCD_USER) -> list[AuditEvent]:
        """Requests that changed something: a server-side dry run stores nothing."""
        return [
            e
            for e in self.since(start, user)
            if e.verb in WRITE_VERBS and "dryRun=All" not in e.uri
        ]


class KubeApiServer:
    """Start/stop etcd + kube-apiserver in a private directory."""

    def __init__(
        self,
        workdir: Path,
        service_cidr: str = "10.96.0.0/16",
        version: str | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.workdir = workdir
        self.service_cidr = service_cidr  # a ClusterIP for every Service syncd creates
        self.processes: list[subprocess.Popen] = []
        self.port = 0
        self.admin_token = uuid.uuid4().hex
        self.syncd_token = uuid.uuid4().hex
        self.audit_log_path = workdir / "audit.log"
        self.version = version  # None: the newest (the one the whole suite runs on)
        self.extra_args = extra_args  # more kube-apiserver flags (e.g. --watch-cache=false)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        binaries = server_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.etcd_url = self._start_etcd(binaries["etcd"])
        self.port = free_port()
        self._start_apiserver(self._binary(), self.etcd_url)
        self.admin_kubeconfig = self._write_kubeconfig("admin", self.admin_token)
        self.syncd_kubeconfig = self._write_kubeconfig("syncd", self.syncd_token)
        self.audit = AuditLog(self.audit_log_path, self.admin_get)

    def _spawn(self, args: list[str], log_name: str) -> tuple[subprocess.Popen, Path]:
        log = self.workdir / log_name
        handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process, log

    def _start_etcd(self, etcd: str) -> str:
        client_port, peer_port = free_port(), free_port()
        client_url = f"http://127.0.0.1:{client_port}"
        process, log = self._spawn(
            [
                etcd,
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            "etcd.log",
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client_url}/health", timeout=2) as response:
                return json.load(response).get("health") == "true"

        _wait(healthy, 30, "etcd", process, log)
        return client_url

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now (what kube-apiserver does every 5 minutes): a
        watch asked from an older resourceVersion then gets 410 Gone. Returns the revision."""

        def post(path: str, body: dict) -> dict:
            request = urllib.request.Request(
                f"{self.etcd_url}{path}", data=json.dumps(body).encode(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)

        revision = int(post("/v3/kv/range", {"key": "Lw=="})["header"]["revision"])  # "/"
        post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone (etcd keeps the data), as an upgrade or a crash would."""
        stop_process(self.processes.pop())

    def start_apiserver(self) -> None:
        """Start kube-apiserver again on the same port, certificates and tokens."""
        self._start_apiserver(self._binary(), self.etcd_url)

    def _binary(self) -> str:
        if self.version is None:
            return server_binaries()["kube-apiserver"]
        return apiserver_versions()[self.version]

    def _start_apiserver(self, apiserver: str, etcd_url: str) -> None:
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        key, pub = certs / "sa.key", certs / "sa.pub"
        if not pub.exists():
            subprocess.run(
                ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
            )
            subprocess.run(
                ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
                check=True,
                capture_output=True,
            )
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},admin,admin,"system:masters"\n'
            f"{self.syncd_token},{SYNCD_USER},syncd,"
            '"system:serviceaccounts,system:serviceaccounts:syncd"\n'
        )
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\n"
            "omitStages: [RequestReceived]\nrules:\n  - level: Metadata\n"
        )
        process, log = self._spawn(
            [
                apiserver,
                "--etcd-servers",
                etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(self.port),
                "--cert-dir",
                str(certs),
                "--token-auth-file",
                str(tokens),
                "--authorization-mode",
                "RBAC",
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                "--service-account-key-file",
                str(pub),
                "--service-account-signing-key-file",
                str(key),
                "--service-cluster-ip-range",
                self.service_cidr,
                "--disable-admission-plugins",
                "ServiceAccount",
                "--audit-policy-file",
                str(policy),
                "--audit-log-path",
                str(self.audit_log_path),
                "--audit-log-mode",
                "blocking",
                "--audit-log-maxsize",
                "0",
                *self.extra_args,
            ],
            "kube-apiserver.log",
        )
        _wait(lambda: self.admin_get("/readyz") == "ok", 120, "kube-apiserver", process, log)

    def admin_client(self):
        """The official client, as cluster admin (close it when done)."""
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config

        configuration = k8s.Configuration()
        k8s_config.load_kube_config(
            config_file=str(self.admin_kubeconfig), client_configuration=configuration
        )
        return k8s.ApiClient(configuration)

    def apply_deploy_rbac(self, *namespaces: str, endpoints: bool = True) -> None:
        """deploy/namespace.yaml and deploy/rbac.yaml (what binds syncd's user), with the
        endpoints component's RBAC (Endpoints writes) unless `endpoints` is False, plus
        any namespaces asked for."""
        from kubernetes import client as k8s
        from kubernetes import utils as k8s_utils

        manifests = ["namespace.yaml", "rbac.yaml"]
        if endpoints:
            manifests.append("components/endpoints/rbac.yaml")
        api_client = self.admin_client()
        try:
            for manifest in manifests:
                for doc in yaml.safe_load_all((REPO / "deploy" / manifest).read_text()):
                    k8s_utils.create_from_dict(api_client, doc)
            for namespace in namespaces:
                k8s.CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
        finally:
            api_client.close()

    def install_resources_component(self, timeout: float = 60) -> None:
        """deploy/components/resources' CRD and RBAC (what exists already is kept), once
        the CRD is established: ExternalServices can be created and listed."""
        from kubernetes import client as k8s
        from kubernetes import utils as k8s_utils

        component = REPO / "deploy" / "components" / "resources"
        api_client = self.admin_client()
        try:
            for manifest in ("crd.yaml", "rbac.yaml"):
                for doc in yaml.safe_load_all((component / manifest).read_text()):
                    try:
                        k8s_utils.create_from_dict(api_client, doc)
                    except k8s_utils.FailToCreateError as exc:
                        if "AlreadyExists" not in str(exc):
                            raise
            extensions = k8s.ApiextensionsV1Api(api_client)

            def established() -> bool:
                crd = extensions.read_custom_resource_definition("externalservices.syncd.io")
                conditions = crd.status.conditions or ()
                return any(c.type == "Established" and c.status == "True" for c in conditions)

            deadline = time.monotonic() + timeout
            while not established():
                if time.monotonic() > deadline:
                    raise ServerStartError("the ExternalService CRD was not established")
                time.sleep(0.1)
        finally:
            api_client.close()

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.workdir / "certs" / "apiserver.crt"))
        return context

    def admin_get(self, path: str) -> str | None:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.ssl_context()) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def syncd_kubeconfig_via(self, address: str) -> Path:
        """syncd's kubeconfig with the server at `address` (host:port), e.g. a fault proxy;
        the certificate names 127.0.0.1, so any loopback port verifies."""
        return self._write_kubeconfig("syncd", self.syncd_token, f"https://{address}")

    def _write_kubeconfig(self, user: str, token: str, server: str = "") -> Path:
        port = server.rsplit(":", 1)[1] if server else ""  # no ':' in a kubeconfig's path
        path = self.workdir / (f"{user}-{port}.kubeconfig" if port else f"{user}.kubeconfig")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": server or self.url,
                        "certificate-authority": str(self.workdir / "certs" / "apiserver.crt"),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "test", "user": user}}],
            "current-context": user,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        self.processes.clear()

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
