"""Logging: one line per record on stderr, text with a UTC time first or one JSON object
(`--log-format json`), with no URL's credentials and no control character in it; and `say`
for the lines that are not records (a config problem, check's verdict, a fatal error)."""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from typing import Any

from syncd.redact import printable, without_userinfo


class _Redacting(logging.Filter):
    """No log line carries a URL's user and password (see syncd.redact)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = without_userinfo(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_LOG_FORMAT = ["text"]  # what setup_logging chose: say() writes the same way


_HEADER_LOGGERS = ("hpack", "h2")  # HTTP/2 to Consul: syncd.sources.consul_h2


def setup_logging(level: str, log_format: str = "text") -> None:
    """Logs on stderr, one line each: text (a UTC time first), or one JSON object per line
    (`json`)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr)
    for chatty in _HEADER_LOGGERS:  # their DEBUG lines hold whole headers (the Consul token)
        logging.getLogger(chatty).setLevel(max(logging.INFO, logging.getLogger().level))
    _LOG_FORMAT[0] = log_format
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Redacting())
        handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())


def utc_stamp(created: float | None = None) -> str:
    """2026-12-06T21:00:00.123Z: the time every line syncd prints starts with."""
    moment = datetime.datetime.fromtimestamp(
        time.time() if created is None else created, datetime.UTC
    )
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def say(text: str, level: str = "error", stamp: bool = False, stream: Any = None) -> None:
    """One line that is not a log record (a config problem, check's verdict, run's fatal
    error), written as the logs are: one JSON object with --log-format json; else the
    text, with the time first when `stamp` (check's lines read like a compiler's)."""
    stream = stream or sys.stderr
    if _LOG_FORMAT[0] == "json":
        line = {"time": utc_stamp(), "level": level, "logger": "syncd", "message": text}
        stream.write(json.dumps(line) + "\n")
    else:
        text = printable(text)
        stream.write(f"{utc_stamp()} {text}\n" if stamp else f"{text}\n")
    stream.flush()


class _TextFormatter(logging.Formatter):
    """`2026-12-06T21:00:00.123Z WARNING syncd.cache: message`: UTC, as documented."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{utc_stamp(record.created)} {record.levelname} {record.name}: "
        line += printable(record.getMessage())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# What a log line about one target may say besides its message (passed as `extra=`): the
# target ("namespace/service"), the source it is about, and what syncd does (apply, keep,
# hold, retry, refuse, drop ...). JSON logs carry them as fields, for filtering.
LOG_FIELDS = ("target", "source", "action")


class _JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "target", "source", "action", "message"} (the three in
    the middle when the line is about a target; the exception, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": utc_stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for field in LOG_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = str(value)
        line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)
