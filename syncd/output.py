"""What a run prints: one block of lines per target result, and the one-pass summary.

Lines about changes go to stdout; problems (a target that failed, conflicted, is stale,
protected or held, and warnings) go to stderr only, so a log collector that merges the two
shows each once.
"""

from __future__ import annotations

import sys
import threading

from syncd.model import ready_count
from syncd.pipeline import Outcome, TargetResult

_OUTPUT_LOCK = threading.Lock()  # the daemon's workers report at once: never mix lines


def print_result(result: TargetResult, dry_run: bool) -> None:
    """A result's lines, each stream written in one call (whole lines, never interleaved)."""
    out, err = result_lines(result, dry_run)
    with _OUTPUT_LOCK:
        if err:
            sys.stderr.write("".join(line + "\n" for line in err))
            sys.stderr.flush()
        if out:
            sys.stdout.write("".join(line + "\n" for line in out))


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
        line = f"{result.target}: {result.outcome.value.upper()}: {result.message}"
        out.append(line)
        err.append(line)
    return out, err


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
