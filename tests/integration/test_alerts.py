"""deploy/'s alert rules under Prometheus' own `promtool test rules` (built from its Go module
and cached like the servers): each alert fires on the series that should fire it, and not
on those that should not (the daemon's alerts stay silent in the CronJob variant and the
CronJob's in the daemon's).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from harness.kube_apiserver import REPO, server_binaries

RULES = REPO / "deploy" / "components" / "monitoring" / "prometheusrule.yaml"


def _summary(alert: str, **labels: str) -> str:
    """The alert's summary annotation as Prometheus expands it for these labels."""
    for group in yaml.safe_load(RULES.read_text())["spec"]["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                text = rule["annotations"]["summary"]
                for key, value in labels.items():
                    text = text.replace(f"{{{{ $labels.{key} }}}}", value)
                return text
    raise AssertionError(f"no alert {alert}")


def _fires(alert: str, at: str, severity: str, **labels: str) -> dict:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [
            {
                "exp_labels": {"severity": severity, **labels},
                "exp_annotations": {"summary": _summary(alert, **labels)},
            }
        ],
    }


def _silent(alert: str, at: str) -> dict:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def _case(series: dict[str, str], *checks: dict) -> dict:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": list(checks),
    }


CRONJOB = 'kube_cronjob_info{cronjob="syncd",namespace="syncd"}'
SCHEDULED = 'kube_cronjob_status_last_schedule_time{cronjob="syncd",namespace="syncd"}'
SUCCEEDED = 'kube_cronjob_status_last_successful_time{cronjob="syncd",namespace="syncd"}'

CASES = [
    # The daemon: down (nothing scraped at all), and up.
    _case({"some_other_metric": "1x20"}, _fires("SyncdDown", "6m", "critical")),
    _case({'up{job="syncd-metrics",pod="a"}': "1x20"}, _silent("SyncdDown", "10m")),
    _case({'up{job="syncd-metrics",pod="a"}': "0x20"}, _fires("SyncdDown", "6m", "critical")),
    # The CronJob variant has no process to scrape: SyncdDown stays silent.
    _case({CRONJOB: "1x40", SUCCEEDED: "0+300x40"}, _silent("SyncdDown", "30m")),
    # Leadership: two standbys and no leader fires; one leader (or one replica without
    # election, which reports 1) does not.
    _case(
        {'syncd_leader{pod="a"}': "0x10", 'syncd_leader{pod="b"}': "0x10"},
        _fires("SyncdNoLeader", "2m", "critical"),
    ),
    _case(
        {'syncd_leader{pod="a"}': "1x10", 'syncd_leader{pod="b"}': "0x10"},
        _silent("SyncdNoLeader", "5m"),
    ),
    # Per-target conditions.
    _case(
        {'syncd_target_stale{target="ns/a"}': "1x10", 'syncd_target_stale{target="ns/b"}': "0x10"},
        _fires("SyncdTargetStale", "6m", "warning", target="ns/a"),
    ),
    _case(
        {'syncd_target_drain_protected{target="ns/a"}': "0 0 1x10"},
        _silent("SyncdDrainProtected", "3m"),
        _fires("SyncdDrainProtected", "5m", "critical", target="ns/a"),
    ),
    _case(
        {'syncd_held_removals_total{target="ns/a"}': "0 0 1 1 1 1 1"},
        _fires("SyncdRemovalHeld", "3m", "warning", target="ns/a"),
    ),
    _case({'syncd_held_removals_total{target="ns/a"}': "3x30"}, _silent("SyncdRemovalHeld", "20m")),
    _case(
        {'syncd_probe_panics_total{target="ns/a"}': "0 2 4"},
        _fires("SyncdProbePanic", "2m", "warning", target="ns/a"),
    ),
    _case(
        {'syncd_reconciles_total{outcome="conflict",reason="source"}': "0 1 1"},
        _fires("SyncdConflicts", "2m", "warning"),
    ),
    _case(
        {'syncd_reconciles_total{outcome="changed",reason="source"}': "0+5x20"},
        _silent("SyncdConflicts", "15m"),
    ),
    # The CronJob: every run succeeds (schedule and success move together): silent.
    _case(
        {CRONJOB: "1x60", SCHEDULED: "0+300x60", SUCCEEDED: "0+300x60"},
        _silent("SyncdJobFailing", "40m"),
        _silent("SyncdJobMissing", "55m"),
    ),
    # Runs keep failing after the first success: the latest run never succeeds.
    # (the success at time 0 is 30 minutes old at 30m; 30 more pending before it fires)
    _case(
        {CRONJOB: "1x90", SCHEDULED: "0+60x90", SUCCEEDED: "0x90"},
        _silent("SyncdJobFailing", "5m"),
        _fires("SyncdJobFailing", "15m", "warning"),
        _silent("SyncdJobMissing", "45m"),
        _fires("SyncdJobMissing", "75m", "critical"),
    ),
    # A CronJob that never completed a run at all.
    _case({CRONJOB: "1x60"}, _fires("SyncdJobMissing", "31m", "critical")),
    # The daemon variant has no CronJob: the CronJob's alerts stay silent.
    _case({'up{job="syncd-metrics",pod="a"}': "1x60"}, _silent("SyncdJobMissing", "55m")),
]


def test_every_alert_fires_when_it_should_and_only_then(tmp_path: Path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump({"groups": yaml.safe_load(RULES.read_text())["spec"]["groups"]})
    )
    tests = tmp_path / "tests.yaml"
    tests.write_text(
        yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": CASES})
    )
    promtool = server_binaries()["promtool"]
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["spec"]["groups"]
        for rule in group["rules"]
    }
    tested = {check["alertname"] for case in CASES for check in case["alert_rule_test"]}
    assert alerts == tested, f"alerts without a test: {alerts - tested}"
