"""How the process holds its memory: a glibc heap tuned for a long life, and freed memory
given back.

A daemon's memory is what it keeps, plus what the C allocator keeps after Python has
freed it: a cold start parses every registry answer and writes every object, then drops
most of it, but glibc returns freed pages in the middle of its heap only when asked
(`malloc_trim`). Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time

_TRIM_EVERY = 30.0  # seconds at least between two trims: each walks the heap (~10 ms)
_trimmed_at = 0.0
_lock = threading.Lock()


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_M_MMAP_THRESHOLD = -3  # mallopt parameters (malloc.h)
_M_ARENA_MAX = -8
_MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept from then on


def tune_malloc() -> None:
    """Keep glibc's heap small for a long life. Done before any thread starts; a setting
    given in the environment (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES)
    is left to win.

    - At most two malloc arenas. glibc gives threads that allocate at once arenas of
      their own, up to 8 per core, and each keeps what it once held: Consul readers and
      watches parse answers on dozens of threads.
    - Blocks of 128 KiB and more always mapped on their own, so freeing one returns it.
      glibc otherwise raises that threshold to the largest block freed so far (up to
      32 MiB): after one large answer (a service of thousands of instances, a page of a
      cluster list) its buffers of that size are carved from the heap instead, where
      they leave holes that the heap keeps."""
    libc = _libc()
    if libc is None:
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    with contextlib.suppress(AttributeError):
        if "MALLOC_ARENA_MAX" not in os.environ and "arena_max" not in tunables:
            libc.mallopt(_M_ARENA_MAX, 2)
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ and "mmap_threshold" not in tunables:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


def give_back_free_memory() -> None:
    """Return the heap's free pages to the system (after a burst of work: a first pass, a
    resync round, a reload), at most once per _TRIM_EVERY seconds."""
    global _trimmed_at
    with _lock:
        now = time.monotonic()
        if now - _trimmed_at < _TRIM_EVERY:
            return
        _trimmed_at = now
    libc = _libc()
    if libc is None:
        return
    with contextlib.suppress(AttributeError):
        libc.malloc_trim(0)


__all__ = ["give_back_free_memory", "tune_malloc"]
