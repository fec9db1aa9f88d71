"""syncd's configuration: YAML with line numbers (`yamldoc`), generic checkers (`checks`),
backend entries and backends files (`backends`), section schemas (`schema`) and the loader
(`loader`). Public: `load_config`, `load_config_text`, `read_backends_file`."""

from syncd.config.loader import load_config, load_config_text
from syncd.syntax.backends import read_backends_file

__all__ = ["load_config", "load_config_text", "read_backends_file"]
