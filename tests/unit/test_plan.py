"""Planning compares only what syncd manages, so a converged target plans nothing."""

from __future__ import annotations

import copy
from dataclasses import replace

from syncd.model import (
    Backend,
    EndpointPort,
    Output,
    ServicePort,
    Target,
)
from syncd.plan import Action, plan_changes
from syncd.render import render_target
from syncd.sources.static import StaticSourceConfig

TARGET = Target(
    "ns", "svc", (ServicePort("http", 80),), (StaticSourceConfig(),), output=Output.BOTH
)
BACKENDS = [Backend(f"192.0.2.{i}", (EndpointPort("http", 8080),)) for i in range(1, 4)]


def _as_the_server_returns_it(obj: dict) -> dict:
    """Add what the API server adds: identity, defaults, other people's metadata."""
    live = copy.deepcopy(obj)
    meta = live["metadata"]
    meta.update(
        uid="u-1",
        resourceVersion="42",
        creationTimestamp="2026-01-01T00:00:00Z",
        generation=1,
        managedFields=[{"manager": "syncd"}],
    )
    meta["labels"] = {**meta["labels"], "team": "storage"}
    meta["annotations"] = {"note": "hands off"}
    if live["kind"] == "Service":
        live["spec"].update(clusterIP="10.96.0.7", type="ClusterIP", sessionAffinity="None")
        for port in live["spec"]["ports"]:
            port["targetPort"] = port["port"]
    if live["kind"] == "EndpointSlice":
        live["endpoints"] = list(reversed(live["endpoints"]))
    return live


def test_converged_objects_plan_no_writes_despite_server_added_fields():
    desired = render_target(TARGET, BACKENDS, "o")
    live = [_as_the_server_returns_it(obj) for obj in desired]
    assert plan_changes(desired, live) == []


def test_missing_objects_are_created_service_first():
    changes = plan_changes(render_target(TARGET, BACKENDS, "o"), [])
    assert [(c.action, c.kind) for c in changes] == [
        (Action.CREATE, "Service"),
        (Action.CREATE, "Endpoints"),
        (Action.CREATE, "EndpointSlice"),
    ]


def test_a_readiness_change_is_one_update():
    live = [_as_the_server_returns_it(o) for o in render_target(TARGET, BACKENDS, "o")]
    changed = [BACKENDS[0], replace(BACKENDS[1], ready=False), BACKENDS[2]]
    desired = render_target(replace(TARGET, output=Output.ENDPOINTSLICES), changed, "o")
    changes = plan_changes(desired, [o for o in live if o["kind"] != "Endpoints"])
    assert [(c.action, c.kind) for c in changes] == [(Action.UPDATE, "EndpointSlice")]
    assert "-    ready: true\n+    ready: false" in changes[0].diff()


def test_a_stale_managed_label_is_removed_by_an_update():
    desired = render_target(replace(TARGET, output=Output.ENDPOINTS), BACKENDS, "o")
    live = [_as_the_server_returns_it(o) for o in render_target(TARGET, BACKENDS, "o")]
    changes = plan_changes(desired, live)
    endpoints_update = [c for c in changes if c.kind == "Endpoints"]
    assert endpoints_update and endpoints_update[0].action is Action.UPDATE
    assert "skip-mirror" in endpoints_update[0].diff()


def test_objects_no_longer_desired_are_deleted_last_and_service_after_its_slices():
    live = [_as_the_server_returns_it(o) for o in render_target(TARGET, BACKENDS, "o")]
    changes = plan_changes([], live)
    assert [c.kind for c in changes] == ["EndpointSlice", "Endpoints", "Service"]
    assert all(c.action is Action.DELETE for c in changes)


def test_summaries_say_what_happened():
    (change,) = [
        c
        for c in plan_changes(render_target(TARGET, BACKENDS, "o"), [])
        if c.kind == "EndpointSlice"
    ]
    assert change.summary() == "created EndpointSlice ns/svc-v4-8080-0 (3 endpoints)"
    assert change.summary(planned=True) == "create EndpointSlice ns/svc-v4-8080-0 (3 endpoints)"
