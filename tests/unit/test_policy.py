"""The policy is pure: tiers, failback hold-down, the removal guard, address policy, probes."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from syncd.errors import SourceError
from syncd.model import (
    AddressPolicy,
    Backend,
    EndpointPort,
    FailoverConfig,
    GuardConfig,
    HealthCheckConfig,
    ServicePort,
    Snapshot,
    Target,
)
from syncd.policy import PolicyState, apply_probes, choose, evaluate, filter_addresses
from syncd.sources.consul_config import ConsulSourceConfig
from syncd.sources.static import StaticSourceConfig

PORT = (EndpointPort("http", 8080),)


def backends(*hosts: int, ready: bool = True, net: str = "198.51.100") -> frozenset[Backend]:
    return frozenset(Backend(f"{net}.{h}", PORT, ready) for h in hosts)


def snap(*hosts: int, ready: bool = True, source: str = "s") -> Snapshot:
    return Snapshot(backends(*hosts, ready=ready), source)


def target(tiers: int = 2, **changes) -> Target:
    base = Target(
        "ns",
        "svc",
        (ServicePort("http", 80),),
        tuple(StaticSourceConfig() for _ in range(tiers)),
        failover=FailoverConfig(min_ready=1, failback_after=30),
        guards=GuardConfig(max_removal_fraction=0.5, confirm_after=10),
    )
    return replace(base, **changes)


def test_the_first_tier_with_ready_backends_is_active():
    verdict = choose([snap(1, ready=False), snap(2)], PolicyState(), 0, target())
    assert verdict.decision.tier == 1 and verdict.decision.switched_from is None


def test_failover_is_immediate_and_failback_waits_for_failback_after():
    t = target()
    state = choose([snap(1), snap(2)], PolicyState(), 0, t).state
    down = choose([snap(1, ready=False), snap(2)], state, 5, t)
    assert (down.decision.tier, down.decision.switched_from) == (1, 0)
    back = choose([snap(1), snap(2)], down.state, 10, t)
    assert back.decision.tier == 1 and "failback after 30s more" in back.decision.reason
    still = choose([snap(1), snap(2)], back.state, 39, t)
    assert still.decision.tier == 1
    failback = choose([snap(1), snap(2)], still.state, 40, t)
    assert (failback.decision.tier, failback.decision.switched_from) == (0, 1)


def test_a_flapping_primary_restarts_the_failback_clock():
    t = target()
    state = choose([snap(1, ready=False), snap(2)], PolicyState(), 0, t).state
    state = choose([snap(1), snap(2)], state, 10, t).state
    state = choose([snap(1, ready=False), snap(2)], state, 25, t).state  # flaps
    verdict = choose([snap(1), snap(2)], state, 50, t)  # qualifies since 50 only
    assert verdict.decision.tier == 1


def test_min_ready_decides_whether_a_tier_qualifies():
    t = target(failover=FailoverConfig(min_ready=2))
    verdict = choose([snap(1), snap(2, 3)], PolicyState(), 0, t)
    assert verdict.decision.tier == 1


def test_every_tier_down_keeps_what_is_applied():
    t = target()
    state = choose([snap(1), snap(2)], PolicyState(), 0, t).state
    verdict = choose([snap(1, ready=False), SourceError("down")], state, 5, t)
    assert verdict.decision is None and "keeping what is applied" in verdict.reason
    failed = choose([SourceError("a"), SourceError("b")], state, 5, t)
    assert failed.decision is None and failed.reason.startswith("no source answered")


def test_a_single_source_applies_real_answers_even_empty_ones():
    verdict = choose([Snapshot(frozenset(), "s")], PolicyState(), 0, target(tiers=1))
    assert verdict.decision is not None and verdict.decision.backends == frozenset()


def test_a_large_removal_is_held_until_seen_again_confirm_after_later():
    t = target(tiers=1)
    state = choose([snap(1, 2, 3, 4)], PolicyState(), 0, t).state
    held = choose([snap(1)], state, 1, t)  # 75% removed
    assert held.decision is None and held.hold_until == 11
    assert "would remove 3 of 4 backends (75% > max_removal_fraction 50%)" in held.reason
    assert choose([snap(1)], held.state, 5, t).decision is None
    confirmed = choose([snap(1)], held.state, 11, t)
    assert confirmed.decision.backends == backends(1)


def test_a_different_answer_restarts_the_confirmation():
    t = target(tiers=1)
    state = choose([snap(1, 2, 3, 4)], PolicyState(), 0, t).state
    held = choose([snap(1)], state, 1, t).state
    other = choose([snap(2)], held, 12, t)
    assert other.decision is None and other.hold_until == 22


def test_small_removals_and_readiness_changes_pass_the_guard():
    t = target(tiers=1)
    state = choose([snap(1, 2, 3, 4)], PolicyState(), 0, t).state
    assert choose([snap(1, 2)], state, 1, t).decision is not None  # 50%: allowed
    assert choose([snap(1, 2, 3, 4, ready=False)], state, 1, t).decision is not None


def test_a_failover_is_not_held_as_a_removal():
    t = target()
    state = choose([snap(1, 2, 3, 4), snap(9)], PolicyState(), 0, t).state
    verdict = choose([SourceError("down"), snap(9)], state, 1, t)
    assert verdict.decision.tier == 1


@pytest.mark.parametrize("address", ["169.254.169.254", "0.1.2.3", "239.1.2.3", "10.96.0.10"])
def test_denied_addresses_are_dropped(address):
    policy = AddressPolicy((*AddressPolicy().denied, ipaddress.ip_network("10.96.0.0/12")))
    answer = Snapshot(frozenset({Backend(address, PORT), Backend("198.51.100.1", PORT)}), "s")
    kept, warnings = filter_addresses(answer, target(), policy)
    assert {b.address for b in kept.backends} == {"198.51.100.1"}
    assert f"{address} in the denied range" in warnings[0]


def test_allowed_cidrs_limit_a_target():
    t = target(allowed_cidrs=(ipaddress.ip_network("198.51.100.0/28"),))
    kept, warnings = filter_addresses(snap(1, 20), t, AddressPolicy())
    assert {b.address for b in kept.backends} == {"198.51.100.1"}
    assert "outside the target's allowed_cidrs" in warnings[0]


def test_failed_probes_mark_backends_not_ready():
    verdict = apply_probes([snap(1, 2)], {("198.51.100.2", 8080): False}, None, 1.0)
    (answer,) = verdict.answers
    assert {b.address: b.ready for b in answer.backends} == {
        "198.51.100.1": True,
        "198.51.100.2": False,
    }
    assert not verdict.panic


def test_probes_failing_everything_the_registry_calls_healthy_is_a_panic():
    health = {("198.51.100.1", 8080): False, ("198.51.100.2", 8080): False}
    verdict = apply_probes([snap(1, 2)], health, None, 1.0)
    assert verdict.panic and all(b.ready for b in verdict.answers[0].backends)
    assert apply_probes([snap(1, 2, 3)], health, None, 0.5).panic  # 2 of 3 >= 50%


def test_evaluate_fails_over_when_probes_fail_the_primary_only():
    t = target(health_check=HealthCheckConfig())
    health = {("198.51.100.1", 8080): False}
    evaluation = evaluate([snap(1), snap(2)], PolicyState(), 0, t, AddressPolicy(), health)
    assert evaluation.verdict.decision.tier == 1 and not evaluation.panic


# --------------------------------------------------------------------------- drain protection

REGISTRY = (ConsulSourceConfig(service="rgw", port_name="http"),)


def test_a_registry_that_goes_empty_does_not_drain_the_target():
    one = target(tiers=1, sources=REGISTRY)
    applied = PolicyState(active=0, applied=backends(1, 2, 3))
    verdict = choose([snap()], applied, 0.0, one)
    assert verdict.decision is None and verdict.protected
    assert "lists 0 ready backends, fewer than drain_floor 1, while 3 are applied" in verdict.reason


def test_all_backends_turning_not_ready_is_protected_too():
    one = target(tiers=1, sources=REGISTRY)
    verdict = choose([snap(1, 2, 3, ready=False)], PolicyState(applied=backends(1, 2, 3)), 0, one)
    assert verdict.protected


def test_drain_floor_0_and_a_first_answer_apply_an_empty_registry():
    allow = target(tiers=1, sources=REGISTRY, drain_floor=0, guards=GuardConfig(1.0, 0))
    assert choose([snap()], PolicyState(applied=backends(1)), 0.0, allow).decision is not None
    first = target(tiers=1, sources=REGISTRY)
    assert choose([snap()], PolicyState(), 0.0, first).decision is not None  # nothing applied


def test_a_floor_above_one_protects_a_partial_drain():
    floor = target(tiers=1, sources=REGISTRY, drain_floor=2, guards=GuardConfig(1.0, 0))
    state = PolicyState(applied=backends(1, 2, 3))
    assert choose([snap(1)], state, 0.0, floor).protected
    assert choose([snap(1, 2)], state, 0.0, floor).decision is not None


def test_an_operator_emptying_a_static_list_is_not_second_guessed():
    static = target(tiers=1)  # StaticSourceConfig: only the removal guard applies
    verdict = choose([snap()], PolicyState(applied=backends(1, 2)), 0.0, static)
    assert not verdict.protected and verdict.hold_until is not None


def test_drain_protection_does_not_stop_a_failover_to_a_qualifying_tier():
    tiers = target(sources=(*REGISTRY, StaticSourceConfig()))
    state = PolicyState(active=0, applied=backends(1, 2))
    verdict = choose([snap(), snap(9)], state, 0.0, tiers)
    assert verdict.decision is not None and verdict.decision.tier == 1
