"""The sizing figures (docs/figures.yaml) into every place that states them: the README's
table, the chart's values comment and the chart's README. One source of truth: edit the
YAML after a benchmark run, then `python -m bench.figures` (`--check`: exit 1 if a place
says something else; a unit test runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from harness.kube_apiserver import REPO

FIGURES = REPO / "docs" / "figures.yaml"
PLACES = {
    REPO / "README.md": "table",
    REPO / "charts" / "syncd" / "values.yaml": "comment",
    REPO / "charts" / "syncd" / "README.md": "sentence",
}
_MARKED = re.compile(
    r"(<!-- figures -->|# figures >>)\n.*?\n(<!-- /figures -->|# << figures)", re.S
)


def _count(n: int) -> str:
    return f"{n:,}"


def table(rows: list[dict]) -> str:
    lines = [
        "| targets | daemon memory (RSS) | `--once` peak | daemon CPU, idle |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        static, consul = row["static"], row["consul"]
        n = _count(row["targets"])
        peak = f" ({consul['peak_rss_mib']} at peak)" if "peak_rss_mib" in consul else ""
        cpu = f"{static['idle_cpu_percent']:.2f} / {consul['idle_cpu_percent']:.2f} %"
        lines.append(
            f"| {n} static / {n} Consul | {static['daemon_rss_mib']} / "
            f"{consul['daemon_rss_mib']} MiB{peak} | {static['once_peak_mib']} MiB | {cpu} |"
        )
    return "\n".join(lines)


def sentence(rows: list[dict]) -> str:
    parts = [
        f"{row['static']['daemon_rss_mib']} MiB at {_count(row['targets'])} static targets"
        for row in rows
    ]
    last = rows[-1]["consul"]
    return (
        f"Daemon memory (RSS): {', '.join(parts)}; {last['daemon_rss_mib']} MiB at "
        f"{_count(rows[-1]['targets'])} Consul services ({last.get('peak_rss_mib', '?')} at "
        "peak). docs/performance.md has the runs."
    )


def comment(rows: list[dict]) -> str:
    words = sentence(rows).split()
    lines, line = [], "#"
    for word in words:
        if len(line) + len(word) + 1 > 92:
            lines.append(line)
            line = "#"
        line += " " + word
    return "\n".join([*lines, line])


def rendered(path: Path, rows: list[dict]) -> str:
    text = path.read_text()
    body = {"table": table, "comment": comment, "sentence": sentence}[PLACES[path]](rows)
    if not _MARKED.search(text):
        raise SystemExit(f"{path}: no figures markers")
    return _MARKED.sub(lambda m: f"{m.group(1)}\n{body}\n{m.group(2)}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only say what differs")
    args = parser.parse_args(argv)
    rows = yaml.safe_load(FIGURES.read_text())["sizing"]
    stale = []
    for path in PLACES:
        text = rendered(path, rows)
        if text != path.read_text():
            stale.append(path)
            if not args.check:
                path.write_text(text)
    for path in stale:
        print(f"{path.relative_to(REPO)}: {'differs from' if args.check else 'updated from'} "
              f"{FIGURES.relative_to(REPO)}")  # fmt: skip
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
