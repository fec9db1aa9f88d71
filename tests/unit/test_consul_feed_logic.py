"""The change feeds' pure logic: what changed between two answers, and how syncd patches
what it holds without ever going back in time."""

from __future__ import annotations

from syncd.model import ConsulConnection, ConsulSourceConfig, ServicePort, Target
from syncd.sources.consul import ConsulSource
from syncd.sources.consul_api import ConsulClients
from syncd.sources.consul_watch import (
    CheckChange,
    _Query,
    check_changes,
    confirm_filter,
    non_passing,
    query_key,
)

CONFIG = ConsulSourceConfig(service="rgw", port_name="http")
TARGET = Target("ns", "rgw", (ServicePort("http", 80),), (CONFIG,))


def row(node, check, status, index, service="rgw"):
    return {
        "Node": node,
        "CheckID": check,
        "Status": status,
        "ModifyIndex": index,
        "ServiceName": service,
    }


def test_check_changes_names_new_changed_and_left_checks():
    before = non_passing([row("n1", "c1", "critical", 5), row("n1", "c2", "warning", 6)])
    after = non_passing(
        [row("n1", "c2", "critical", 9), row("n2", "serfHealth", "critical", 9, "")]
    )
    changes = check_changes(before, after, index=9)
    assert set(changes) == {
        CheckChange(("n1", "c2"), "rgw", "critical", 9),
        CheckChange(("n2", "serfHealth"), "", "critical", 9),
        CheckChange(("n1", "c1"), "rgw", "passing", 9, left=True),
    }
    assert check_changes(after, after, index=10) == []


def test_confirm_filter_quotes_names():
    text = confirm_filter([("n1", 'say "hi"'), ("n\\2", "c")])
    assert text == (
        '(Node == "n1" and CheckID == "say \\"hi\\"") or (Node == "n\\\\2" and CheckID == "c")'
    )


def entry(node, instance, address, status, check_index):
    return {
        "Node": {"Node": node, "Address": "192.0.2.250"},
        "Service": {"ID": instance, "Address": address, "Port": 8080},
        "Checks": [
            {"Node": node, "CheckID": f"c-{instance}", "Status": status, "ModifyIndex": check_index}
        ],
    }


def query() -> _Query:
    source = ConsulSource(CONFIG, TARGET, ConsulClients(ConsulConnection()))  # no connection yet
    return _Query(query_key(CONFIG), source)


def ready(q: _Query) -> dict[str, bool]:
    assert q.entries is not None
    snapshot = q.source.snapshot(list(q.entries.values()))
    return {b.address: b.ready for b in snapshot.backends}


def test_a_feed_change_newer_than_the_read_is_applied_and_survives_an_older_read():
    q = query()
    q.replace(10, [entry("n1", "a", "192.0.2.1", "passing", 3)], started=0, reset=False)
    changed, unknown = q.apply_changes([(("n1", "c-a"), "critical", 12)])
    assert (changed, unknown) == (True, False)
    assert ready(q) == {"192.0.2.1": False}
    # A read that started before the change lands afterwards: the change stays.
    q.replace(11, [entry("n1", "a", "192.0.2.1", "passing", 3)], started=1, reset=False)
    assert ready(q) == {"192.0.2.1": False}
    # A read at least as new as the change replaces it, and the memory of it goes.
    q.replace(13, [entry("n1", "a", "192.0.2.1", "passing", 13)], started=2, reset=False)
    assert ready(q) == {"192.0.2.1": True} and q.applied == {}


def test_an_older_feed_change_is_ignored_and_an_unknown_check_asks_for_a_read():
    q = query()
    q.replace(20, [entry("n1", "a", "192.0.2.1", "passing", 20)], started=0, reset=False)
    assert q.apply_changes([(("n1", "c-a"), "critical", 15)]) == (False, False)
    assert ready(q) == {"192.0.2.1": True}
    assert q.apply_changes([(("n9", "c-new"), "critical", 21)]) == (False, True)


def test_after_an_index_reset_feed_edits_are_forgotten():
    q = query()
    q.replace(10, [entry("n1", "a", "192.0.2.1", "passing", 3)], started=0, reset=False)
    q.apply_changes([(("n1", "c-a"), "critical", 12)])
    q.replace(2, [entry("n1", "a", "192.0.2.1", "passing", 1)], started=1, reset=True)
    assert ready(q) == {"192.0.2.1": True}


def test_a_node_check_reaches_every_instance_on_the_node():
    q = query()
    first = entry("n1", "a", "192.0.2.1", "passing", 3)
    second = entry("n1", "b", "192.0.2.2", "passing", 3)
    for item in (first, second):
        item["Checks"].append(
            {"Node": "n1", "CheckID": "serfHealth", "Status": "passing", "ModifyIndex": 1}
        )
    q.replace(10, [first, second], started=0, reset=False)
    assert q.apply_changes([(("n1", "serfHealth"), "critical", 11)]) == (True, False)
    assert ready(q) == {"192.0.2.1": False, "192.0.2.2": False}
