"""The test hosts' ownership: one live owner at a time, and a dead owner's leftovers cleared.

A run killed before its teardown leaves its namespace, and the address 198.51.100.1 on
this host; the next run's probes would then go to that dead namespace. These tests use
their own lock file, so they never wait for (or disturb) the session's test hosts.
"""

from __future__ import annotations

import fcntl
import subprocess

import pytest

from harness.kube_apiserver import ServerStartError
from harness.netns_hosts import NAME_PREFIX, NetnsHosts, leftover_namespaces

pytestmark = [pytest.mark.root, pytest.mark.netns]


def test_a_dead_runs_namespace_is_removed_by_the_next_owner(tmp_path):
    leftover = f"{NAME_PREFIX}0dead0ff"
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    try:
        hosts = NetnsHosts(owner_lock_path=tmp_path / "owner.lock")
        hosts._take_ownership(wait=5)
        try:
            assert leftover not in leftover_namespaces()
        finally:
            hosts.remove()
    finally:
        subprocess.run(["ip", "netns", "del", leftover], capture_output=True)


def test_a_live_owner_is_waited_for_and_then_named(tmp_path):
    lock_path = tmp_path / "owner.lock"
    with lock_path.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ServerStartError, match="another run has held the test hosts"):
            NetnsHosts(owner_lock_path=lock_path)._take_ownership(wait=1.5)
    hosts = NetnsHosts(owner_lock_path=lock_path)
    hosts._take_ownership(wait=5)  # released: taken at once
    hosts.remove()
