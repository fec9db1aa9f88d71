"""/metrics, /healthz and /readyz: what Prometheus and the kubelet ask, always answered.

The kubelet restarts a pod whose liveness probe goes unanswered, so no client, however
slow or many, may keep this server from answering one:

- One thread waits on every open connection at once (selectors) and reads each request
  itself, a little at a time, as it arrives. A connection is handed to one of `workers`
  threads only with its whole request in hand, so a slow or idle client costs a file
  descriptor, never a thread.
- Every connection has a deadline for its whole request (`request_deadline` from accept),
  not per read: a client sending a byte every three seconds is closed when it runs out,
  whatever it has sent. The answer, too, must be taken within `write_deadline`.
- At most `max_connections` are open; a new one closes the oldest waiting one.

One request per connection (`Connection: close`): scrapes and probes are seconds apart.
"""

from __future__ import annotations

import contextlib
import select
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from syncd.observability import TargetStatus, render_metrics

_MAX_REQUEST = 8192  # bytes of request line and headers (a GET has no body)
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}


def parse_listen_address(text: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or '[v6]:PORT' -> (host, port); ValueError says what is wrong.
    No host ('':PORT) means every address, IPv4 and IPv6."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (port 0-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class ProcessStatus(Protocol):
    """What answers: the daemon (its loops, its readiness, its targets' gauges), or
    `ONE_SHOT` for a run that ends by itself."""

    def health(self) -> list[str]:
        """What is wrong with the process's own loops ([] when alive)."""
        ...

    def readiness(self) -> tuple[bool, str]: ...

    def target_statuses(self) -> Iterable[TargetStatus]: ...


class _OneShot:
    """`run --once`: alive while it runs, never a replica to send traffic to."""

    def health(self) -> list[str]:
        return []

    def readiness(self) -> tuple[bool, str]:
        return False, "a one-shot run"

    def target_statuses(self) -> Iterable[TargetStatus]:
        return ()


ONE_SHOT: ProcessStatus = _OneShot()


def answer(method: str, path: str, status: ProcessStatus) -> tuple[int, bytes, str]:
    """(status, body, content type) for one request."""
    if method not in ("GET", "HEAD"):
        return 405, b"only GET\n", "text/plain"
    path = path.split("?", 1)[0]
    if path == "/metrics":
        return 200, render_metrics(status.target_statuses()), CONTENT_TYPE_LATEST
    if path == "/healthz":  # liveness: the process and its loops work
        problems = status.health()
        text = "\n".join(problems) if problems else "ok"
        return (500 if problems else 200), f"{text}\n".encode(), "text/plain"
    if path == "/readyz":  # readiness: caches synced; the leader has done a first pass
        ready, why = status.readiness()
        return (200 if ready else 503), f"{why}\n".encode(), "text/plain"
    return 404, b"not found: /metrics, /healthz, /readyz\n", "text/plain"


def _response(status: int, body: bytes, content_type: str, head: bool) -> bytes:
    reason = _REASONS.get(status, "Service Unavailable" if status == 503 else "Error")
    header = (
        f"HTTP/1.1 {status} {reason}\r\nServer: syncd\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return header.encode() + (b"" if head else body)


@dataclass
class _Waiting:
    """A connection whose request is still coming in."""

    since: float
    data: bytearray = field(default_factory=bytearray)


class BoundedServer:
    """Serves `answer` on a listening socket with bounded threads, connections and time."""

    def __init__(
        self,
        listener: socket.socket,
        status: ProcessStatus,
        workers: int = 4,
        max_connections: int = 64,
        request_deadline: float = 5.0,
        write_deadline: float = 10.0,
    ):
        self._listener = listener
        self._status = status
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="metrics-worker")
        self._max = max_connections
        self._request_deadline = request_deadline
        self._write_deadline = write_deadline
        self._selector = selectors.DefaultSelector()
        self._open: dict[socket.socket, _Waiting] = {}

    def serve_forever(self) -> None:
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        while True:
            for key, _events in self._selector.select(timeout=0.5):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    assert isinstance(key.fileobj, socket.socket)
                    self._read(key.fileobj)
            now = time.monotonic()
            for connection, waiting in list(self._open.items()):
                if now - waiting.since > self._request_deadline:
                    self._close(connection)  # out of time, whatever it has sent

    def _accept(self) -> None:
        try:
            connection, _address = self._listener.accept()
        except OSError:
            return
        if len(self._open) >= self._max:
            self._close(min(self._open, key=lambda c: self._open[c].since))  # the oldest
        connection.setblocking(False)
        self._open[connection] = _Waiting(time.monotonic())
        self._selector.register(connection, selectors.EVENT_READ)

    def _read(self, connection: socket.socket) -> None:
        waiting = self._open[connection]
        try:
            chunk = connection.recv(_MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(connection)
            return
        waiting.data += chunk
        if b"\r\n\r\n" not in waiting.data and len(waiting.data) < _MAX_REQUEST:
            return  # more to come
        self._selector.unregister(connection)
        del self._open[connection]
        self._pool.submit(self._handle, connection, bytes(waiting.data), waiting.since)

    def _close(self, connection: socket.socket) -> None:
        self._open.pop(connection, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection)
        connection.close()

    def _handle(self, connection: socket.socket, request: bytes, since: float) -> None:
        """Answer a whole request, then close; a client that will not take the answer
        within the write deadline is dropped."""
        try:
            if b"\r\n\r\n" not in request:
                reply = _response(431, b"request too large\n", "text/plain", False)
            else:
                line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
                method, path = [*line, "", ""][:2]
                reply = _response(*answer(method, path, self._status), method == "HEAD")
            _send_all(connection, reply, time.monotonic() + self._write_deadline)
        except OSError:
            pass  # the client went away
        finally:
            connection.close()


def _send_all(connection: socket.socket, data: bytes, deadline: float) -> None:
    """Send it all before `deadline`, or give up (poll: descriptors may be above 1023)."""
    view = memoryview(data)
    poller = select.poll()
    poller.register(connection, select.POLLOUT)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if poller.poll(left * 1000):
            try:
                sent = connection.send(view)
            except BlockingIOError:
                continue
            view = view[sent:]


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket: no host means every address, IPv6 and IPv4 on one socket
    (falling back to IPv4 where the kernel has no IPv6)."""
    if not host or host == "::":
        try:
            listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError:
            host = host or "0.0.0.0"
        else:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("::", port))
            listener.listen(128)
            return listener
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    return listener


def serve_metrics(address: str, status: ProcessStatus) -> tuple[str, int]:
    """Serve /metrics, /healthz and /readyz on host:port (port 0 picks one; no host: every
    address, IPv4 and IPv6), answered by `status`; returns where it listens."""
    host, port = parse_listen_address(address)
    listener = _listen(host, port)
    server = BoundedServer(listener, status)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    bound_host, bound_port = listener.getsockname()[:2]
    return str(bound_host), int(bound_port)


__all__ = [
    "ONE_SHOT",
    "BoundedServer",
    "ProcessStatus",
    "answer",
    "parse_listen_address",
    "serve_metrics",
]
