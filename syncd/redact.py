"""Keep secrets out of everything syncd says: errors, logs, printed results.

A config may carry credentials where they do not belong (`http://user:password@consul`)
and point at files that hold anything (a backends file that is really /etc/shadow). So
every message loses the userinfo of any URL in it, and problems found in a backends file
name the file, the line and the position, never the value.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]+@")
_QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
# the keys of a backends file: what a message about one may name
KNOWN_KEYS = frozenset({"port", "ports", "address", "ready", "zone", "backends", "hostname"})
# quoted words a message about a backends file may show: keys and forms, never values
_KEYWORDS = KNOWN_KEYS | {"address:port", "[address]:port"}


def without_userinfo(text: str) -> str:
    """Every URL in `text` without its user and password."""
    return _USERINFO.sub(r"\1***@", text)


def without_values(text: str) -> str:
    """`text` with every quoted value replaced (keys and forms stay), for messages about
    a file that may hold secrets."""

    def hide(match: re.Match[str]) -> str:
        return match.group(0) if match.group(0)[1:-1] in _KEYWORDS else "(value not shown)"

    return _QUOTED.sub(hide, text)


_QUERY = re.compile(r"([a-z][a-z0-9+.-]*://[^\s'\"?#]*)[?#][^\s'\"]*", re.IGNORECASE)


def without_query(text: str) -> str:
    """Every URL in `text` without its query and fragment (`?token=...` is a secret)."""
    return _QUERY.sub(r"\1?(not shown)", text)


def printable(text: str) -> str:
    """`text` with every character a terminal would act on escaped (`\\n`, `\\x00`,
    `\\u202e`): a value from a config or a registry can then never start a forged line,
    hide text or reverse it. Every line syncd prints goes through this."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


__all__ = ["KNOWN_KEYS", "printable", "without_query", "without_userinfo", "without_values"]
