"""What `run` prints, in text and JSON: one line per fact, each on one stream, with the
fields a log collector filters on (target, source, action, outcome)."""

from __future__ import annotations

import io
import json
import logging
import re

from syncd.logs import setup_logging
from syncd.output import ResultPrinter
from syncd.plan import Action, Change
from syncd.policy import Decision
from syncd.results import Outcome, TargetResult

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def _failover_result() -> TargetResult:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "ns"},
    }
    decision = Decision(frozenset(), 1, "consul service web-dr", "tier 0 is down", switched_from=0)
    return TargetResult(
        "ns/web",
        Outcome.CHANGED,
        changes=(Change(Action.UPDATE, "Service", "ns", "web", service, service),),
        decision=decision,
        warnings=("a backend was dropped",),
    )


def test_a_json_result_line_names_the_target_source_action_and_outcome():
    out, err = ResultPrinter(json=True).render(_failover_result())
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["action"] for line in lines] == ["update", "switch", "changed"]
    for line in lines:
        assert line["target"] == "ns/web" and line["source"] == "consul service web-dr"
        assert line["outcome"] == "changed" and line["level"] == "info" and line["time"]
    assert "failover from tier 0 to tier 1" in lines[1]["message"]
    (warning,) = [json.loads(line) for line in err.splitlines()]
    assert warning["level"] == "warning" and warning["action"] == "warn"


def test_run_lines_are_timestamped_and_a_dry_run_plan_is_not():
    out, _err = ResultPrinter().render(_failover_result())
    assert all(STAMP.match(line) for line in out.splitlines())
    plan, _err = ResultPrinter(dry_run=True).render(_failover_result())
    assert not any(STAMP.match(line) for line in plan.splitlines())
    assert "would update Service ns/web" in plan


def test_a_json_log_line_about_a_target_carries_its_fields(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        setup_logging("info", "json")
        about = {"target": "ns/web", "source": "consul service web", "action": "drop"}
        logging.getLogger("syncd.test").warning("left out: %s", "port 0", extra=about)
        logging.getLogger("syncd.test").info("not about a target")
    finally:
        root.handlers[:] = saved
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {
        "time": first["time"],
        "level": "warning",
        "logger": "syncd.test",
        **about,
        "message": "left out: port 0",
    }
    assert set(second) == {"time", "level", "logger", "message"}


def test_run_reports_on_stderr_and_only_a_dry_runs_plan_is_on_stdout(capsys):
    ResultPrinter()(_failover_result())
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert "warning: a backend was dropped" in lines[0]  # its warnings first, then the rest
    assert any("updated Service ns/web" in line for line in lines)
    ResultPrinter(dry_run=True)(_failover_result())
    captured = capsys.readouterr()
    assert "would update Service ns/web" in captured.out
    assert "warning: a backend was dropped" in captured.err
