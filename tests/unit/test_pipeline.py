"""The one pipeline every driver uses: memory seeded from the cluster, and the plan."""

from __future__ import annotations

from syncd.live import OFFLINE, LiveState, seed_memory
from syncd.model import (
    AddressPolicy,
    Backend,
    EndpointPort,
    ServicePort,
    Snapshot,
    Target,
)
from syncd.pipeline import run
from syncd.plan import Action
from syncd.policy import PolicyState
from syncd.render import render_target
from syncd.results import PENDING_UID, Outcome, with_service_uid
from syncd.sources.static import StaticSourceConfig

PORT = (EndpointPort("http", 8080),)
TARGET = Target("ns", "rgw", (ServicePort("http", 80),), (StaticSourceConfig(),))
TWELVE = frozenset(Backend(f"192.168.7.{n}", PORT) for n in range(50, 62))
TWO = frozenset(list(TWELVE)[:2])


def _cluster_holding(backends, owner="me") -> LiveState:
    objects = render_target(TARGET, backends, owner, (), "uid-1")
    for obj in objects:
        obj["metadata"].update(uid="uid-1", resourceVersion="7")
    return LiveState.of(service=objects[0], slices=tuple(objects[1:]))


def _step(memory, live, answer=TWO):
    return run(
        TARGET,
        [Snapshot(answer, "static list")],
        memory,
        live,
        now=100.0,
        address_policy=AddressPolicy(),
        owner_id="me",
    )


def test_a_12_to_2_shrink_is_applied_with_an_empty_memory_but_held_with_a_seeded_one():
    live = _cluster_holding(TWELVE)
    assert _step(PolicyState(), live).plan is not None  # what the old daemon did
    seeded = seed_memory(TARGET, live, "me", one_shot=False)
    assert seeded.applied == TWELVE
    step = _step(seeded, live)
    assert step.plan is None and step.result is not None
    assert step.result.outcome is Outcome.HELD
    assert "would remove 10 of 12 backends" in step.result.message


def test_memory_is_seeded_only_from_objects_this_instance_owns():
    live = _cluster_holding(TWELVE, owner="someone-else")
    assert seed_memory(TARGET, live, "me", one_shot=True).applied is None


def test_a_one_shot_memory_fails_back_at_once_and_the_daemon_waits():
    once = seed_memory(TARGET, LiveState(), "me", one_shot=True)
    daemon = seed_memory(TARGET, LiveState(), "me", one_shot=False)
    assert once.qualified_since == (float("-inf"),)  # qualified "forever": fail back now
    assert daemon.qualified_since == ()  # counting starts now: failback_after applies


def test_a_converged_target_plans_no_write():
    live = _cluster_holding(TWELVE)
    step = _step(seed_memory(TARGET, live, "me", one_shot=False), live, answer=TWELVE)
    assert step.plan is not None and step.plan.changes == ()


def test_a_new_service_is_planned_first_and_what_points_at_it_waits_for_its_uid():
    step = _step(PolicyState(), LiveState())
    assert step.plan is not None
    service, slice_ = step.plan.changes
    assert (service.kind, service.action) == ("Service", Action.CREATE)
    assert slice_.desired["metadata"]["ownerReferences"][0]["uid"] == PENDING_UID
    filled = with_service_uid(slice_, "uid-42")
    assert filled.desired["metadata"]["ownerReferences"][0]["uid"] == "uid-42"


def test_render_has_no_cluster_and_no_owner_references():
    step = _step(PolicyState(), OFFLINE)
    assert step.plan is not None
    assert all("ownerReferences" not in c.desired["metadata"] for c in step.plan.changes)


def test_a_service_with_a_selector_blocks_the_target_as_a_conflict():
    live = _cluster_holding(TWELVE)
    live.service["spec"]["selector"] = {"app": "web"}  # type: ignore[index]
    step = _step(seed_memory(TARGET, live, "me", one_shot=False), live, answer=TWELVE)
    assert step.plan is None and step.result is not None
    assert step.result.outcome is Outcome.CONFLICT
