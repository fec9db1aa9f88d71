"""A data plane of real kube-proxy nodes, backends and clients, in namespaces of their own.

    client-0 ──┐                                   ┌── backends 198.51.100.10-62
   .66 (/27)   node-0 (kube-proxy, nftables) ──────┤   (one namespace, a bridge;
    client-1 ──┤ .65        .1 (/26)               │    HTTP servers answering
   .98 (/27)   node-1 (kube-proxy, nftables) ──────┘    "address:port")
               .97        .2 (/26)

Every address is in 198.51.100.0/24 (this machine's own network is 192.0.2.0/24), inside
namespaces created here and removed afterwards: nothing is changed in the host's own
network namespace. A client reaches a Service's ClusterIP through its node, whose
kube-proxy (watching the test API server) turns it into a backend address; replies find
their way back by the client subnet's route. Each kube-proxy reaches the API server on the
host's loopback through a unix socket (socat on both sides), the only thing outside the
namespaces. Nodes carry a zone (`topology.kubernetes.io/zone` on their Node object), which
kube-proxy reads for topology-aware routing.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.kube_apiserver import (
    KubeApiServer,
    ServerStartError,
    server_binaries,
    stop_process,
)

BACKEND_NET = "198.51.100"
API_PORT_IN_NODE = 6443

_SERVER = """
import http.server, socketserver, sys
address, port = sys.argv[1], int(sys.argv[2])
body = f"{address}:{port}".encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close"); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass
socketserver.TCPServer.allow_reuse_address = True
with socketserver.ThreadingTCPServer((address, port), Handler) as server:
    print("ready", flush=True)
    server.serve_forever()
"""

# Requests from a client namespace: N new connections, one answer (or error) per line.
_CLIENT = """
import socket, sys, time
host, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.0\\r\\nHost: test\\r\\n\\r\\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        print(data.split(b"\\r\\n\\r\\n", 1)[-1].decode(), flush=True)
    except OSError as exc:
        print(f"error {type(exc).__name__}", flush=True)
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _in(namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _ip("netns", "exec", namespace, *args, check=check)


@dataclass
class Node:
    """A node namespace: kube-proxy, the route between its clients and the backends."""

    index: int
    name: str  # Node object and namespace suffix
    zone: str | None
    namespace: str = ""
    client_namespace: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def backend_side(self) -> str:
        return f"{BACKEND_NET}.{1 + self.index}"

    @property
    def client_gateway(self) -> str:
        return f"{BACKEND_NET}.{65 + 32 * self.index}"

    @property
    def client_address(self) -> str:
        return f"{BACKEND_NET}.{66 + 32 * self.index}"

    @property
    def client_subnet(self) -> str:
        return f"{BACKEND_NET}.{64 + 32 * self.index}/27"


class DataPlane:
    """Nodes (with zones), one backends namespace, a client per node. See the docstring."""

    def __init__(self, apiserver: KubeApiServer, workdir: Path, zones: tuple[str | None, ...]):
        self.apiserver = apiserver
        self.workdir = workdir
        self.id = uuid.uuid4().hex[:6]
        self.hosts = f"sdp{self.id}-hosts"
        self.nodes = [Node(i, f"node-{self.id}-{i}", zone) for i, zone in enumerate(zones)]
        self.servers: dict[tuple[str, int], subprocess.Popen] = {}
        self._bridge: subprocess.Popen | None = None
        self._socket = workdir / "apiserver.sock"

    # -- building it

    def create(self) -> DataPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._network()
            self._api_bridge()
            for node in self.nodes:
                self._node_object(node)
                self._kube_proxy(node)
            for node in self.nodes:
                self._wait_healthy(node)
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            self.remove()
            raise ServerStartError(f"cannot build the data plane: {detail.strip()}") from None
        except ServerStartError:
            self.remove()
            raise
        return self

    def _network(self) -> None:
        _ip("netns", "add", self.hosts)
        _in(self.hosts, "ip", "link", "add", "br0", "type", "bridge")
        _in(self.hosts, "ip", "addr", "add", f"{BACKEND_NET}.62/26", "dev", "br0")
        _in(self.hosts, "ip", "link", "set", "br0", "up")
        _in(self.hosts, "ip", "link", "set", "lo", "up")
        for node in self.nodes:
            node.namespace = f"sdp{self.id}-n{node.index}"
            node.client_namespace = f"sdp{self.id}-c{node.index}"
            for namespace in (node.namespace, node.client_namespace):
                _ip("netns", "add", namespace)
                _in(namespace, "ip", "link", "set", "lo", "up")
            _in(node.namespace, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # node <-> backends
            _in(
                node.namespace,
                "ip",
                "link",
                "add",
                "hosts",
                "type",
                "veth",
                "peer",
                "name",
                f"n{node.index}",
            )
            _in(node.namespace, "ip", "link", "set", f"n{node.index}", "netns", self.hosts)
            _in(node.namespace, "ip", "addr", "add", f"{node.backend_side}/26", "dev", "hosts")
            _in(node.namespace, "ip", "link", "set", "hosts", "up")
            _in(self.hosts, "ip", "link", "set", f"n{node.index}", "master", "br0")
            _in(self.hosts, "ip", "link", "set", f"n{node.index}", "up")
            _in(self.hosts, "ip", "route", "add", node.client_subnet, "via", node.backend_side)
            # client <-> node
            _in(
                node.client_namespace,
                "ip",
                "link",
                "add",
                "node",
                "type",
                "veth",
                "peer",
                "name",
                "client",
            )
            _in(node.client_namespace, "ip", "link", "set", "client", "netns", node.namespace)
            _in(
                node.client_namespace,
                "ip",
                "addr",
                "add",
                f"{node.client_address}/27",
                "dev",
                "node",
            )
            _in(node.client_namespace, "ip", "link", "set", "node", "up")
            _in(node.client_namespace, "ip", "route", "add", "default", "via", node.client_gateway)
            _in(node.namespace, "ip", "addr", "add", f"{node.client_gateway}/27", "dev", "client")
            _in(node.namespace, "ip", "link", "set", "client", "up")

    def _api_bridge(self) -> None:
        """The API server's loopback port, reachable from the node namespaces as a unix
        socket (socat here) and as 127.0.0.1:6443 in each node (socat there)."""
        self._bridge = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{self._socket},fork,mode=600",
             f"TCP:127.0.0.1:{self.apiserver.port}"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._socket.exists():
            if time.monotonic() > deadline:
                raise ServerStartError("the API socket bridge did not start")
            time.sleep(0.05)
        for node in self.nodes:
            node.processes.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        node.namespace,
                        "socat",
                        f"TCP-LISTEN:{API_PORT_IN_NODE},bind=127.0.0.1,fork,reuseaddr",
                        f"UNIX-CONNECT:{self._socket}",
                    ],
                    stderr=subprocess.DEVNULL,
                )
            )

    def _node_object(self, node: Node) -> None:
        from kubernetes import client as k8s

        labels = {"kubernetes.io/hostname": node.name}
        if node.zone:
            labels["topology.kubernetes.io/zone"] = node.zone
        api = self.apiserver.admin_client()
        try:
            k8s.CoreV1Api(api).create_node({"metadata": {"name": node.name, "labels": labels}})
        finally:
            api.close()

    def _kube_proxy(self, node: Node) -> None:
        kubeconfig = self.workdir / f"{node.name}.kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {
                                "server": f"https://127.0.0.1:{API_PORT_IN_NODE}",
                                "certificate-authority": str(
                                    self.apiserver.workdir / "certs" / "apiserver.crt"
                                ),
                            },
                        }
                    ],
                    "users": [{"name": "proxy", "user": {"token": self.apiserver.admin_token}}],
                    "contexts": [{"name": "c", "context": {"cluster": "test", "user": "proxy"}}],
                    "current-context": "c",
                }
            )
        )
        log = (self.workdir / f"{node.name}.log").open("w")
        node.processes.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    node.namespace,
                    server_binaries()["kube-proxy"],
                    "--kubeconfig",
                    str(kubeconfig),
                    "--hostname-override",
                    node.name,
                    "--proxy-mode",
                    "nftables",
                    "--conntrack-max-per-core",
                    "0",
                    "--conntrack-tcp-timeout-established",
                    "0",
                    "--conntrack-tcp-timeout-close-wait",
                    "0",
                    "--metrics-bind-address",
                    "127.0.0.1:10249",
                    "--healthz-bind-address",
                    "127.0.0.1:10256",
                    "--v",
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def _wait_healthy(self, node: Node, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proxy = node.processes[-1]
            if proxy.poll() is not None:
                raise ServerStartError(f"kube-proxy on {node.name} exited:\n{self.log_tail(node)}")
            answer = _in(
                node.namespace, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                "--max-time", "1", "http://127.0.0.1:10256/healthz", check=False,
            )  # fmt: skip
            if answer.stdout.strip() == "200":
                return
            time.sleep(0.2)
        raise ServerStartError(f"kube-proxy on {node.name} not healthy:\n{self.log_tail(node)}")

    def log_tail(self, node: Node, lines: int = 30) -> str:
        path = self.workdir / f"{node.name}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    # -- backends and clients

    def serve(self, address: str, port: int) -> None:
        """An HTTP server answering "address:port" in the backends namespace."""
        assert address.startswith(f"{BACKEND_NET}.")
        with contextlib.suppress(subprocess.CalledProcessError):  # already there
            _in(self.hosts, "ip", "addr", "add", f"{address}/26", "dev", "br0")
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts, sys.executable, "-c", _SERVER, address, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if process.stdout is None or process.stdout.readline().strip() != "ready":
            raise ServerStartError(f"backend {address}:{port} did not start")
        self.servers[(address, port)] = process

    def stop_serving(self, address: str, port: int) -> None:
        stop_process(self.servers.pop((address, port)), timeout=5)

    def requests(
        self, node: int, host: str, port: int, count: int, timeout: float = 1.0
    ) -> list[str]:
        """`count` requests (new connections) from node `node`'s client; one answer each:
        the backend's "address:port", or "error ..." when it failed."""
        result = _in(
            self.nodes[node].client_namespace, sys.executable, "-c", _CLIENT, host, str(port),
            str(count), str(timeout),
        )  # fmt: skip
        return [line for line in result.stdout.splitlines() if line]

    def spread(self, node: int, host: str, port: int, count: int) -> collections.Counter[str]:
        return collections.Counter(self.requests(node, host, port, count))

    def nft_ruleset(self, node: int) -> str:
        return _in(self.nodes[node].namespace, "nft", "list", "ruleset", check=False).stdout

    # -- taking it down

    def remove(self) -> None:
        for key in list(self.servers):
            with contextlib.suppress(Exception):
                self.stop_serving(*key)
        for node in self.nodes:
            for process in node.processes:
                stop_process(process, timeout=5)
            node.processes.clear()
        if self._bridge is not None:
            stop_process(self._bridge, timeout=5)
            self._bridge = None
        with contextlib.suppress(OSError):
            self._socket.unlink()
        for node in self.nodes:
            for namespace in (node.namespace, node.client_namespace):
                if namespace:
                    _ip("netns", "del", namespace, check=False)
        _ip("netns", "del", self.hosts, check=False)
        self._delete_node_objects()

    def _delete_node_objects(self) -> None:
        from kubernetes import client as k8s

        with contextlib.suppress(Exception):
            api = self.apiserver.admin_client()
            try:
                for node in self.nodes:
                    with contextlib.suppress(Exception):
                        k8s.CoreV1Api(api).delete_node(node.name)
            finally:
                api.close()


def cluster_ip(admin_kube, namespace: str, service: str) -> str:
    """The ClusterIP the API server gave a Service."""
    service_obj = admin_kube.get("Service", namespace, service)
    assert service_obj is not None, f"no Service {namespace}/{service}"
    return service_obj["spec"]["clusterIP"]


__all__ = ["DataPlane", "cluster_ip"]
