"""What the benchmarks share: reading a process's CPU and memory, syncd's /metrics, and the
API server's audit log from a byte offset (cheap at tens of thousands of events)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.kube_apiserver import REPO, SYNCD_USER, WRITE_VERBS, KubeApiServer

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def scrape(address: str) -> str:
    return urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()


def metric(address: str, name: str, **labels: str) -> float:
    """Sum of the samples of a metric on syncd's /metrics whose labels include `labels`."""
    return metric_in(scrape(address), name, **labels)


def metric_in(text: str, name: str, **labels: str) -> float:
    """Like `metric`, from one scrape's text (several values from the same moment)."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@dataclass
class Finished:
    returncode: int
    seconds: float
    peak_rss_mib: float
    stdout: str


def run_measured(args: list[str], cwd: Path, log: Path) -> Finished:
    """Run a command to the end; its wall time and its own peak resident memory (wait4)."""
    started = time.monotonic()
    with log.open("w") as stderr:
        process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert process.stdout is not None
        stdout = process.stdout.read()
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    return Finished(process.returncode, seconds, usage.ru_maxrss / 1024, stdout)


class AuditWindow:
    """Requests syncd's user made between `open()` and `close()`, from the audit log."""

    def __init__(self, apiserver: KubeApiServer):
        self._apiserver = apiserver
        self._start = 0
        self.requests: Counter[str] = Counter()  # "verb resource" -> count

    def open(self) -> AuditWindow:
        self._apiserver.audit.mark()  # everything before is on disk
        self._start = self._apiserver.audit_log_path.stat().st_size
        return self

    def close(self) -> AuditWindow:
        self._apiserver.audit.mark()
        with self._apiserver.audit_log_path.open("rb") as log:
            log.seek(self._start)
            data = log.read()
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("user", {}).get("username") != SYNCD_USER:
                continue
            resource_name = (event.get("objectRef") or {}).get("resource", event.get("requestURI"))
            self.requests[f"{event.get('verb')} {resource_name}"] += 1
        return self

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def writes(self) -> int:
        return sum(n for key, n in self.requests.items() if key.split()[0] in WRITE_VERBS)

    def count(self, verb: str) -> int:
        return sum(n for key, n in self.requests.items() if key.split()[0] == verb)


def measured_once(
    apiserver: KubeApiServer, command: list[str], log: Path, label: str, api_pid: int | None = None
) -> list[tuple[str, str]]:
    """Run `syncd run --once ...` to the end and return its rows: wall time, API requests by
    verb and resource, writes, peak RSS (and kube-apiserver's CPU, given its pid)."""
    print(f"run --once ({label}) ...", flush=True)
    window = AuditWindow(apiserver).open()
    api_cpu = cpu_seconds(api_pid) if api_pid else 0.0
    finished = run_measured(command, REPO, log)
    api_cpu = cpu_seconds(api_pid) - api_cpu if api_pid else 0.0
    window.close()
    if finished.returncode != 0:
        print(log.read_text()[-2000:])  # run prints its results on stderr, into the log
        raise SystemExit(f"run --once ({label}) exited {finished.returncode}")
    verbs = ", ".join(f"{n} {k}" for k, n in sorted(window.requests.items()))
    rows = [
        (f"--once {label}: wall time", f"{finished.seconds:.1f} s"),
        (f"--once {label}: API requests", f"{window.total:,} ({verbs})"),
        (f"--once {label}: writes", f"{window.writes:,}"),
        (f"--once {label}: peak RSS", f"{finished.peak_rss_mib:.0f} MiB"),
    ]
    if api_pid:
        rows.append((f"--once {label}: kube-apiserver CPU", f"{api_cpu:.0f} s"))
    return rows


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll `condition` until true; a benchmark that times out stops (no numbers from a
    run that did not happen). /metrics not up yet counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def serves_address(kube, namespace: str, service: str, address: str) -> bool:
    """Does one of the Service's EndpointSlices list `address`?"""
    return any(
        e["addresses"][0] == address
        for s in kube.list("EndpointSlice", namespace, f"kubernetes.io/service-name={service}")
        for e in s.get("endpoints") or ()
    )
