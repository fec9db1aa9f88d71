"""`syncd run` as a separate process, the way users start it: for the tests and benchmarks
that need the daemon (or several replicas) against the real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.kube_apiserver import REPO


def start_syncd(config: Path, kubeconfig: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`syncd run --config CONFIG --kubeconfig KUBECONFIG EXTRA...`, stdout and stderr
    into `log` (unbuffered, so a test can read it as it goes)."""
    handle = log.open("w")
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "syncd",
                "run",
                "--config",
                str(config),
                "--kubeconfig",
                str(kubeconfig),
                *extra,
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        handle.close()  # the child has its own copy


__all__ = ["start_syncd"]
