"""The contract every source keeps."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from syncd.errors import SourceError
from syncd.model import Snapshot


class Source(Protocol):
    """Reads one registry for one target."""

    def describe(self) -> str:
        """Short human name used in logs, e.g. 'static file backends.yaml'."""
        ...

    def fetch(self) -> Snapshot:
        """The registry's current answer; raise SourceError when it cannot answer.

        An empty snapshot means the registry says "no backends". A failure must never be
        reported as empty: callers keep the last applied state on SourceError.
        """
        ...

    def watch(self, stop: threading.Event, emit: Callable[[Snapshot | SourceError], None]):
        """Until `stop` is set: emit the first answer, then every change and every new failure."""
        ...


__all__ = ["Source", "SourceError"]
