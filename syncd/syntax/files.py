"""Reading the files a config is made of: regular files only, and bounded.

A config or backends path may name anything: /dev/zero (endless), a FIFO (blocks until a
writer comes), a directory, a file of gigabytes. Each is refused in one line naming the
path, before a byte is read, so `check` answers within a second whatever it is given.
"""

from __future__ import annotations

import os
import ssl
import stat
import sys
from pathlib import Path

from syncd.errors import ConfigError

# What a config may hold is bounded by what a pod's memory limit (512Mi) can run: a
# 10,000-target config of 10 backends each is about 3 MB, and the daemon holds it in about
# 160 MiB; 8 MiB is about 250,000 static backends (docs/performance.md).
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_BACKENDS_FILE_BYTES = 2 * 1024 * 1024  # 10,000 backends in their longest form
MAX_BACKENDS_PER_TARGET = 10_000  # as the ExternalService CRD (maxItems)
MAX_STATIC_BACKENDS = 250_000  # in a whole config, backends files included


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_text_file(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes; ConfigError otherwise."""
    try:
        info = os.stat(path)  # follows links: a ConfigMap mount is a chain of them
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            f"{path}: {_kind(info.st_mode)}; syncd reads its config and backends from "
            "regular files only"
        )
    if info.st_size > limit:
        raise ConfigError(
            f"{path}: {info.st_size} bytes, more than the {limit} a config or backends file "
            "may have"
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ConfigError(f"{path}: more than the {limit} bytes a config or backends file may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (at byte {exc.start})") from None


__all__ = [
    "MAX_BACKENDS_FILE_BYTES",
    "MAX_BACKENDS_PER_TARGET",
    "MAX_FILE_BYTES",
    "MAX_STATIC_BACKENDS",
    "ca_bundle_problem",
    "read_stdin",
    "read_text_file",
]


def read_stdin(limit: int = MAX_FILE_BYTES) -> str:
    """The config from standard input (`--config -`), under the same cap as a file."""
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"stdin: more than the {limit} bytes a config may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"stdin: not UTF-8 text (at byte {exc.start})") from None


MAX_CA_BYTES = 1024 * 1024  # a CA bundle (the system's is about 200 KB)


def ca_bundle_problem(path: Path) -> str | None:
    """Why `path` is no usable CA bundle (PEM certificates), or None when it is one: said by
    `check`, instead of every probe failing its TLS handshake at run time."""
    try:
        text = read_text_file(path, MAX_CA_BYTES)
    except ConfigError as exc:
        return exc.problems[0]
    try:
        context = ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        return f"{path}: not a PEM CA bundle ({getattr(exc, 'reason', None) or exc})"
    if not context.get_ca_certs():
        return f"{path}: holds no CA certificate"
    return None
