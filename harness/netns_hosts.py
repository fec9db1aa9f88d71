"""Test hosts: a network namespace joined to this host by a veth pair.

Backends with real listeners, for health-probe tests, live at 198.51.100.10-29 inside the
namespace. (192.0.2.0/24 is this machine's own eth0 network here, so it is not used.) The
route to the test range is checked before anything is probed: a half-built set-up must
never send probes out through the default route. Everything is removed at the end.

Only one set can own 198.51.100.1 on this host, so an owner holds a lock file for its life.
Whoever takes the lock removes what a dead owner left (a killed run never reaches its
teardown, and its address would send the next run's probes into a namespace nobody serves);
a live owner, e.g. a second test run on the same machine, is waited for instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from harness.kube_apiserver import ServerStartError

HOST_ADDRESS = "198.51.100.1"
ADDRESSES = [f"198.51.100.{n}" for n in range(10, 30)]
NAME_PREFIX = "syncd-hosts-"
OWNER_LOCK = Path("/run/lock/syncd-test-hosts.lock")
OWNER_WAIT = 1800.0  # seconds: a whole other test run may hold the test hosts

_SERVER = """
import http.server, socketserver, sys
address, port = sys.argv[1], int(sys.argv[2])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args): pass
socketserver.TCPServer.allow_reuse_address = True
with socketserver.TCPServer((address, port), Handler) as server:
    print("ready", flush=True)
    server.serve_forever()
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class NetnsHosts:
    name: str = field(default_factory=lambda: f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}")
    servers: dict[tuple[str, int], subprocess.Popen] = field(default_factory=dict)
    owner_lock_path: Path = OWNER_LOCK
    _owner_lock: IO[str] | None = None

    @property
    def host_link(self) -> str:
        return f"sy{self.name[-8:]}h"  # interface names: 15 characters at most

    def create(self) -> None:
        self._take_ownership()
        peer = f"sy{self.name[-8:]}n"
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", self.name)
            _ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            for address in ADDRESSES:
                _ip("-n", self.name, "addr", "add", f"{address}/24", "dev", peer)
            _ip("-n", self.name, "link", "set", peer, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            self.remove()
            raise ServerStartError(f"cannot create test hosts: {exc.stderr.strip()}") from None
        route = _ip("route", "get", ADDRESSES[0]).stdout
        if f"dev {self.host_link}" not in route:
            self.remove()
            raise ServerStartError(f"test hosts are not routed locally: {route.strip()}")

    def _take_ownership(self, wait: float = OWNER_WAIT) -> None:
        """Hold the owner lock (waiting for a live owner), then clear a dead owner's leftovers."""
        self.owner_lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.owner_lock_path.open("a")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise ServerStartError(
                        f"another run has held the test hosts ({self.owner_lock_path})"
                        f" for {wait:.0f} s"
                    ) from None
                time.sleep(1)
        self._owner_lock = lock
        for leftover in leftover_namespaces():
            print(f"removing test hosts a dead run left behind: {leftover}", file=sys.stderr)
            _ip("netns", "del", leftover, check=False)  # its veth pair goes with it

    def serve(self, address: str, port: int) -> None:
        """An HTTP server (200 on every GET) at address:port inside the namespace."""
        assert address in ADDRESSES
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", _SERVER, address, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if process.stdout.readline().strip() != "ready":
            raise ServerStartError(f"test server {address}:{port} did not start")
        self.servers[(address, port)] = process

    def stop(self, address: str, port: int) -> None:
        process = self.servers.pop((address, port))
        process.terminate()
        process.wait(timeout=5)

    def remove(self) -> None:
        for key in list(self.servers):
            self.stop(*key)
        _ip("link", "del", self.host_link, check=False)
        _ip("netns", "del", self.name, check=False)
        time.sleep(0.05)
        if self._owner_lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._owner_lock, fcntl.LOCK_UN)
            self._owner_lock.close()
            self._owner_lock = None


def leftover_namespaces() -> list[str]:
    """The test-host namespaces on this machine (`ip netns list`), by their name prefix."""
    listed = _ip("netns", "list", check=False).stdout.splitlines()
    names = (line.split()[0] for line in listed if line.strip())
    return [name for name in names if name.startswith(NAME_PREFIX)]
