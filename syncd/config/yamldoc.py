"""YAML with line numbers: plain Python data plus where each value was written.

Every problem syncd reports names the YAML line, so the parser keeps, for each mapping and
list, the line of each of its entries (one small table per container, not one entry per
value: a 10,000-target config stays cheap). Any YAML problem becomes a ConfigError.

Limits, each with a message that names the real cause:

- aliases may expand to at most MAX_ALIAS_VALUES values: a few lines of anchors and
  aliases can otherwise describe billions of values (the "billion laughs");
- a file may hold at most MAX_VALUES values in all (about 100,000 targets of 10 backends);
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

# libyaml's parser when PyYAML was built with it: about ten times faster on large files.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Document:
    """Parsed data, and the YAML line of every value, found by its path."""

    data: Any
    line_of_root: int = 1
    # id(container) -> {key or index: line of that entry}
    # (containers are all reachable from `data`, so their ids stay unique while it lives)
    entry_lines: dict[int, dict[Any, int]] = field(default_factory=dict)

    def line(self, path: YamlPath) -> int | None:
        """The line of the value at `path`, or of its nearest ancestor that exists."""
        node, line = self.data, self.line_of_root
        for part in path:
            lines = self.entry_lines.get(id(node))
            if lines is None or part not in lines:
                break
            line = lines[part]
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
        return line


def parse_yaml(text: str, file: str) -> Document:
    """Parse one YAML document, keeping line numbers; any YAML problem becomes ConfigError."""
    loader = None
    try:
        loader = _Loader(text)  # the reader rejects control characters right here
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{file}: the file is empty")
        builder = _Builder(loader, file)
        doc = Document(data=None, line_of_root=node.start_mark.line + 1)
        builder.doc = doc
        doc.data = builder.build(node, 0, expanding_alias=False)
        return doc
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
    """Turns composed YAML nodes into Python data, recording lines and counting values.

    The composer gives an aliased node as the *same* node object again, so a node seen
    before is an alias expansion: those values are counted against MAX_ALIAS_VALUES.
    """

    def __init__(self, loader: Any, file: str):
        self.loader = loader
        self.file = file
        self.doc: Document
        self.values = 0
        self.alias_values = 0
        self.seen: set[int] = set()

    def build(self, node: Any, depth: int, expanding_alias: bool) -> Any:
        if id(node) in self.seen:
            expanding_alias = True
        elif isinstance(node, yaml.CollectionNode):
            self.seen.add(id(node))
        self._count(depth, expanding_alias)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolve `<<:` merge keys
            result: dict[Any, Any] = {}
            lines: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = self.scalar(key_node)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    line = key_node.start_mark.line + 1
                    raise ConfigError(f"{self.file}:{line}: mapping keys must be plain words")
                if key in result:
                    raise ConfigError(
                        f"{self.file}:{key_node.start_mark.line + 1}: duplicate key {key!r}"
                    )
                result[key] = self.build(value_node, depth + 1, expanding_alias)
                lines[str(key)] = value_node.start_mark.line + 1
            self._remember(result, lines)
            return result
        if isinstance(node, yaml.SequenceNode):
            items = []
            item_lines: dict[Any, int] = {}
            for index, item in enumerate(node.value):
                items.append(self.build(item, depth + 1, expanding_alias))
                item_lines[index] = item.start_mark.line + 1
            self._remember(items, item_lines)
            return items
        return self.scalar(node)

    def _remember(self, container: Any, lines: dict[Any, int]) -> None:
        self.doc.entry_lines[id(container)] = lines

    def _count(self, depth: int, expanding_alias: bool) -> None:
        self.values += 1
        if expanding_alias:
            self.alias_values += 1
            if self.alias_values > MAX_ALIAS_VALUES:
                raise ConfigError(
                    f"{self.file}: aliases expand to more than {MAX_ALIAS_VALUES:,} values; "
                    "write the values out or use fewer aliases"
                )
        if self.values > MAX_VALUES:
            raise ConfigError(
                f"{self.file}: more than {MAX_VALUES:,} values in one file; "
                "split the targets over several syncd instances"
            )
        if depth > MAX_DEPTH:
            raise ConfigError(f"{self.file}: the YAML nests more than {MAX_DEPTH} levels deep")

    def scalar(self, node: Any) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise ConfigError(
                f"{self.file}:{node.start_mark.line + 1}: mapping keys must be plain words"
            )
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # e.g. an impossible !!timestamp raises ValueError
            raise ConfigError(
                f"{self.file}:{node.start_mark.line + 1}: invalid value: {exc}"
            ) from None
