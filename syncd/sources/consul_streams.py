"""A Consul service's own blocking queries as HTTP/2 streams, driven by callbacks.

Over HTTP/2 every followed service may have its own watch (consul_watch): ten thousand at
once. A watch here is this object and the one request it has in flight: no thread, no
task, no coroutine waiting, so a watch costs about a kilobyte (a coroutine per watch cost
ten). Its answer's callback decides what comes next with the same rules as a thread's
loop (consul_blocking's `Position`: index rules, backoff, spacing) and sends the next
request, or schedules it.

Everything here runs on the HTTP/2 pool's event loop; `start` and `interrupt` may be
called from any thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import consul.base

from syncd.errors import SourceError
from syncd.sources.consul import ConsulSource, Instance
from syncd.sources.consul_api import Reply, token_headers
from syncd.sources.consul_blocking import Asker, Position, Stop
from syncd.sources.consul_h2 import Http2Pool, Pending

log = logging.getLogger(__name__)


class StreamedAsker(Asker, Protocol):
    """What a stream's watch asks and tells, beyond what any loop does."""

    stop: Stop

    def answer_known(self) -> bool:
        """Is the last answer held? (An unchanged one need not be parsed again.)"""
        ...

    def ended(self) -> None: ...


class StreamWatch:
    """One service's blocking queries, one stream at a time, until its asker's `stop`."""

    __slots__ = (
        "_asker",
        "_ended",
        "_headers",
        "_keep",
        "_pending",
        "_pool",
        "_position",
        "_source",
        "_started",
        "_timer",
        "_unless",
    )

    def __init__(
        self,
        pool: Http2Pool,
        source: ConsulSource,
        asker: StreamedAsker,
        keep: Callable[[Mapping[str, Any]], Instance] | None,
    ):
        self._pool = pool
        self._source = source
        self._asker = asker
        self._keep = keep
        self._position = Position(asker, source.clients.connection.min_query_interval)
        self._pending: Pending | None = None
        self._timer: Any = None
        self._headers: dict[str, str] = {}
        self._unless: int | None = None
        self._started = 0.0
        self._ended = False

    def start(self) -> None:
        self._asker.on_connection(self)
        self._pool.loop.call_soon_threadsafe(self._ask)

    def interrupt(self) -> None:
        """Cut the request in flight short (a new token: ask again; stopped: end)."""
        self._pool.loop.call_soon_threadsafe(self._cut)

    def _cut(self) -> None:
        if self._pending is not None:
            self._pool.cancel(self._pending)
            self._pending = None
            self._answered(SourceError("cut short"), cut=True)
        elif self._asker.stop.is_set():  # stopped while pausing
            if self._timer is not None:
                self._timer.cancel()
            self._finish()
        else:  # a new token while pausing: the next request carries it anyway
            self._asker.cut_short()

    def _ask(self) -> None:
        self._timer = None
        if self._asker.stop.is_set():
            self._finish()
            return
        index = self._position.index
        self._unless = index if index and self._asker.answer_known() else None
        path, self._headers, timeout = self._source.watch_request(index)
        self._started = time.monotonic()
        self._pending = self._pool.submit(path, self._headers, timeout, self._answered)

    def _answered(self, result: consul.base.Response | BaseException, cut: bool = False) -> None:
        try:
            self._pending = None
            if self._asker.stop.is_set():
                self._finish()
                return
            if (
                not cut
                and getattr(result, "code", 0) == 403
                and token_headers(self._source.clients.token) != self._headers
            ):
                self._ask()  # refused with a token a rotation just replaced: ask with the new
                return
            try:
                if isinstance(result, SourceError):
                    raise result
                reply: Reply = self._source.watch_reply(
                    result, self._unless, self._keep, self._pool.base_uri
                )
            except SourceError as error:
                pause = self._position.failed(error, self._asker.stop.is_set())
            else:
                self._source.clients.answered()
                pause = self._position.answered(reply, self._started)
            if pause is None:
                self._finish()
            elif pause > 0:
                self._timer = self._pool.loop.call_later(pause, self._ask)
            else:
                self._ask()
        except Exception:  # never silently: the watch ends, its query is placed again
            log.exception("the watch of consul service %s failed", self._asker.name)
            self._asker.stop.set()
            self._finish()

    def _finish(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._asker.on_connection(None)
        self._asker.ended()


__all__ = ["StreamWatch"]
