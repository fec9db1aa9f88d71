"""The static source: backends written in the config, or in a YAML file beside it (read
again when it changes). The operator's own list: not second-guessed by drain protection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from syncd.errors import ConfigError, SourceError
from syncd.model import Backend, ServicePort, Snapshot, Target
from syncd.sources.types import SourceNeeds, SourceType
from syncd.syntax.backends import parse_backend_list, read_backends_file
from syncd.syntax.checks import Scope, beside, expect_mapping, string


@dataclass(frozen=True)
class StaticSourceConfig:
    """Backends listed in the config itself, or in a YAML file next to it."""

    backends: tuple[Backend, ...] = ()
    file: Path | None = None

    @property
    def kind(self) -> str:
        return "static"

    @property
    def operators_own(self) -> bool:
        return True

    @property
    def listed(self) -> tuple[Backend, ...]:
        return self.backends

    def describe(self) -> str:
        return f"static file {self.file}" if self.file else "static list"


def parse(
    raw: dict, scope: Scope, ports: tuple[ServicePort, ...], base_dir: Path
) -> StaticSourceConfig | None:
    data = expect_mapping(raw, scope, {"type", "backends", "file"}, {"type"})
    if data is None:
        return None
    if ("backends" in data) == ("file" in data):
        scope.error("a static source needs exactly one of 'backends' or 'file'")
        return None
    if "backends" in data:
        backends = parse_backend_list(data["backends"], scope.at("backends"), ports)
        return None if backends is None else StaticSourceConfig(backends=backends)
    name = string(data["file"], scope.at("file"))
    if name is None:
        return None
    file = beside(base_dir, name)
    try:
        backends = read_backends_file(file, ports)
    except ConfigError as exc:
        for problem in exc.problems:
            scope.at("file").error(problem)
        return None
    return StaticSourceConfig(backends=backends, file=file)


class StaticSource:
    def __init__(self, config: StaticSourceConfig, target: Target, file_poll: float = 1.0):
        self._config = config
        self._target = target
        self._file_poll = file_poll  # seconds between looks at the file's modification time
        self._seen: int | None = None  # mtime of the file behind `_last`
        self._last: Snapshot | None = None

    def describe(self) -> str:
        return self._config.describe()

    def fetch(self) -> Snapshot:
        if self._config.file is None:
            backends = self._config.backends
        else:
            try:
                backends = read_backends_file(self._config.file, self._target.ports)
            except ConfigError as exc:
                # The file was valid at load time; a broken edit since then must not
                # empty the Service, so it is a source failure, not an empty answer.
                raise SourceError("; ".join(exc.problems)) from None
        return Snapshot(backends=frozenset(backends), source=self.describe())

    def poll(self) -> tuple[Snapshot, float | None]:
        """Inline lists never change; a backends file is re-read when its mtime changes."""
        if self._config.file is None:
            return self.fetch(), None
        mtime = self._mtime()
        if self._last is None or mtime != self._seen:
            self._last = self.fetch()
            self._seen = mtime
        return self._last, self._file_poll

    def _mtime(self) -> int | None:
        try:
            return self._config.file.stat().st_mtime_ns if self._config.file else None
        except OSError:
            return None


def _build(config: StaticSourceConfig, target: Target, needs: SourceNeeds) -> StaticSource:
    return StaticSource(config, target, needs.file_poll_interval)


SOURCE_TYPES = (
    SourceType(
        name="static",
        example={"type": "static", "backends": ["192.0.2.10:8080"]},
        parse=parse,
        build=_build,
        crd={
            "backends": {
                "type": "array",
                "maxItems": 10000,
                "description": "static: 'address:port' (one-port Services), or {address, "
                "port | ports: {name: port}, ready, zone, hostname}.",
                # 'address:port' or a mapping: the API server cannot run a rule on a list
                # entry that may be either, so syncd checks these (Valid=False)
                "items": {"x-kubernetes-preserve-unknown-fields": True},
            },
            "file": {"type": "string", "description": "Not allowed in a resource."},
        },
        file_keys=("file",),
    ),
)

__all__ = ["SOURCE_TYPES", "StaticSource", "StaticSourceConfig"]
