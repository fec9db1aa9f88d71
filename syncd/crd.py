"""The ExternalService CRD's schema of a source, generated from the source type rows.

Each row (syncd.sources.types) describes its keys (`crd`), its CEL rules and the keys that
name files in syncd's pod; the CRD's `spec.sources.items` is made of every row's, so the
schema a team's `kubectl apply` meets cannot drift from what syncd parses (as `families`
once did). `python -m syncd.crd` writes it into deploy/components/resources/crd.yaml and
the chart's copy, between the markers; `--check` exits 1 if either differs (a test runs it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from syncd.sources.types import SourceType, source_types

REPO = Path(__file__).resolve().parents[1]
FILES = (
    REPO / "deploy" / "components" / "resources" / "crd.yaml",
    REPO / "charts" / "syncd" / "files" / "externalservices-crd.yaml",
)
BEGIN = "# generated from the source types (python -m syncd.crd): do not edit"
END = "# end of the generated source types"


def _merged(rows: Mapping[str, SourceType]) -> dict[str, Any]:
    """Every row's keys; a key two types share has one schema (their descriptions joined)."""
    properties: dict[str, Any] = {}
    for row in rows.values():
        for key, schema in row.crd.items():
            if key not in properties:
                properties[key] = dict(schema)
                continue
            have = {k: v for k, v in properties[key].items() if k != "description"}
            want = {k: v for k, v in schema.items() if k != "description"}
            if have != want:
                raise ValueError(f"source key {key!r}: {row.name} gives it another schema")
            said = [properties[key].get("description"), schema.get("description")]
            joined = "; ".join(dict.fromkeys(d for d in said if d))
            if joined:
                properties[key]["description"] = joined
    return properties


def items_schema(rows: Mapping[str, SourceType] | None = None) -> dict[str, Any]:
    """`spec.sources.items` of the CRD."""
    rows = source_types() if rows is None else rows
    rules: list[dict[str, str]] = []
    for key in dict.fromkeys(k for row in rows.values() for k in row.file_keys):
        rules.append(
            {
                "rule": f"!has(self.{key})",
                "message": "a resource cannot read files in syncd's pod; give the values inline",
            }
        )
    for row in rows.values():
        rules.extend(dict(rule) for rule in row.crd_rules)
    names = list(rows)
    return {
        "type": "object",
        "required": ["type"],
        "x-kubernetes-validations": rules,
        "properties": {
            "type": {"type": "string", "enum": names, "description": "one of: " + ", ".join(names)},
            **_merged(rows),
        },
    }


def rendered(text: str, rows: Mapping[str, SourceType] | None = None) -> str:
    """The CRD file's text with the generated block between the markers (kept at their
    indentation)."""
    lines = text.split("\n")
    begin = next(i for i, line in enumerate(lines) if line.strip() == BEGIN)
    end = next(i for i, line in enumerate(lines) if line.strip() == END)
    indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
    block = yaml.safe_dump(
        {"items": items_schema(rows)}, sort_keys=False, width=96, default_flow_style=None
    )
    body = [indent + line if line else line for line in block.rstrip("\n").split("\n")]
    return "\n".join([*lines[: begin + 1], *body, *lines[end:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m syncd.crd", description=__doc__)
    parser.add_argument("--check", action="store_true", help="say what differs; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path in FILES:
        text = path.read_text()
        new = rendered(text)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    for path in stale:
        said = "differs from the source types" if args.check else "written"
        print(f"{path.relative_to(REPO)}: {said}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["items_schema", "main", "rendered"]
