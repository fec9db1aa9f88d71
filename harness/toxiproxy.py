"""A real Toxiproxy between syncd and a server, for the network-fault tests and benchmark.

Toxiproxy (github.com/Shopify/toxiproxy, built from its Go module by
scripts/build-test-servers.sh) relays TCP from a loopback port to an upstream and applies
"toxics" to the connections on the fly, existing ones included. The faults used here:

- stall: the `timeout` toxic with timeout 0: no byte gets through in either direction and
  nothing is closed, as a blackholing firewall or a drained node does; removing it lets
  bytes through again (what was sent meanwhile is lost, so a TLS stream then fails).
- stall that ends in a close: the `timeout` toxic with a timeout: the same, then closed.
- reset: the `reset_peer` toxic: every connection is reset (RST) as soon as it is used.
- latency: the `latency` toxic, each way.
- down: the proxy disabled: connections are closed and new ones refused.

The fixture gives each test its own proxies on free ports; the API is driven over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.kube_apiserver import ServerStartError, _tail, free_port, server_binaries, stop_process

BOTH = ("upstream", "downstream")  # client -> server, server -> client


@dataclass(frozen=True)
class Proxy:
    """One relay: `listen` (host:port) forwards to `upstream`."""

    server: Toxiproxy
    name: str
    listen: str
    upstream: str

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def add(self, kind: str, stream: str = "downstream", **attributes: int) -> str:
        """Add a toxic; returns its name (to remove it)."""
        name = f"{kind}-{stream}"
        self.server.call(
            "POST",
            f"/proxies/{self.name}/toxics",
            {"name": name, "type": kind, "stream": stream, "toxicity": 1.0,
             "attributes": attributes},
        )  # fmt: skip
        return name

    def remove(self, toxic: str) -> None:
        self.server.call("DELETE", f"/proxies/{self.name}/toxics/{toxic}")

    def heal(self) -> None:
        """Every toxic removed and the proxy enabled: the network is fine again."""
        for toxic in self.server.call("GET", f"/proxies/{self.name}/toxics") or ():
            self.remove(toxic["name"])
        self.set_enabled(True)

    def set_enabled(self, enabled: bool) -> None:
        self.server.call("POST", f"/proxies/{self.name}", {"enabled": enabled})

    def stall(self, close_after: float = 0) -> None:
        """No byte through, either way; closed after `close_after` seconds (0: never)."""
        for stream in BOTH:
            self.add("timeout", stream, timeout=int(close_after * 1000))

    def reset(self) -> None:
        """Every connection reset by peer when it is used, new ones included."""
        for stream in BOTH:
            self.add("reset_peer", stream, timeout=0)

    def delay(self, seconds: float) -> None:
        """`seconds` of latency each way."""
        for stream in BOTH:
            self.add("latency", stream, latency=int(seconds * 1000), jitter=0)

    @contextlib.contextmanager
    def fault(self, kind: str, **options: float) -> Iterator[None]:
        """`with proxy.fault("stall"): ...` the fault lasts as long as the block."""
        {"stall": self.stall, "reset": self.reset, "delay": self.delay}[kind](**options)
        try:
            yield
        finally:
            self.heal()


class Toxiproxy:
    """The toxiproxy server on a free loopback port; `proxy()` makes relays."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._names = 0

    def start(self, timeout: float = 30) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = self.workdir / "toxiproxy.log"
        handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [server_binaries()["toxiproxy"], "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_answering(timeout, log)
        except BaseException:
            self.stop()  # never left running behind a failed start
            raise

    def _wait_answering(self, timeout: float, log: Path) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"toxiproxy exited with {self.process.returncode}:\n{_tail(log)}"
                )
            with contextlib.suppress(OSError):
                self.call("GET", "/version")
                return
            time.sleep(0.1)
        raise ServerStartError(f"toxiproxy did not answer in {timeout}s:\n{_tail(log)}")

    def stop(self) -> None:
        stop_process(self.process)

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            answer = exc.read()
            raise ServerStartError(f"toxiproxy {method} {path}: {exc.code} {answer!r}") from None
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:  # /version answers plain text
            return text.decode()

    def proxy(self, upstream: str, name: str = "") -> Proxy:
        """A new relay from a free loopback port to `upstream` (host:port)."""
        self._names += 1
        name = name or f"proxy-{self._names}"
        listen = f"127.0.0.1:{free_port()}"
        self.call(
            "POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream,
                                 "enabled": True},
        )  # fmt: skip
        return Proxy(self, name, listen, upstream)

    def remove(self, proxy: Proxy) -> None:
        with contextlib.suppress(ServerStartError, OSError):
            self.call("DELETE", f"/proxies/{proxy.name}")


__all__ = ["BOTH", "Proxy", "Toxiproxy"]
