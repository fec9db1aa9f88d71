"""A real Consul agent on free loopback ports, built from its Go module (see the build script).

`dev=True` (default) is `consul agent -dev`: in memory, fast. `dev=False` runs a one-node
server with a data directory, so registrations survive `restart()` as in production.
With `acl=True` the default policy is deny and `management_token` can do everything.
With `tls=True` only HTTPS is served, with certificates made by `consul tls` as an operator
makes them, client certificates required. Consul's server certificate also names
localhost and 127.0.0.1, so that agent listens on 127.0.0.2: a client must verify it as
`consul.test`.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path

from harness.kube_apiserver import (
    ServerStartError,
    _tail,
    free_port,
    server_binaries,
    stop_process,
)


class ConsulAgent:
    SERVER_NAME = "consul.test"

    def __init__(
        self,
        workdir: Path,
        acl: bool = False,
        dev: bool = True,
        tls: bool = False,
        limits: dict | None = None,
    ):
        self.workdir = workdir
        self.limits = limits
        self.acl = acl
        self.dev = dev
        self.tls = tls
        self.management_token = str(uuid.uuid4()) if acl else None
        self.process: subprocess.Popen | None = None
        self.ports = {name: free_port() for name in ("http", "serf_lan", "serf_wan", "server")}

    @property
    def address(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.client_address}:{self.ports['http']}"

    @property
    def client_address(self) -> str:
        return "127.0.0.2" if self.tls else "127.0.0.1"

    def config_section(self) -> dict:
        """syncd's `consul:` section that reaches this agent (its TLS files too)."""
        if not self.tls:
            return {"address": self.address}
        return {
            "address": self.address,
            "ca_file": str(self.certs / "ca.pem"),
            "cert_file": str(self.certs / "client.pem"),
            "key_file": str(self.certs / "client.key"),
            "tls_server_name": self.SERVER_NAME,
        }

    @property
    def certs(self) -> Path:
        return self.workdir / "certs"

    def _make_certs(self) -> None:
        """As an operator makes them: `consul tls ca create` and `consul tls cert create`
        (the server's is for the agent's own RPC too, so it may also act as a client).
        Kept under the names the tests use: ca.pem, server.pem/.key, client.pem/.key."""
        self.certs.mkdir(parents=True, exist_ok=True)
        binary = server_binaries()["consul"]

        def consul_tls(*args: str) -> None:
            subprocess.run([binary, "tls", *args], check=True, capture_output=True, cwd=self.certs)

        consul_tls("ca", "create", "-days", "2")
        consul_tls("cert", "create", "-server", "-dc", "dc1", "-days", "2",
                   f"-additional-dnsname={self.SERVER_NAME}")  # fmt: skip
        consul_tls("cert", "create", "-client", "-dc", "dc1", "-days", "2")
        for made, name in (
            ("consul-agent-ca.pem", "ca.pem"),
            ("dc1-server-consul-0.pem", "server.pem"),
            ("dc1-server-consul-0-key.pem", "server.key"),
            ("dc1-client-consul-0.pem", "client.pem"),
            ("dc1-client-consul-0-key.pem", "client.key"),
        ):
            (self.certs / made).rename(self.certs / name)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
        context.check_hostname = False  # test set-up only; syncd itself verifies the name
        context.load_cert_chain(str(self.certs / "client.pem"), str(self.certs / "client.key"))
        return context

    def start(self, timeout: float = 60) -> None:
        binary = server_binaries()["consul"]
        self.workdir.mkdir(parents=True, exist_ok=True)
        config: dict = {
            "bind_addr": "127.0.0.1",
            "client_addr": self.client_address,
            "node_name": "syncd-test",
            "ports": {**self.ports, "dns": -1, "grpc": -1, "grpc_tls": -1},
            "log_level": "warn",
            "disable_update_check": True,
        }
        if self.limits:
            config["limits"] = self.limits
        if self.tls:
            if not (self.certs / "ca.pem").exists():
                self._make_certs()
            config["ports"].update(https=config["ports"].pop("http"), http=-1)
            config["tls"] = {
                "defaults": {
                    "ca_file": str(self.certs / "ca.pem"),
                    "cert_file": str(self.certs / "server.pem"),
                    "key_file": str(self.certs / "server.key"),
                    "verify_incoming": True,
                    "verify_outgoing": True,  # its own RPC (blocking queries' streaming)
                }
            }
        if self.acl:
            config["acl"] = {
                "enabled": True,
                "default_policy": "deny",
                "tokens": {"initial_management": self.management_token},
            }
        if not self.dev:
            config.update(
                server=True,
                bootstrap_expect=1,
                data_dir=str(self.workdir / "data"),
                performance={"raft_multiplier": 1},
            )
        config_file = self.workdir / "agent.json"
        config_file.write_text(json.dumps(config))
        args = [binary, "agent", f"-config-file={config_file}"]
        if self.dev:
            args.insert(2, "-dev")
        log = self.workdir / "consul.log"
        handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"consul exited with {self.process.returncode}:\n{_tail(log)}"
                )
            try:
                if (
                    self.request("GET", "/v1/status/leader") not in ("", '""')
                    and self._catalog_ready()
                ):
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise ServerStartError(f"consul not ready after {timeout}s:\n{_tail(log)}")

    def _catalog_ready(self) -> bool:
        nodes = json.loads(self.request("GET", "/v1/catalog/nodes") or "[]")
        return any(node.get("Node") == "syncd-test" for node in nodes)

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- the HTTP API, as the management token

    def request(self, method: str, path: str, body=None, token: str | None = None) -> str:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.address + path, data=data, method=method)
        if token or self.management_token:
            request.add_header("X-Consul-Token", token or self.management_token)
        with urllib.request.urlopen(request, timeout=10, context=self._ssl_context()) as response:
            return response.read().decode()

    def register(
        self,
        instance_id: str,
        name: str,
        address: str,
        port: int,
        tags: tuple[str, ...] = (),
        status: str = "passing",
        **extra,
    ) -> None:
        """An instance with a TTL check that the test flips with `set_status`."""
        self.request(
            "PUT",
            "/v1/agent/service/register",
            {
                "ID": instance_id,
                "Name": name,
                "Address": address,
                "Port": port,
                "Tags": list(tags),
                "Check": {"CheckID": f"service:{instance_id}", "TTL": "24h", "Status": status},
                **extra,
            },
        )

    def register_external(
        self,
        instances: Iterable[tuple[str, str, str, int]],
        node: str = "external-1",
        status: str = "passing",
    ) -> None:
        """Instances (id, service, address, port) on a catalog node no agent runs on, each
        with a check syncd's tests set themselves (as an external service monitor would),
        written in batches through /v1/txn: thousands register in seconds."""
        ops: list[dict] = [
            {"Node": {"Verb": "set", "Node": {"Node": node, "Address": "192.0.2.250"}}}
        ]
        for instance_id, service, address, port in instances:
            ops.append(
                {
                    "Service": {
                        "Verb": "set",
                        "Node": node,
                        "Service": {
                            "ID": instance_id,
                            "Service": service,
                            "Address": address,
                            "Port": port,
                        },
                    }
                }
            )
            ops.append(
                {"Check": {"Verb": "set", "Check": self._external_check(node, instance_id, status)}}
            )
        for start in range(0, len(ops), 64):
            self.request("PUT", "/v1/txn", ops[start : start + 64])

    @staticmethod
    def _external_check(node: str, instance_id: str, status: str) -> dict:
        return {
            "Node": node,
            "CheckID": f"external:{instance_id}",
            "Name": f"external {instance_id}",
            "Status": status,
            "ServiceID": instance_id,
            "Definition": {},
        }

    def set_external_status(self, instance_id: str, status: str, node: str = "external-1") -> None:
        check = self._external_check(node, instance_id, status)
        self.request("PUT", "/v1/txn", [{"Check": {"Verb": "set", "Check": check}}])

    def set_status(self, instance_id: str, status: str) -> None:
        verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
        self.request("PUT", f"/v1/agent/check/{verb}/service:{instance_id}")

    def deregister(self, instance_id: str) -> None:
        self.request("PUT", f"/v1/agent/service/deregister/{instance_id}")

    def maintenance(self, instance_id: str, enable: bool) -> None:
        flag = "true" if enable else "false"
        self.request(
            "PUT", f"/v1/agent/service/maintenance/{instance_id}?enable={flag}&reason=test"
        )

    def create_token(self, rules: str) -> str:
        """A token whose only policy is `rules` (HCL)."""
        name = f"p-{uuid.uuid4().hex[:8]}"
        self.request("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})
        token = json.loads(self.request("PUT", "/v1/acl/token", {"Policies": [{"Name": name}]}))
        return token["SecretID"]
