"""YAML with line numbers: plain Python data plus where each value was written.

Every problem syncd reports names the YAML line, so the reader keeps, for each mapping and
list, the line of each of its entries (one small table per container, not one entry per
value). The data is built straight from the parser's event stream (libyaml's when PyYAML
has it), never as a tree of YAML nodes: a 10,000-target file then costs a few tens of MB
and a few seconds, not hundreds of MB. Any YAML problem becomes a ConfigError.

Anchors and aliases work, and an alias shares its anchor's data instead of copying it.
Limits, each with a message that names the real cause:

- aliases may stand for at most MAX_ALIAS_VALUES values in all: a few lines of anchors
  and aliases can otherwise describe billions of values (the "billion laughs");
- a file may hold at most MAX_VALUES values (about 200,000 targets of 10 backends);
- nesting deeper than MAX_DEPTH is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from syncd.errors import ConfigError

MAX_VALUES = 5_000_000
MAX_ALIAS_VALUES = 100_000
MAX_DEPTH = 64

YamlPath = tuple[str | int, ...]

# libyaml's parser when PyYAML was built with it: several times faster on large files.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass
class Document:
    """Parsed data, and the YAML line of every value, found by its path."""

    data: Any
    line_of_root: int = 1
    # id(container) -> line of each entry: {key: line} for mappings, [line, ...] for lists.
    # Containers are all reachable from `data`, so their ids stay unique while it lives.
    entry_lines: dict[int, Any] = field(default_factory=dict)

    def line(self, path: YamlPath) -> int | None:
        """The line of the value at `path`, or of its nearest ancestor that exists."""
        node, line = self.data, self.line_of_root
        for part in path:
            lines = self.entry_lines.get(id(node))
            try:
                line = lines[part]  # type: ignore[index]
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
        return line


def parse_yaml(text: str, file: str) -> Document:
    """Parse one YAML document, keeping line numbers; any YAML problem becomes ConfigError."""
    loader = None
    try:
        loader = _Loader(text)  # the reader rejects control characters right here
        return _Builder(loader, file).document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}" if mark else file
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: YAML error: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{file}: the YAML nests too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


class _Builder:
    """Python data from parser events, with lines; counts values against the limits."""

    def __init__(self, loader: Any, file: str):
        self.loader = loader
        self.file = file
        self.values = 0
        self.alias_values = 0
        self.anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (data, number of values)
        self.lines: dict[int, Any] = {}
        self.resolved: dict[tuple[str, Any], str] = {}  # (text, implicit) -> its tag

    def error(self, event: Any, message: str) -> ConfigError:
        return ConfigError(f"{self.file}:{event.start_mark.line + 1}: {message}")

    def document(self) -> Document:
        self.loader.get_event()  # StreamStart
        if self.loader.check_event(yaml.StreamEndEvent):
            raise ConfigError(f"{self.file}: the file is empty")
        self.loader.get_event()  # DocumentStart
        line = self.loader.peek_event().start_mark.line + 1
        data, _size = self.value(0)
        self.loader.get_event()  # DocumentEnd
        if not self.loader.check_event(yaml.StreamEndEvent):
            event = self.loader.peek_event()
            raise self.error(event, "YAML syntax error: expected a single document in the stream")
        return Document(data, line, self.lines)

    def value(self, depth: int) -> tuple[Any, int]:
        """The next value and how many values it holds (itself included)."""
        if depth > MAX_DEPTH:
            raise ConfigError(f"{self.file}: the YAML nests more than {MAX_DEPTH} levels deep")
        event = self.loader.get_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in self.anchors:
                raise self.error(event, f"YAML syntax error: undefined alias {event.anchor!r}")
            data, size = self.anchors[event.anchor]
            self.alias_values += size
            if self.alias_values > MAX_ALIAS_VALUES:
                raise ConfigError(
                    f"{self.file}: aliases stand for more than {MAX_ALIAS_VALUES:,} values; "
                    "write the values out or use fewer aliases"
                )
            return data, size
        self.values += 1
        if self.values > MAX_VALUES:
            raise ConfigError(
                f"{self.file}: more than {MAX_VALUES:,} values in one file; "
                "split the targets over several syncd instances"
            )
        if isinstance(event, yaml.ScalarEvent):
            data, size = self.scalar(event), 1
        elif isinstance(event, yaml.MappingStartEvent):
            data, size = self.mapping(depth)
        elif isinstance(event, yaml.SequenceStartEvent):
            data, size = self.sequence(depth)
        else:  # pragma: no cover - the parser only yields the events above here
            raise self.error(event, f"YAML syntax error: unexpected {type(event).__name__}")
        if event.anchor is not None:
            self.anchors[event.anchor] = (data, size)
        return data, size

    def mapping(self, depth: int) -> tuple[dict[Any, Any], int]:
        result: dict[Any, Any] = {}
        lines: dict[str, int] = {}
        merged: list[tuple[dict[Any, Any], int]] = []
        size = 1
        while not self.loader.check_event(yaml.MappingEndEvent):
            key_event = self.loader.peek_event()
            if not isinstance(key_event, yaml.ScalarEvent | yaml.AliasEvent):
                raise self.error(key_event, "mapping keys must be plain words")
            is_merge = (
                isinstance(key_event, yaml.ScalarEvent) and self._tag(key_event) == _MERGE_TAG
            )
            if is_merge:
                self.loader.get_event()  # `<<` itself: not a value of the mapping
                key = None
            else:
                key, _ = self.value(depth + 1)
                if isinstance(key, dict | list) or not _plain_key(key):
                    raise self.error(key_event, "mapping keys must be plain words")
            value_line = self.loader.peek_event().start_mark.line + 1
            value, value_size = self.value(depth + 1)
            size += value_size
            if is_merge:  # `<<: *defaults`: keys written here win over merged ones
                for part in value if isinstance(value, list) else [value]:
                    if not isinstance(part, dict):
                        raise self.error(key_event, "a merge key (<<) needs a mapping")
                    merged.append((part, value_line))
                continue
            if key in result:
                raise self.error(key_event, f"duplicate key {key!r}")
            result[key] = value
            lines[str(key)] = value_line
        self.loader.get_event()  # MappingEnd
        for part, line in merged:
            for key, value in part.items():
                if key not in result:
                    result[key] = value
                    lines[str(key)] = line
        self.lines[id(result)] = lines
        return result, size

    def sequence(self, depth: int) -> tuple[list[Any], int]:
        items: list[Any] = []
        lines: list[int] = []
        size = 1
        while not self.loader.check_event(yaml.SequenceEndEvent):
            lines.append(self.loader.peek_event().start_mark.line + 1)
            item, item_size = self.value(depth + 1)
            items.append(item)
            size += item_size
        self.loader.get_event()  # SequenceEnd
        self.lines[id(items)] = lines
        return items, size

    def _tag(self, event: Any) -> str:
        if event.tag is not None and event.tag != "!":
            return event.tag
        key = (event.value, event.implicit)  # keys repeat in every target: resolved once
        tag = self.resolved.get(key)
        if tag is None:
            tag = self.resolved[key] = self.loader.resolve(
                yaml.ScalarNode, event.value, event.implicit
            )
        return tag

    def scalar(self, event: Any) -> Any:
        tag = self._tag(event)
        if tag == _STR_TAG:  # most values: no node, no constructor
            return event.value
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # e.g. an impossible !!timestamp raises ValueError
            raise self.error(event, f"invalid value: {exc}") from None
        finally:
            self.loader.constructed_objects.pop(node, None)


def _plain_key(key: Any) -> bool:
    return key is None or isinstance(key, str | int | float | bool)
