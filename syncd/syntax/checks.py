"""Generic checkers: each validates one value, reports a problem in the one-line format
(`file:line: target ns/svc: field: message`) through a Scope, and returns the typed value
or None. Section schemas (`schema`, `backends`) are built from these."""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.redact import KNOWN_KEYS, without_userinfo, without_values
from syncd.syntax.yamldoc import Document, YamlPath

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass
class Checker:
    """Collects problems with enough context to print file:line: target: field: message."""

    file: str
    doc: Document
    problems: list[str] = field(default_factory=list)
    redact: bool = False  # a file that may hold anything: name where, never the value

    def error(self, path: YamlPath, message: str, scope: YamlPath = (), label: str | None = None):
        message = without_userinfo(without_values(message) if self.redact else message)
        line = self.doc.line(path)
        where = f"{self.file}:{line}" if line else self.file
        relative = path[len(scope) :] if scope and path[: len(scope)] == scope else path
        field_name = format_path(relative, self.redact)
        parts = [where]
        if label:
            parts.append(label)
        if field_name:
            parts.append(field_name)
        self.problems.append(": ".join([*parts, message]))


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")  # whole key: fullmatch ('$' allows a "\n")


def format_path(path: YamlPath, redact: bool = False) -> str:
    """targets[0].sources[1].backends[2]; odd keys quoted so a message stays on one line.
    With `redact` (a file that may hold anything), a key that is not one syncd knows is not
    shown: in a file that is not what it should be, a key may be a whole secret line."""
    text = ""
    for part in path:
        if redact and isinstance(part, str) and part not in KNOWN_KEYS:
            text += ("." if text else "") + "(a key, not shown)"
        elif isinstance(part, int) or not _PLAIN_KEY.fullmatch(part):
            text += f"[{part!r}]" if not isinstance(part, int) else f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass
class Scope:
    """Where we are inside the document, for error messages."""

    checker: Checker
    path: YamlPath
    target_path: YamlPath = ()
    label: str | None = None

    def at(self, *parts: str | int) -> Scope:
        return Scope(self.checker, (*self.path, *parts), self.target_path, self.label)

    def error(self, message: str) -> None:
        self.checker.error(self.path, message, self.target_path, self.label)


def expect_mapping(value: Any, scope: Scope, allowed: set[str], required: set[str]) -> dict | None:
    if value is None:
        scope.error("is empty: give its keys, or remove it")
        return None
    if not isinstance(value, dict):
        scope.error(f"must be a mapping, got {kind_name(value)}")
        return None
    for key in value:
        if key not in allowed:
            hint = closest(str(key), allowed)
            where = scope.at(str(key))
            if scope.checker.redact and str(key) not in KNOWN_KEYS:
                where.error("unknown key: is this a backends file?")
                continue
            where.error(f"unknown key {key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    for key in sorted(required - set(value)):
        scope.error(f"missing required key {key!r}")
    return value


def closest(word: str, choices: set[str]) -> str | None:
    match = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def kind_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def port_number(value: Any, scope: Scope) -> int | None:
    if not is_int(value):
        scope.error(f"port must be a whole number from 1 to 65535, got {value!r}")
        return None
    if not 1 <= value <= 65535:
        scope.error(f"port {value} is out of range 1-65535")
        return None
    return value


def flag(data: dict, key: str, scope: Scope) -> bool | None:
    """data[key] if it is true or false; None if absent or (reported) not a boolean."""
    if key not in data:
        return None
    if not isinstance(data[key], bool):
        scope.at(key).error("must be true or false")
        return None
    return data[key]


def beside(base_dir: Path, name: str) -> Path:
    """A path from the config, relative to the config file's directory."""
    return Path(name) if Path(name).is_absolute() else base_dir / name


def string(value: Any, scope: Scope) -> str | None:
    if not isinstance(value, str):
        scope.error(f"must be a string, got {kind_name(value)}")
        return None
    return value


def kube_name(value: Any, scope: Scope, pattern: re.Pattern, what: str) -> str | None:
    text = string(value, scope)
    if text is None:
        return None
    if len(text) > 63 or not pattern.match(text):
        scope.error(f"{text!r} is not a valid {what}")
        return None
    return text


DNS1123_WHAT = "name (lowercase letters, digits and '-', at most 63, start/end alphanumeric)"
DNS1035_WHAT = "Service name (lowercase letters, digits and '-', at most 63, starts with a letter)"


def number(data: dict, key: str, scope: Scope, low: float, high: float, integer=False):
    """data[key] as a number in [low, high], or None after reporting why not."""
    value = data[key]
    kind_ok = (
        is_int(value)
        if integer
        else (isinstance(value, int | float) and not isinstance(value, bool))
    )
    if kind_ok and low <= value <= high:
        return value if integer else float(value)
    what = "a whole number" if integer else "a number"
    scope.at(key).error(f"must be {what} from {low:g} to {high:g}, got {value!r}")
    return None


def numbers(data: dict, scope: Scope, limits: dict[str, tuple]) -> dict[str, Any]:
    values = {}
    for key, (low, high, *integer) in limits.items():
        if key in data:
            value = number(data, key, scope, low, high, bool(integer))
            if value is not None:
                values[key] = value
    return values


def choice(data: dict, key: str, enum_type, default, scope: Scope):
    if key not in data:
        return default
    try:
        return enum_type(data[key])
    except ValueError:
        choices = ", ".join(e.value for e in enum_type)
        scope.at(key).error(f"{data[key]!r} is not one of: {choices}")
        return default


def nonempty_string(value: Any, scope: Scope) -> str | None:
    if not isinstance(value, str) or not value.strip():
        scope.error(f"must be a non-empty string, got {kind_name(value)}")
        return None
    return value


def cidrs(raw: Any, scope: Scope) -> tuple:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        scope.error("must be a list of CIDRs like 192.168.7.0/24")
        return ()
    result = []
    for index, item in enumerate(raw):
        try:
            result.append(ipaddress.ip_network(item, strict=False))
        except (ValueError, TypeError):
            scope.at(index).error(f"{item!r} is not a CIDR like 192.168.7.0/24")
    return tuple(result)


def served_port(data: dict, key: str, names: list[str], scope: Scope, what: str) -> str:
    """Which Service port a source's backends serve: data[key], or the only port."""
    if key not in data:
        if len(names) > 1:
            scope.error(f"the Service has several ports; say which one {what}: '{key}'")
        return names[0]
    if data[key] not in names:
        known = ", ".join(repr(n) for n in names)
        scope.at(key).error(f"{data[key]!r} is not a port of the Service (ports: {known})")
    return data[key]
