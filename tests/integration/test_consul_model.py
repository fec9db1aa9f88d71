"""A randomized model test of the Consul source: a seeded stream of random operations on a
real Consul, across watched and feed-followed services, single targets, drain-protected
ones and failover tiers; once the stream stops and the stated bound has passed, every
target shows exactly what the model says Consul holds.

Replay a failure with the seed it prints: SYNCD_MODEL_SEED=<seed>. SYNCD_MODEL_OPS sets
the stream's length (default 300 here; `make soak` runs the long version with timings).
"""

from __future__ import annotations

import os
import random
import time

import pytest

from harness.consul_model import GUARD_CONFIRM_AFTER, ConsulModel, TargetSpec, mismatch
from harness.helpers import readiness, sample, scrape, slices_of, wait_for, write_config
from harness.kube_apiserver import free_port

pytestmark = pytest.mark.apiserver

SERVICES = [f"m{n}" for n in range(10)]
TARGETS = [
    *(TargetSpec(service, (service,)) for service in SERVICES),
    TargetSpec("m0-guarded", ("m0",), drain_floor=1),
    TargetSpec("m5-guarded", ("m5",), drain_floor=1),
    TargetSpec("failover-a", ("m2", "m3")),  # a watched primary, a feed-followed fallback
    TargetSpec("failover-b", ("m6", "m7")),  # both feed-followed
    TargetSpec("failover-c", ("m8", "m9"), drain_floor=1),
]
# 8 connections over HTTP/1.1: 1 reader + 4 feeds leave 3 watches (m0, m1, m2, in config
# order); the other seven services are followed by the feeds. Over HTTP/2 the 8 connections
# carry 2,000 queries: every service is watched.
MAX_CONNECTIONS = 8
PLACED = {"http": (3, 7), "https": (10, 0)}  # (watched, feed-followed)
SWEEP_RATE = 100.0
# The stated bound for a feed-followed service (README "Consul at scale"): one sweep round
# (services / sweep_rate) plus round trips and one reconcile, plus the removal guard's hold;
# generous on a loaded machine: this is a correctness test, the timings are the soak's.
SETTLE = len(SERVICES) / SWEEP_RATE + GUARD_CONFIRM_AFTER + 20.0


def live(admin, namespace: str, service: str) -> dict:
    return readiness(slices_of(admin, namespace, service))


def wrong_targets(model: ConsulModel, admin, namespace: str) -> dict[str, str]:
    wrong = {}
    for target in TARGETS:
        listed = set().union(*(model.listed[tier] for tier in target.tiers))
        problem = mismatch(model.expect(target), live(admin, namespace, target.service), listed)
        if problem:
            wrong[target.service] = problem
    return wrong


def test_random_consul_changes_reach_every_target_watched_or_feed_followed(
    daemon, consul_dev_any, admin, apiserver, namespace, tmp_path
):
    consul_dev = consul_dev_any
    seed = int(os.environ.get("SYNCD_MODEL_SEED") or random.randrange(2**32))
    operations = int(os.environ.get("SYNCD_MODEL_OPS") or 300)
    replay = f"seed {seed} (replay: SYNCD_MODEL_SEED={seed})"
    print(f"model test: {replay}, {operations} operations")
    model = ConsulModel(consul_dev, SERVICES, seed)
    for _ in range(25):
        model.register()
    model.note_listed()
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "c.yaml",
        *(target.config(namespace) for target in TARGETS),
        consul={
            **consul_dev.config_section(),
            "max_connections": MAX_CONNECTIONS,
            "sweep_rate": SWEEP_RATE,
        },
    )
    process = daemon(config, "--metrics-address", metrics)
    wait_for(
        lambda: not wrong_targets(model, admin, namespace), f"first sync, {replay}", timeout=60
    )
    text = scrape(metrics)
    watched, followed = PLACED["https" if consul_dev.tls else "http"]
    assert sample(text, "syncd_consul_services", mode="watch") == watched
    assert sample(text, "syncd_consul_services", mode="feed") == followed

    mark = apiserver.audit.mark()
    kinds: dict[str, int] = {}
    for operation in model.run(operations, pause=0.02):
        kinds[operation.kind] = kinds.get(operation.kind, 0) + 1
    stopped = time.monotonic()
    deadline = stopped + SETTLE
    wrong = wrong_targets(model, admin, namespace)
    while wrong and time.monotonic() < deadline:
        time.sleep(0.2)
        wrong = wrong_targets(model, admin, namespace)
    assert not wrong, (
        f"{replay}: {len(wrong)} targets still wrong {SETTLE:.0f}s after the stream "
        f"stopped: {wrong}\noperations: {kinds}\n"
        f"log tail:\n{process.log_path.read_text()[-3000:]}"
    )

    # Drain protection is visible exactly while it holds something other than the answer.
    text = scrape(metrics)
    for target in TARGETS:
        expectation = model.expect(target)
        shown = live(admin, namespace, target.service)
        protected = sample(
            text, "syncd_target_drain_protected", target=f"{namespace}/{target.service}"
        )
        if expectation.held and shown != expectation.endpoints:
            assert protected == 1, f"{replay}: {target.service} held but not reported"
        elif not expectation.held:
            assert protected == 0, f"{replay}: {target.service} reported protected"

    # Every write went to this test's own namespace, to a Service of the config, its
    # slices, or an Event; nothing else was touched.
    configured = {target.service for target in TARGETS}
    prefixes = tuple(f"{service}-" for service in configured)  # the slices' names
    writes = apiserver.audit.writes_since(mark)
    gone = [w for w in writes if w.verb == "delete" and w.code == 404]
    assert not gone, f"{replay}: deleted what was gone already (two deletes of one slice): {gone}"
    for write in writes:
        assert write.namespace == namespace, f"{replay}: wrote outside: {write}"
        if write.resource == "events":
            continue
        assert write.resource in ("endpointslices", "services"), f"{replay}: {write}"
        assert write.name in ("", *configured) or write.name.startswith(prefixes), (
            f"{replay}: wrote an object of no configured Service: {write}"
        )
