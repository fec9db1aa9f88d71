"""The Grafana dashboard (deploy/components/monitoring/dashboard.json) asks only for what
syncd exports: every syncd_* metric it queries exists, and every label it groups by is one
of that metric's labels. A renamed metric or label fails here, not on a blank panel."""

from __future__ import annotations

import json
import re

from harness.helpers import REPO

DASHBOARD = REPO / "deploy" / "components" / "monitoring" / "dashboard.json"
SOURCE = (REPO / "syncd" / "observability.py").read_text()


def _exported() -> dict[str, set[str] | None]:
    """syncd_* metric -> its labels (None: not declared with a label list here)."""
    metrics: dict[str, set[str] | None] = {
        name: None for name in re.findall(r"\b(syncd_[a-z_]+)\b", SOURCE)
    }
    for kind, name, labels in re.findall(
        r'(Counter|Gauge|Histogram)\(\s*"(syncd_[a-z_]+)",\s*(?:"[^"]*"\s*)+,\s*\[([^\]]*)\]',
        SOURCE,
    ):
        metrics[name] = set(re.findall(r'"([a-z_]+)"', labels))
        if kind == "Counter" and not name.endswith("_total"):
            metrics[f"{name}_total"] = metrics[name]  # a Counter's exposition name
    return metrics


def test_every_query_of_the_dashboard_names_an_exported_metric_and_its_labels():
    exported = _exported()
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len(panels) >= 10
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\b(syncd_[a-z_]+)\b", expr))
            assert names or "process_" in expr, expr
            for name in names:
                assert name in exported, f"{panel['title']}: {name} is not exported"
                labels = exported[name]
                grouped = {
                    label.strip()
                    for group in re.findall(r"by \(([^)]*)\)", expr)
                    for label in group.split(",")
                }
                if labels is not None and len(names) == 1:
                    assert grouped <= labels, f"{panel['title']}: {grouped - labels} on {name}"
