"""Two replicas of the daemon, one Lease: only the holder writes (audit log, by the
User-Agent each replica names itself in), and the other takes over when it goes."""

from __future__ import annotations

import signal
import time

import pytest
import yaml

from harness.helpers import endpoint_pairs, slices_of, wait_for, write_config

pytestmark = pytest.mark.apiserver

FAST = ("--leader-elect", "--lease-namespace", "syncd")
# What client-go's timings allow after a SIGKILL (the default lease 15 s, retry 2 s with
# jitter up to 1.2): the standby notices the last renewal up to one jittered retry late,
# waits the lease out, and tries again up to one jittered retry later; then one reconcile
# and this test's polling. The distribution is `make bench-takeover`'s (README).
TAKEOVER_BOUND = 15.0 + 2 * 2.0 * 1.2 + 1.5


def _backends(path, *addresses):
    path.write_text(yaml.safe_dump([f"{a}:8080" for a in addresses]))


def _replicas(daemon, config, *extra):
    first = daemon(config, *FAST, *extra)
    wait_for(lambda: "became the leader" in first.log_path.read_text(), "a leader")
    second = daemon(config, *FAST, *extra)
    wait_for(lambda: "standing by until" in second.log_path.read_text(), "a standby")
    return first, second


def _agent(process) -> str:
    """The replica's identity, as its log names it (it is in its User-Agent)."""
    for line in process.log_path.read_text().splitlines():
        if "leader election on lease" in line:
            return line.rsplit(" as ", 1)[1]
    raise AssertionError("no replica identity in the log")


def _writers(apiserver, mark):
    return {
        e.user_agent
        for e in apiserver.audit.writes_since(mark)
        if e.resource in ("endpointslices", "services", "endpoints")
    }


def _setup(namespace, tmp_path):
    backends = tmp_path / "b.yaml"
    _backends(backends, "198.51.100.1")
    config = write_config(
        tmp_path / "c.yaml",
        {
            "namespace": namespace,
            "service": "ha",
            "ports": [{"name": "http", "port": 80}],
            "sources": [{"type": "static", "file": str(backends)}],
            "guards": {"max_removal_fraction": 1},
        },
    )
    return backends, config


def test_only_the_lease_holder_writes(daemon, apiserver, admin, namespace, tmp_path):
    backends, config = _setup(namespace, tmp_path)
    leader, standby = _replicas(daemon, config)
    mark = apiserver.audit.mark()
    for n in range(2, 5):
        _backends(backends, *(f"198.51.100.{m}" for m in range(1, n + 1)))
        wait_for(lambda n=n: len(endpoint_pairs(slices_of(admin, namespace, "ha"))) == n, f"{n}")
    writers = _writers(apiserver, mark)
    assert len(writers) == 1 and _agent(leader) in writers.pop()
    assert "became the leader" not in standby.log_path.read_text()


def _takes_over(apiserver, admin, namespace, backends, standby, change_to) -> float:
    """After the leader is gone: when the standby applies a change made meanwhile."""
    gone = time.monotonic()
    _backends(backends, *change_to)
    mark = apiserver.audit.mark()
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "ha")) == {(a, 8080) for a in change_to},
        "the standby applying the pending change",
        timeout=30,
    )
    took = time.monotonic() - gone
    assert all(_agent(standby) in w for w in _writers(apiserver, mark))
    return took


def test_a_killed_leader_is_replaced_within_the_lease_duration(
    daemon, apiserver, admin, namespace, tmp_path
):
    backends, config = _setup(namespace, tmp_path)
    leader, standby = _replicas(daemon, config)
    wait_for(lambda: slices_of(admin, namespace, "ha"), "the slice")
    leader.kill()  # SIGKILL: the lease is not released; it must run out (15 s)
    took = _takes_over(apiserver, admin, namespace, backends, standby, ["198.51.100.9"])
    print(f"pending change applied {took:.1f}s after the leader was killed")
    assert took <= TAKEOVER_BOUND


def test_a_leader_stopped_with_sigterm_hands_over_within_3s(
    daemon, apiserver, admin, namespace, tmp_path
):
    backends, config = _setup(namespace, tmp_path)
    leader, standby = _replicas(daemon, config)
    wait_for(lambda: slices_of(admin, namespace, "ha"), "the slice")
    leader.send_signal(signal.SIGTERM)
    assert leader.wait(timeout=5) == 0
    took = _takes_over(apiserver, admin, namespace, backends, standby, ["198.51.100.8"])
    print(f"pending change applied {took:.1f}s after SIGTERM")
    assert took <= 2 * 2.0 * 1.2 + 1.5  # one jittered retry of the standby, not the lease (15 s)
    assert "released the lease" in leader.log_path.read_text()


def test_a_frozen_leader_makes_no_write_after_it_resumes(
    daemon, apiserver, admin, namespace, tmp_path
):
    backends, config = _setup(namespace, tmp_path)
    leader, _standby = _replicas(daemon, config)
    wait_for(lambda: slices_of(admin, namespace, "ha"), "the slice")
    leader.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    _backends(backends, "198.51.100.7")  # changed while it is frozen
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "ha")) == {("198.51.100.7", 8080)},
        "the standby taking over",
        timeout=25,
    )
    time.sleep(max(0.0, 20 - (time.monotonic() - frozen)))  # frozen for 20 s in all
    mark = apiserver.audit.mark()
    leader.send_signal(signal.SIGCONT)
    _backends(backends, "198.51.100.6")  # a change the old leader sees as it resumes
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "ha")) == {("198.51.100.6", 8080)},
        "the new leader applying it",
    )
    time.sleep(3)
    assert _agent(leader) not in "".join(_writers(apiserver, mark))
    assert leader.poll() is None
