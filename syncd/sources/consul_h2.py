"""Consul over HTTP/2: many blocking queries as streams over a few TLS connections.

Consul limits how many connections a client opens (`limits.http_max_conns_per_client`,
200 by default), not how many requests they carry. Its HTTPS listener speaks HTTP/2 (ALPN
`h2`), where one connection carries as many requests at once as the server's
SETTINGS_MAX_CONCURRENT_STREAMS allows (250 for Consul). So over HTTPS every followed
service can have its own blocking query, within `consul.max_connections` connections.

`Http2Pool` holds those connections on one asyncio event loop in one thread, whatever the
number of requests; framing, flow control and header compression are the `h2` library's.
A request takes a stream on the connection with the most room, opens a connection when
every one is full and the budget allows, and otherwise waits for a stream to end. A
connection that fails fails the requests it carries (each caller backs off on its own);
cancelling a request resets its stream only, never the connection others share.

Threads (the readers, the feeds, a one-shot run) use it through `Http2HTTPClient`, py-consul's
HTTP client interface; the watches run on the loop itself (`request`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import ssl
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import consul.base
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import requests
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from requests.structures import CaseInsensitiveDict

from syncd.errors import SourceError

log = logging.getLogger(__name__)

DEFAULT_STREAMS = 100  # what a connection is taken to allow until the server says
WINDOW = 16 * 1024 * 1024  # receive window: a large answer is not held up by flow control
_TLS_READ = 64 * 1024  # plaintext asked of TLS at once: a record (16 KiB) fits; a buffer
#                        this size comes from the heap, not a mapping of its own

T = TypeVar("T")


REOPEN_AFTER = 1.0  # seconds before another connection is tried, when one could not be


class Http2Unavailable(Exception):
    """The server did not choose HTTP/2 (it offers HTTP/1.1 only)."""


class StreamFailed(ConnectionError):
    """A request lost with its stream or its connection (reset, closed, refused)."""


Done = Callable[["consul.base.Response | BaseException"], None]


class _Stream:
    """One request in flight. Thousands wait at once (a blocking query each), so it holds
    nothing but its callback until its answer comes."""

    __slots__ = ("chunks", "done", "headers", "id", "status")

    def __init__(self, stream_id: int, done: Done):
        self.id = stream_id
        self.done: Done | None = done  # called once, with the answer or what ended it
        self.status = 0
        self.headers: dict[str, str] | None = None
        self.chunks: list[bytes] | None = None

    def end(self, result: consul.base.Response | BaseException) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(result)


class _H2(h2.connection.H2Connection):
    """h2's connection, remembering fewer closed streams. h2 keeps how each of the last
    65,536 closed streams ended (about 120 bytes each), to tell a late frame on a stream
    it reset (answered with a RST_STREAM) from a protocol error (which ends the
    connection). A watch's stream closes every few minutes, so that record grows for a
    day to 7 MiB per connection (270 MiB at 41 connections). Late frames come within a
    round trip of the reset; twice the most streams a connection carries at once (250 on
    Consul) keeps every stream reset in the meantime, even when all of them were."""

    MAX_CLOSED_STREAMS = 512


class _Connection(asyncio.Protocol):
    """One TLS connection speaking HTTP/2, and the requests it carries.

    TLS is an `ssl.SSLObject` over memory buffers on a plain TCP transport: asyncio's own
    TLS transport keeps a 256 KiB read buffer per connection (10 MiB at 41 connections),
    and a stream reader on top of it another buffer and a task."""

    def __init__(self, context: ssl.SSLContext, server_name: str, authority: str):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_name)
        self._transport: asyncio.Transport | None = None
        self._authority = authority
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._h2 = _H2(config=config)
        self.streams: dict[int, _Stream] = {}
        self.max_streams = DEFAULT_STREAMS
        self.closed = False
        self.draining = False  # the server sent GOAWAY: no new streams, the others finish
        loop = asyncio.get_running_loop()
        self.handshaken: asyncio.Future[str | None] = loop.create_future()  # ALPN's choice
        self._handshake_done = self._speaks_h2 = False
        self._settled = asyncio.Event()  # the server's SETTINGS arrived
        self.on_room: Callable[[], None] = lambda: None  # a stream ended

    # -- TLS, on asyncio's protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._handshake()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        try:
            if not self._handshake_done:
                self._handshake()
            if not self._speaks_h2:
                return  # still shaking hands, or not HTTP/2 (the pool closes it)
            plain = self._decrypt()
            if plain:
                for event in self._h2.receive_data(plain):
                    self._on_event(event)
            self._flush()
        except (ssl.SSLError, h2.exceptions.H2Error) as exc:
            self._lose(exc)

    def eof_received(self) -> bool:
        return False  # the server closed its side: close ours (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(exc or StreamFailed("the server closed the connection"))

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._send_tls()
            return
        except (ssl.SSLError, OSError) as exc:
            self._lose(exc)
            return
        self._handshake_done = True
        self._send_tls()
        chosen = self._tls.selected_alpn_protocol()
        if chosen == "h2":  # the preface first: the server's SETTINGS may already be here
            self._speaks_h2 = True
            self._begin_h2()
        if not self.handshaken.done():  # (cancelled: given up on, being closed)
            self.handshaken.set_result(chosen)

    def _decrypt(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self._tls.read(_TLS_READ)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        self._send_tls()  # what reading produced (a TLS 1.3 key update's answer)
        return b"".join(chunks)

    def _send_tls(self) -> None:
        data = self._outgoing.read()
        if data and self._transport is not None and not self.closed:
            self._transport.write(data)

    def _lose(self, failure: BaseException) -> None:
        if not self.handshaken.done():
            raised = failure if isinstance(failure, Exception) else _lost(failure)
            self.handshaken.set_exception(raised)
            self.handshaken.exception()  # retrieved: whoever awaits it learns it anyway
        self._fail_all(failure)
        self._settled.set()
        if self._transport is not None:
            self._transport.abort()

    # -- HTTP/2

    def _begin_h2(self) -> None:
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(WINDOW)
        self._flush()

    async def settled(self, timeout: float) -> None:
        """Wait for the server's SETTINGS (how many streams it allows)."""
        await asyncio.wait_for(self._settled.wait(), timeout)

    @property
    def room(self) -> int:
        return 0 if self.closed or self.draining else self.max_streams - len(self.streams)

    def send(self, path: str, headers: Mapping[str, str], done: Done) -> _Stream:
        stream_id = self._h2.get_next_available_stream_id()
        request = [
            HeaderTuple(":method", "GET"),
            HeaderTuple(":scheme", "https"),
            HeaderTuple(":authority", self._authority),
            HeaderTuple(":path", path),
            # the token never enters the compression tables (nor a proxy's: RFC 7541 7.1.3)
            *(NeverIndexedHeaderTuple(name.lower(), value) for name, value in headers.items()),
        ]
        self._h2.send_headers(stream_id, request, end_stream=True)
        stream = _Stream(stream_id, done)
        self.streams[stream_id] = stream
        self._flush()
        return stream

    def cancel(self, stream: _Stream) -> None:
        """Reset one stream (a request given up; its callback is not called): the others
        go on."""
        stream.done = None
        if self.streams.pop(stream.id, None) is None or self.closed:
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            self._h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
            self._flush()
        self.on_room()

    def close(self) -> None:
        """Close now, whatever is still unsent (a stalled connection never sends it)."""
        self._lose(StreamFailed("connection closed"))

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self.closed:
            self._tls.write(data)
            self._send_tls()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.max_streams = self._h2.remote_settings.max_concurrent_streams
            self._settled.set()
            self.on_room()
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.headers = {_text(n).lower(): _text(v) for n, v in event.headers or ()}
                stream.status = int(stream.headers.pop(":status", 0))
        elif isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                if stream.chunks is None:
                    stream.chunks = []
                stream.chunks.append(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                body = _body(stream)
                headers = CaseInsensitiveDict(stream.headers or {})
                stream.end(consul.base.Response(stream.status, headers, body))
            self.on_room()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                code = getattr(event.error_code, "name", event.error_code)
                stream.end(StreamFailed(f"the server reset the request ({code})"))
            self.on_room()
        elif isinstance(event, h2.events.ConnectionTerminated):  # GOAWAY: no new streams
            self.draining = True
            last = event.last_stream_id or 0
            for stream_id in [s for s in self.streams if s > last]:
                self.streams.pop(stream_id).end(
                    StreamFailed("the server is closing the connection")
                )

    def _fail_all(self, failure: BaseException) -> None:
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.end(_lost(failure))
        self.on_room()


class Http2Pool:
    """At most `budget` HTTP/2 connections to one server, shared by every request."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        server_name: str,
        budget: int,
        connect_timeout: float,
        on_unavailable: Callable[[BaseException], None] = lambda why: None,
        on_connected: Callable[[], None] = lambda: None,
    ):
        self._on_unavailable = on_unavailable  # the server offers HTTP/1.1 only
        self._on_connected = on_connected  # a connection speaks HTTP/2
        self._host = host
        self._port = port
        self._context = context
        self._server_name = server_name
        self.budget = max(1, budget)
        self._connect_timeout = connect_timeout
        self._connections: list[_Connection] = []
        self._opening = 0  # 1 while a connection is being opened
        self._queued: deque[Pending] = deque()  # requests waiting for a stream
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = threading.Lock()
        self.max_streams: int | None = None  # per connection, once a server has said

    # -- the loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop every connection and watch runs on (started on first use)."""
        with self._start_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._loop.run_forever, name="consul-http2", daemon=True
                ).start()
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coroutine` on the loop, from any other thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return

        def shut() -> None:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

        loop.call_soon_threadsafe(shut)

    def reconnect(self) -> None:
        """Close every connection (their requests fail and are asked again, on new ones):
        the agent stopped answering, and a stalled connection would never say so."""
        loop = self._loop
        if loop is None:
            return

        def drop() -> None:
            for connection in list(self._connections):
                connection.close()

        loop.call_soon_threadsafe(drop)

    @property
    def base_uri(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self._port}"

    def unavailable(self, why: BaseException) -> None:
        """A connection was refused HTTP/2: the clients fall back to HTTP/1.1."""
        self._on_unavailable(why)

    # -- what it holds, for the metrics and the budget

    @property
    def connections(self) -> int:
        return len([c for c in self._connections if not c.closed]) + self._opening

    @property
    def streams(self) -> int:
        return sum(len(c.streams) for c in self._connections)

    def capacity(self, connections: int | None = None) -> int:
        """Requests that fit at once in `connections` (default: the budget)."""
        return (self.budget if connections is None else connections) * (
            self.max_streams or DEFAULT_STREAMS
        )

    # -- requests

    def submit(
        self, path: str, headers: Mapping[str, str], timeout: float | None, done: Done
    ) -> Pending:
        """(On the loop.) GET `path` (with its query) when a stream is free; `done` is
        called once with the answer, whatever its status, or what failed (StreamFailed,
        Http2Unavailable, TimeoutError, an ssl or socket error); never after `cancel`.
        `timeout` counts from when it is sent: a burst of thousands waits for the streams
        and connections it fills, and that wait is not the server's (a connection that
        cannot be opened fails every request waiting; the agent check cuts a stalled one)."""
        pending = Pending(path, headers, done, timeout)
        self._queued.append(pending)
        self._dispatch()
        return pending

    def cancel(self, pending: Pending) -> None:
        """(On the loop.) Give a request up: its stream is reset, its callback not called."""
        pending.done = None
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.stream is not None and pending.connection is not None:
            pending.connection.cancel(pending.stream)

    async def request(
        self, path: str, headers: Mapping[str, str], timeout: float | None
    ) -> consul.base.Response:
        """`submit` as a coroutine (for a thread's request, through `run`)."""
        future: asyncio.Future[consul.base.Response] = asyncio.get_running_loop().create_future()

        def done(result: consul.base.Response | BaseException) -> None:
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        pending = self.submit(path, headers, timeout, done)
        try:
            return await future
        finally:
            if not future.done() or future.cancelled():
                self.cancel(pending)

    def _end(self, pending: Pending, result: consul.base.Response | BaseException) -> None:
        done, pending.done = pending.done, None
        if pending.timer is not None:
            pending.timer.cancel()
        stream, connection = pending.stream, pending.connection
        if isinstance(result, TimeoutError) and stream is not None and connection is not None:
            connection.cancel(stream)  # timed out in flight: free its stream
        if done is not None:
            try:
                done(result)
            except Exception:  # a caller's bug must not end the connection others share
                log.exception("a Consul request's callback failed")

    def _dispatch(self) -> None:
        """Send what waits while streams are free; open a connection (one at a time, up
        to the budget) when none is: a burst fills one connection before it opens the
        next, rather than the whole budget at once."""
        while self._queued:
            pending = self._queued[0]
            if pending.done is None:  # given up while waiting
                self._queued.popleft()
                continue
            self._connections = [c for c in self._connections if not c.closed]
            best = max(self._connections, key=lambda c: c.room, default=None)
            if best is None or best.room <= 0:
                if not self._opening and len(self._connections) < self.budget:
                    self._opening = 1
                    asyncio.get_running_loop().create_task(self._open())
                return
            self._queued.popleft()
            try:
                pending.stream = best.send(
                    pending.path, pending.headers, functools.partial(self._end, pending)
                )
                pending.connection = best
                if pending.timeout is not None:
                    pending.timer = asyncio.get_running_loop().call_later(
                        pending.timeout, self._end, pending, TimeoutError("no answer in time")
                    )
            except h2.exceptions.H2Error:  # out of stream ids, or closing: use another
                best.draining = True
                self._queued.appendleft(pending)

    async def _open(self) -> None:
        try:
            connection = await self._connect()
        except Exception as exc:
            self._opening = 0
            if isinstance(exc, Http2Unavailable):
                self._on_unavailable(exc)
            elif any(not c.closed for c in self._connections):
                # Others work: an agent busy with a burst (a handshake past its deadline)
                # is not down. The requests wait for their streams; another connection is
                # tried a little later, not failed thousands of waiting requests at once.
                log.debug("another Consul connection could not be opened (%s)", exc)
                asyncio.get_running_loop().call_later(REOPEN_AFTER, self._dispatch)
                return
            queued, self._queued = self._queued, deque()
            for pending in queued:  # none works: every request waiting learns why
                self._end(pending, exc)
            return
        self._opening = 0
        self.max_streams = connection.max_streams
        self._connections.append(connection)
        self._on_connected()
        self._dispatch()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        authority = f"{self._server_name}:{self._port}"
        connection = _Connection(self._context, self._server_name, authority)

        async def tls() -> str | None:
            await loop.create_connection(lambda: connection, self._host, self._port)
            return await connection.handshaken

        try:
            chosen = await asyncio.wait_for(tls(), self._connect_timeout)
            if chosen != "h2":
                raise Http2Unavailable(f"the server chose {chosen or 'no protocol'}, not h2")
            connection.on_room = self._dispatch
            await connection.settled(self._connect_timeout)
        except BaseException:
            connection.close()
            raise
        if connection.closed:
            raise StreamFailed("the server closed the connection at once")
        return connection


class Pending:
    """A request waiting for a stream, or in flight on one."""

    __slots__ = ("connection", "done", "headers", "path", "stream", "timeout", "timer")

    def __init__(
        self, path: str, headers: Mapping[str, str], done: Done, timeout: float | None = None
    ):
        self.path = path
        self.headers = headers
        self.done: Done | None = done
        self.timeout = timeout  # seconds for an answer, once sent
        self.timer: asyncio.TimerHandle | None = None
        self.stream: _Stream | None = None
        self.connection: _Connection | None = None


def _body(stream: _Stream) -> str | bytes:
    """The answer's body, made to hold a large answer (a service of 5,000 instances is
    5 MB) as few times as it can: its chunks are let go once joined, and a 200's body
    stays bytes (json.loads takes them; an answer whose index has not moved is then never
    decoded at all). Other statuses' bodies are text, for the error messages."""
    chunks, stream.chunks = stream.chunks or [], None
    data = b"".join(chunks)
    chunks.clear()
    return data if stream.status == 200 else data.decode("utf-8", "replace")


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _lost(failure: BaseException) -> StreamFailed:
    """What a request learns of its connection's end: StreamFailed, caused by what ended it
    (a TLS or socket error keeps its cause for the message)."""
    if isinstance(failure, StreamFailed):
        return StreamFailed(*failure.args)
    error = StreamFailed(str(failure) or type(failure).__name__)
    error.__cause__ = failure
    return error


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """The TLS settings py-consul's requests session uses, offering h2 and http/1.1."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file and key_file:
        context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


class Http2HTTPClient(consul.base.HTTPClient):
    """py-consul's HTTP client interface over the pool, for threads: each GET waits for
    its answer on the loop. `interrupt()` cuts the request in flight short (its stream
    only): a stopped watch or a new token does not wait for a blocking query's wait."""

    def __init__(self, pool: Http2Pool, host: str, port: int, connections_timeout: float):
        super().__init__(host=host, port=port, scheme="https")
        self._pool = pool
        self._connections_timeout = connections_timeout
        self._current: concurrent.futures.Future[Any] | None = None
        self._lock = threading.Lock()

    def get(
        self,
        callback: Callable[[consul.base.Response], Any],
        path: str,
        params: Any = None,
        headers: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        target = path_with_query(path, params)
        timeout = blocking_timeout(params, self._connections_timeout)
        future = self._pool.run(self._pool.request(target, headers or {}, timeout))
        with self._lock:
            self._current = future
        try:  # a thread waits no longer than one more timeout for a stream to be free
            response = future.result(timeout + self._connections_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise requests.Timeout("no stream free and answered in time") from None
        except concurrent.futures.CancelledError:
            raise requests.ConnectionError("the request was cut short") from None
        except (OSError, Http2Unavailable) as exc:
            if isinstance(exc, Http2Unavailable):
                self._pool.unavailable(exc)
            raise requests.ConnectionError(str(exc) or type(exc).__name__) from exc
        finally:
            with self._lock:
                self._current = None
        return callback(response)

    def interrupt(self) -> None:
        with self._lock:
            current = self._current
        if current is not None:
            current.cancel()

    def put(self, *args: Any, **kwargs: Any) -> Any:
        raise SourceError("syncd only reads from Consul")

    delete = post = put

    def close(self) -> None:
        pass


def path_with_query(path: str, params: Any) -> str:
    """The request's :path, as py-consul builds a URI."""
    quoted = urllib.parse.quote(path, safe="/:")
    return f"{quoted}?{urllib.parse.urlencode(params)}" if params else quoted


def blocking_timeout(params: Any, connections_timeout: float) -> float:
    """How long a request may take: the connection timeout, plus a blocking query's wait
    and the up to wait/16 of jitter Consul adds to it (as py-consul does)."""
    values = dict(params or ())
    if "index" not in values:
        return connections_timeout
    wait = _seconds(str(values.get("wait", "300s")))
    return connections_timeout + wait + wait / 16


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            with contextlib.suppress(ValueError):
                return float(text[: -len(unit)]) * units[unit]
    return 300.0


__all__ = [
    "DEFAULT_STREAMS",
    "Http2HTTPClient",
    "Http2Pool",
    "Http2Unavailable",
    "StreamFailed",
    "blocking_timeout",
    "path_with_query",
    "tls_context",
]
