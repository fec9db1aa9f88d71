"""What a run prints: one block of lines per target result, and the one-pass summary.

Each line goes to one stream only, so a log collector that merges the two shows it once.
What `run` reports (changes, CONFLICT, STALE, PROTECTED ..., the summary) is a diagnostic,
on stderr with the logs, each line timestamped; stdout is for output a person or a
program reads as such: `render`'s YAML, and a `--dry-run`'s plan (the changes it would
make with their diffs, unstamped). With `--log-format json` every line is one JSON object.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from dataclasses import dataclass

from syncd.model import ready_count
from syncd.redact import printable
from syncd.results import Outcome, TargetResult

_OUTPUT_LOCK = threading.Lock()  # the daemon's workers report at once: never mix lines


@dataclass(frozen=True)
class Line:
    """One printed line and what it says syncd did: create/update/delete (a change), switch
    (failover), or the outcome (converged, changed, conflict, stale ...)."""

    text: str
    action: str


@dataclass(frozen=True)
class ResultPrinter:
    """Prints results as they come: with the time first (a dry run's plan without); `json`
    prints {"time", "level", "target", "source", "action", "outcome", "message"} objects
    instead."""

    dry_run: bool = False
    json: bool = False

    def __call__(self, result: TargetResult) -> None:
        self.write(*self.render(result))

    def render(self, result: TargetResult) -> tuple[str, str]:
        """The text for stdout and for stderr (printed now, or later in config order)."""
        out, err = result_lines(result, self.dry_run)
        level = "info" if result.outcome.ok else "warning"
        fields = {"target": result.target}
        if result.decision is not None:
            fields["source"] = result.decision.source
        fields["outcome"] = result.outcome.value
        return self._text(out, level, fields), self._text(err, "warning", fields)

    def summary(self, line: str, ok: bool) -> None:
        self.write(self._text([Line(line, "summary")], "info" if ok else "warning", {}), "")

    def write(self, out: str, err: str) -> None:
        """`out`: the result's own lines (stdout for a dry run's plan, else stderr, after
        its warnings); `err`: its warnings."""
        if not self.dry_run:
            out, err = "", err + out  # a diagnostic like the logs: one stream, in order
        with _OUTPUT_LOCK:  # each stream in one call: whole lines, never interleaved
            if err:
                sys.stderr.write(err)
                sys.stderr.flush()
            if out:
                sys.stdout.write(out)
                sys.stdout.flush()

    def _text(self, lines: list[Line], level: str, fields: dict[str, str]) -> str:
        if not lines:
            return ""
        now = datetime.datetime.now(datetime.UTC)
        if self.json:
            time = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            return "".join(
                json.dumps(
                    {"time": time, "level": level, **fields, "action": line.action}
                    | {"message": line.text}
                )
                + "\n"
                for line in lines
            )
        if not self.dry_run:  # a diagnostic, like a log line
            stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z "
            return "".join(stamp + printable(line.text) + "\n" for line in lines)
        return "".join(_printable_lines(line.text) + "\n" for line in lines)


def plural(count: int, noun: str) -> str:
    """1 target, 2 targets."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def result_lines(result: TargetResult, dry_run: bool) -> tuple[list[Line], list[Line]]:
    """What a result prints: lines for stdout, lines for stderr."""
    out: list[Line] = []
    err = [Line(f"{result.target}: warning: {warning}", "warn") for warning in result.warnings]
    for change in result.changes:
        action = change.action.value
        if dry_run:
            out.append(Line(f"{result.target}: would {change.summary(planned=True)}", action))
            out.append(Line(_indent(change.diff()), action))
        else:
            out.append(Line(f"{result.target}: {change.summary()}", action))
    decision = result.decision
    size = ""
    if decision is not None:
        ready = ready_count(decision.backends)
        tier = f"tier {decision.tier}: " if decision.tier or decision.switched_from else ""
        size = f" ({tier}{decision.source}: {len(decision.backends)} backends, {ready} ready)"
        switch = decision.switch_sentence()
        if switch is not None:
            out.append(Line(f"{result.target}: {switch}", "switch"))
    outcome = result.outcome.value
    if result.outcome is Outcome.CONVERGED:
        out.append(Line(f"{result.target}: no changes{size}", outcome))
    elif result.outcome is Outcome.CHANGED:
        verb = "planned" if dry_run else "applied"
        note = f"; {result.message}" if result.message else ""
        out.append(
            Line(
                f"{result.target}: {plural(len(result.changes), 'change')} {verb}{size}{note}",
                outcome,
            )
        )
    else:
        out.append(Line(f"{result.target}: {outcome.upper()}: {result.message}", outcome))
    return out, err


def _printable_lines(text: str) -> str:
    """A dry run's plan keeps its own line breaks (a diff); nothing else may act."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
