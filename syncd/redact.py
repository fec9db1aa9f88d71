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
# quoted words a message about a backends file may show: keys and forms, never values
_KEYWORDS = frozenset(
    {"port", "ports", "address", "ready", "zone", "backends", "address:port", "[address]:port"}
)


def without_userinfo(text: str) -> str:
    """Every URL in `text` without its user and password."""
    return _USERINFO.sub(r"\1***@", text)


def without_values(text: str) -> str:
    """`text` with every quoted value replaced (keys and forms stay), for messages about
    a file that may hold secrets."""

    def hide(match: re.Match[str]) -> str:
        return match.group(0) if match.group(0)[1:-1] in _KEYWORDS else "(value not shown)"

    return _QUOTED.sub(hide, text)


__all__ = ["without_userinfo", "without_values"]
