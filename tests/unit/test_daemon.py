"""The daemon's own logic in milliseconds, against the in-memory API (harness/memory_api.py).

Reload diffing, first-pass readiness, leadership, stale sources, the converged
short-circuit, a failing and recovering API server, 410 Gone, someone else's edit, and a
field the server does not keep. Each behaviour here is also proven against the real
kube-apiserver in tests/integration; these are for fast feedback while changing the code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import syncd.daemon_reconcile
from harness.helpers import target, wait_for, write_config
from harness.memory_api import MemoryApiServer
from syncd.config import load_config
from syncd.controller import Controller, DaemonSettings
from syncd.kube import Kube, KubeSettings
from syncd.leader import LeaderSettings
from syncd.observability import RECONCILES
from syncd.reload import diff_configs
from syncd.results import Outcome, TargetResult

OWNER = "unit"
SLICES = "endpointslices"


@pytest.fixture
def api() -> Iterator[MemoryApiServer]:
    server = MemoryApiServer()
    yield server
    server.close()


class Daemon:
    """A Controller on its own thread, against the in-memory API, with what it reported."""

    def __init__(self, api: MemoryApiServer, config_path: Path, elector_identity: str = ""):
        self.api = api
        self.stop = threading.Event()
        self.kube = Kube(api, KubeSettings(retry_attempts=2, retry_max_backoff=0.05), self.stop)
        self.results: list[TargetResult] = []
        lease = None
        if elector_identity:
            lease = LeaderSettings("syncd", "syncd", elector_identity, 2.0, 1.5, 0.05)
        self.controller = Controller(
            load_config(config_path),
            self.kube,
            OWNER,
            DaemonSettings(
                resync_interval=0.2,
                workers=2,
                config_poll_interval=0.05,
                tick=0.05,  # fast: the resync batches, a failing source's retries, files
                source_retry_cap=0.1,
                file_poll_interval=0.05,
            ),
            self.results.append,
            self.stop,
            lease,
        )
        self.thread = threading.Thread(target=self.controller.run, daemon=True)

    def __enter__(self) -> Daemon:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def ready(self) -> str | None:
        ok, why = self.controller.readiness()
        return why if ok else None

    def outcomes(self, key: str) -> list[Outcome]:
        return [r.outcome for r in self.results if r.target == key]


def addresses(api: MemoryApiServer, namespace: str = "ns") -> set[str]:
    return {
        address
        for obj in api.objects(SLICES, namespace)
        for endpoint in obj.get("endpoints") or ()
        for address in endpoint["addresses"]
    }


def backends_file(path: Path, *backends: str) -> Path:
    path.write_text(yaml.safe_dump(list(backends)))
    return path


def file_target(name: str) -> dict:
    return target("ns", "b", []) | {"sources": [{"type": "static", "file": name}]}


def edit_by_hand(api: MemoryApiServer, address: str, instead: str) -> None:
    """Someone else rewrites the address of the slice holding `address`."""
    edited = next(
        s for s in api.objects(SLICES, "ns") if s["endpoints"][0]["addresses"] == [address]
    )
    edited["endpoints"][0]["addresses"] = [instead]
    api.put(SLICES, edited)


def two_targets(tmp_path: Path, b_backends: list[str]) -> Path:
    return write_config(
        tmp_path / "c.yaml",
        target("ns", "a", ["198.51.100.1:8080"]),
        target("ns", "b", b_backends),
    )


def test_every_target_has_its_first_pass_before_the_daemon_says_ready(api, tmp_path):
    with Daemon(api, two_targets(tmp_path, ["198.51.100.2:8080"])) as daemon:
        assert wait_for(daemon.ready, "ready") == "ok"
        assert addresses(api) == {"198.51.100.1", "198.51.100.2"}
        assert {s["metadata"]["name"] for s in api.objects("services", "ns")} == {"a", "b"}


def test_a_resync_of_a_converged_target_costs_no_request_and_no_decision(
    api, tmp_path, monkeypatch
):
    decided: list[str] = []
    real = syncd.daemon_reconcile.reconcile

    def counting(target, *args, **kwargs):
        decided.append(target.key)
        return real(target, *args, **kwargs)

    monkeypatch.setattr(syncd.daemon_reconcile, "reconcile", counting)
    with Daemon(api, two_targets(tmp_path, ["198.51.100.2:8080"])) as daemon:
        wait_for(daemon.ready, "ready")
        states = daemon.controller._targets.states()
        wait_for(lambda: all(s.converged_on for s in states), "both targets known converged")
        converged = RECONCILES.labels("converged", "resync")
        decided.clear()
        before = {k: n for k, n in api.requests.items() if not k.startswith("GET")}
        reads = api.requests["GET services"], api.requests["GET endpointslices"]
        resyncs = converged._value.get()
        time.sleep(0.6)  # three resync intervals: every target compared with the cache
        assert converged._value.get() >= resyncs + 4
        assert decided == []  # known converged: nothing it depends on changed
        assert {k: n for k, n in api.requests.items() if not k.startswith("GET")} == before
        # watches are GETs too: at most a new watch, no read per target
        assert api.requests["GET services"] - reads[0] <= 2
        assert api.requests["GET endpointslices"] - reads[1] <= 2


def test_a_reload_restarts_only_the_targets_that_changed(api, tmp_path):
    config = two_targets(tmp_path, ["198.51.100.2:8080"])
    with Daemon(api, config) as daemon:
        wait_for(daemon.ready, "ready")
        started: list[str] = []
        registry = daemon.controller._targets
        real_start = registry.start
        registry.start = lambda target: started.append(target.key) or real_start(target)
        untouched = api.get(SLICES, "ns", api.objects(SLICES, "ns")[0]["metadata"]["name"])
        assert untouched is not None and untouched["metadata"]["labels"]
        two_targets(tmp_path, ["198.51.100.2:8080", "198.51.100.3:8080"])
        daemon.controller.request_reload()
        wait_for(lambda: "198.51.100.3" in addresses(api), "b's new backend")
        assert addresses(api) == {"198.51.100.1", "198.51.100.2", "198.51.100.3"}
        assert started == ["ns/b"]
        a_slices = [
            s
            for s in api.objects(SLICES, "ns")
            if s["metadata"]["labels"].get("kubernetes.io/service-name") == "a"
        ]
        assert [s["metadata"]["resourceVersion"] for s in a_slices] != []
        assert all(
            s["metadata"]["resourceVersion"] == untouched["metadata"]["resourceVersion"]
            for s in a_slices
            if s["metadata"]["name"] == untouched["metadata"]["name"]
        )


def test_diff_configs_names_added_changed_and_removed_targets(tmp_path):
    old = load_config(two_targets(tmp_path, ["198.51.100.2:8080"]))
    new_path = write_config(
        tmp_path / "n.yaml",
        target("ns", "b", ["198.51.100.3:8080"]),
        target("ns", "c", ["198.51.100.4:8080"]),
    )
    diff = diff_configs(old, load_config(new_path))
    assert (diff.added, diff.changed, diff.removed) == (("ns/c",), ("ns/b",), ("ns/a",))
    assert diff_configs(old, old).empty


def test_an_invalid_edit_keeps_the_running_config(api, tmp_path, caplog):
    config = two_targets(tmp_path, ["198.51.100.2:8080"])
    with Daemon(api, config) as daemon:
        wait_for(daemon.ready, "ready")
        writes = api.writes()
        config.write_text(config.read_text().replace("198.51.100.2:8080", "198.51.100.2:99999"))
        wait_for(lambda: "new config rejected" in caplog.text, "the rejection logged")
        assert addresses(api) == {"198.51.100.1", "198.51.100.2"}
        assert api.writes() == writes


def test_a_removed_target_is_pruned_and_a_foreign_slice_is_left_alone(api, tmp_path):
    foreign = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "b-theirs",
            "namespace": "ns",
            "labels": {"kubernetes.io/service-name": "b"},
        },
        "addressType": "IPv4",
        "endpoints": [],
    }
    api.put(SLICES, foreign)
    config = two_targets(tmp_path, ["198.51.100.2:8080"])
    with Daemon(api, config) as daemon:
        wait_for(daemon.ready, "ready")
        write_config(config, target("ns", "a", ["198.51.100.1:8080"]))
        wait_for(lambda: "198.51.100.2" not in addresses(api), "b's slice pruned")
        assert api.get(SLICES, "ns", "b-theirs") is not None
        assert api.get("services", "ns", "b") is None


def test_a_broken_backends_file_is_stale_once_and_keeps_what_is_applied(api, tmp_path):
    backends = backends_file(tmp_path / "b.yaml", "198.51.100.2:8080")
    config = write_config(
        tmp_path / "c.yaml",
        file_target("b.yaml"),
    )
    with Daemon(api, config) as daemon:
        wait_for(daemon.ready, "ready")
        writes = api.writes()
        backends.write_text("- not an address\n")
        wait_for(lambda: Outcome.STALE in daemon.outcomes("ns/b"), "stale reported")
        time.sleep(0.3)  # more polls of the broken file: reported once, nothing written
        assert daemon.outcomes("ns/b").count(Outcome.STALE) == 1
        assert api.writes() == writes + 1  # the Event below, nothing else
        assert addresses(api) == {"198.51.100.2"}
        events = [e["reason"] for e in api.objects("events", "ns")]
        assert events == ["SourcesUnavailable"]  # said once, as an Event too
        backends_file(backends, "198.51.100.2:8080", "198.51.100.5:8080")
        wait_for(lambda: "198.51.100.5" in addresses(api), "the fixed file applied")


def test_a_large_removal_is_held_reported_once_then_applied(api, tmp_path):
    backends = backends_file(tmp_path / "b.yaml", "198.51.100.2:8080", "198.51.100.3:8080")
    config = write_config(
        tmp_path / "c.yaml",
        file_target("b.yaml") | {"guards": {"max_removal_fraction": 0.4, "confirm_after": 0.5}},
    )
    with Daemon(api, config) as daemon:
        wait_for(daemon.ready, "ready")
        backends_file(backends, "198.51.100.4:8080")
        wait_for(lambda: Outcome.HELD in daemon.outcomes("ns/b"), "the removal held")
        assert addresses(api) == {"198.51.100.2", "198.51.100.3"}
        wait_for(lambda: addresses(api) == {"198.51.100.4"}, "applied once confirmed")
        assert daemon.outcomes("ns/b").count(Outcome.HELD) == 1


def test_someone_elses_edit_of_a_slice_is_put_back(api, tmp_path):
    with Daemon(api, two_targets(tmp_path, ["198.51.100.2:8080"])) as daemon:
        wait_for(daemon.ready, "ready")
        edit_by_hand(api, "198.51.100.2", "198.51.100.66")
        wait_for(lambda: addresses(api) == {"198.51.100.1", "198.51.100.2"}, "the edit undone")


def test_a_watch_too_old_to_resume_lists_again_and_misses_nothing(api, tmp_path):
    with Daemon(api, two_targets(tmp_path, ["198.51.100.2:8080"])) as daemon:
        wait_for(daemon.ready, "ready")
        api.compact()  # every watch now resumes from before the history: 410 Gone
        edit_by_hand(api, "198.51.100.2", "198.51.100.66")
        wait_for(lambda: addresses(api) == {"198.51.100.1", "198.51.100.2"}, "the edit undone")


def test_writes_failing_are_retried_and_applied_when_the_api_answers_again(api, tmp_path):
    backends = backends_file(tmp_path / "b.yaml", "198.51.100.2:8080")
    config = write_config(
        tmp_path / "c.yaml",
        file_target("b.yaml"),
    )
    with Daemon(api, config) as daemon:
        wait_for(daemon.ready, "ready")
        api.fail(503)
        backends_file(backends, "198.51.100.2:8080", "198.51.100.7:8080")
        wait_for(lambda: Outcome.FAILED in daemon.outcomes("ns/b"), "the failure reported")
        assert addresses(api) == {"198.51.100.2"}
        api.recover()
        wait_for(lambda: "198.51.100.7" in addresses(api), "applied after recovery")
        assert daemon.outcomes("ns/b").count(Outcome.FAILED) == 1  # reported once, not per retry


def test_a_field_the_server_does_not_keep_is_not_written_again_and_again(api, tmp_path):
    api.drop_field("services", "trafficDistribution")  # as 1.30 with the gate off
    config = write_config(
        tmp_path / "c.yaml",
        target("ns", "z", ["198.51.100.2:8080"], traffic_distribution="PreferClose"),
    )
    with Daemon(api, config) as daemon:
        wait_for(daemon.ready, "ready")
        writes = api.writes("services")
        time.sleep(0.6)  # three resync intervals
        assert api.writes("services") == writes
        spec = api.get("services", "ns", "z")["spec"]  # type: ignore[index]
        assert "trafficDistribution" not in spec


def test_a_standby_writes_nothing_and_takes_over_with_a_first_pass(api, tmp_path):
    api.put(
        "leases",
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "syncd", "namespace": "syncd"},
            "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3600},
        },
    )
    with Daemon(api, two_targets(tmp_path, ["198.51.100.2:8080"]), "me") as daemon:
        why = wait_for(daemon.ready, "ready as a standby")
        assert why == "standby (the lease is held by someone-else)"
        time.sleep(0.3)
        assert api.objects(SLICES) == [] and api.objects("services") == []
        api.remove("leases", "syncd", "syncd")  # the other replica is gone
        wait_for(lambda: daemon.ready() == "leader", "leading, every first pass done")
        assert addresses(api) == {"198.51.100.1", "198.51.100.2"}  # written before ready


def test_a_replica_that_cannot_read_its_lease_is_not_ready(api, tmp_path):
    with Daemon(api, two_targets(tmp_path, ["198.51.100.2:8080"]), "me") as daemon:
        wait_for(lambda: daemon.controller.ready, "the cache synced")
        api.fail(403)
        wait_for(lambda: "cannot lead" in daemon.controller.readiness()[1], "not ready, saying why")
        assert daemon.controller.readiness()[0] is False
        api.recover()
        wait_for(lambda: daemon.ready() == "leader", "leading once it can")
