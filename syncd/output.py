"""What a run prints: one block of lines per target result, and the one-pass summary.

Each line goes to one stream only, so a log collector that merges the two shows it once:
what happened to each target (changes, and CONFLICT, STALE, PROTECTED ... lines) on
stdout; warnings and logs on stderr. The daemon's lines carry a timestamp, and with
`--log-format json` every line on either stream is one JSON object.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from dataclasses import dataclass

from syncd.model import ready_count
from syncd.pipeline import Outcome, TargetResult

_OUTPUT_LOCK = threading.Lock()  # the daemon's workers report at once: never mix lines


@dataclass(frozen=True)
class ResultPrinter:
    """Prints results as they come: `stamped` (the daemon) puts the time first; `json`
    prints {"time", "level", "target", "outcome", "message"} objects instead."""

    dry_run: bool = False
    stamped: bool = False
    json: bool = False

    def __call__(self, result: TargetResult) -> None:
        self.write(*self.render(result))

    def render(self, result: TargetResult) -> tuple[str, str]:
        """The text for stdout and for stderr (printed now, or later in config order)."""
        out, err = result_lines(result, self.dry_run)
        level = "info" if result.outcome.ok else "warning"
        fields = {"target": result.target, "outcome": result.outcome.value}
        return self._text(out, level, fields), self._text(err, "warning", fields)

    def summary(self, line: str, ok: bool) -> None:
        self.write(self._text([line], "info" if ok else "warning", {}), "")

    @staticmethod
    def write(out: str, err: str) -> None:
        with _OUTPUT_LOCK:  # each stream in one call: whole lines, never interleaved
            if err:
                sys.stderr.write(err)
                sys.stderr.flush()
            if out:
                sys.stdout.write(out)
                sys.stdout.flush()

    def _text(self, lines: list[str], level: str, fields: dict[str, str]) -> str:
        if not lines:
            return ""
        now = datetime.datetime.now(datetime.UTC)
        if self.json:
            time = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            return "".join(
                json.dumps({"time": time, "level": level, **fields, "message": line}) + "\n"
                for line in lines
            )
        if self.stamped:
            stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z "
            return "".join(stamp + line + "\n" for line in lines)
        return "".join(line + "\n" for line in lines)


def result_lines(result: TargetResult, dry_run: bool) -> tuple[list[str], list[str]]:
    """What a result prints: lines for stdout, lines for stderr."""
    out: list[str] = []
    err = [f"{result.target}: warning: {warning}" for warning in result.warnings]
    for change in result.changes:
        if dry_run:
            out.append(f"{result.target}: would {change.summary(planned=True)}")
            out.append(_indent(change.diff()))
        else:
            out.append(f"{result.target}: {change.summary()}")
    decision = result.decision
    size = ""
    if decision is not None:
        ready = ready_count(decision.backends)
        tier = f"tier {decision.tier}: " if decision.tier or decision.switched_from else ""
        size = f" ({tier}{decision.source}: {len(decision.backends)} backends, {ready} ready)"
        switch = decision.switch_sentence()
        if switch is not None:
            out.append(f"{result.target}: {switch}")
    if result.outcome is Outcome.CONVERGED:
        out.append(f"{result.target}: no changes{size}")
    elif result.outcome is Outcome.CHANGED:
        verb = "planned" if dry_run else "applied"
        note = f"; {result.message}" if result.message else ""
        out.append(f"{result.target}: {len(result.changes)} changes {verb}{size}{note}")
    else:
        out.append(f"{result.target}: {result.outcome.value.upper()}: {result.message}")
    return out, err


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
