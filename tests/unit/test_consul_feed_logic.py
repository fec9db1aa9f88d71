"""The change feeds' pure logic: what changed between two answers, what may be patched
without a read (only what makes instances less ready), and how partial reads replace what
syncd holds without ever going back in time."""

from __future__ import annotations

from syncd.model import ConsulConnection, ServicePort, Target
from syncd.sources.consul import ConsulSource
from syncd.sources.consul_api import ConsulClients
from syncd.sources.consul_config import ConsulAddress, ConsulSourceConfig
from syncd.sources.consul_state import (
    CheckChange,
    QueryState,
    changed_nodes,
    check_changes,
    node_records,
    non_passing,
    selector_filter,
)

CONFIG = ConsulSourceConfig(service="rgw", port_name="http")
TARGET = Target("ns", "rgw", (ServicePort("http", 80),), (CONFIG,))
SOURCE = ConsulSource(CONFIG, TARGET, ConsulClients(ConsulConnection()))  # no connection yet


def row(node, check, status, index, service="rgw", service_id=""):
    return {
        "Node": node,
        "CheckID": check,
        "Status": status,
        "ModifyIndex": index,
        "ServiceName": service,
        "ServiceID": service_id,
    }


def entry(node, instance, address, status, check_index, port=8080):
    return {
        "Node": {"Node": node, "Address": "192.0.2.250"},
        "Service": {"ID": instance, "Address": address, "Port": port},
        "Checks": [
            {
                "Node": node,
                "CheckID": f"c-{instance}",
                "ServiceID": instance,
                "Status": status,
                "ModifyIndex": check_index,
            }
        ],
    }


def change(node, check, status, index, service_id="", left=False):
    return CheckChange((node, check), "rgw" if service_id else "", status, index, left, service_id)


def ready(q: QueryState) -> dict[tuple[str, int], bool]:
    assert q.entries is not None
    snapshot = SOURCE.snapshot(list(q.entries.values()))
    return {(b.address, b.ports[0].port): b.ready for b in snapshot.backends}


def state(*entries) -> QueryState:
    q = QueryState()
    q.replace(10, list(entries), started=0, reset=False)
    return q


def test_check_changes_names_new_changed_and_left_checks_with_their_instance():
    before = non_passing(
        [row("n1", "c1", "critical", 5, service_id="a"), row("n1", "c2", "warning", 6)]
    )
    after = non_passing(
        [row("n1", "c2", "critical", 9), row("n2", "serfHealth", "critical", 9, "")]
    )
    changes = check_changes(before, after, index=9)
    assert set(changes) == {
        CheckChange(("n1", "c2"), "rgw", "critical", 9),
        CheckChange(("n2", "serfHealth"), "", "critical", 9),
        CheckChange(("n1", "c1"), "rgw", "passing", 9, left=True, service_id="a"),
    }
    assert check_changes(after, after, index=10) == []


def test_selector_filter_selects_instances_or_whole_nodes_and_quotes_names():
    text = selector_filter([("n1", 'say "hi"'), ("n\\2", None)])
    assert text == (
        '(Node.Node == "n1" and Service.ID == "say \\"hi\\"") or (Node.Node == "n\\\\2")'
    )


def test_a_critical_check_newer_than_the_read_is_patched_and_survives_an_older_read():
    q = state(entry("n1", "a", "192.0.2.1", "passing", 3))
    result = q.patch([change("n1", "c-a", "critical", 12, "a")])
    assert result.changed and not result.reads
    assert ready(q) == {("192.0.2.1", 8080): False}
    # A read that started before the change lands afterwards: the change stays.
    q.replace(11, [entry("n1", "a", "192.0.2.1", "passing", 3)], started=1, reset=False)
    assert ready(q) == {("192.0.2.1", 8080): False}
    # A read at least as new as the change replaces it, and the memory of it goes.
    q.replace(13, [entry("n1", "a", "192.0.2.1", "passing", 13)], started=2, reset=False)
    assert ready(q) == {("192.0.2.1", 8080): True} and q.applied == {}


def test_an_older_change_is_ignored_and_a_check_of_an_instance_not_held_asks_for_a_read():
    q = state(entry("n1", "a", "192.0.2.1", "passing", 20))
    assert not q.patch([change("n1", "c-a", "critical", 15, "a")]).changed
    assert ready(q) == {("192.0.2.1", 8080): True}
    result = q.patch([change("n9", "c-new", "critical", 21, "new")])
    assert result.reads == {("n9", "new")} and not result.changed


def test_nothing_that_could_make_an_instance_ready_is_patched_it_is_read():
    q = state(entry("n1", "a", "192.0.2.1", "critical", 3))
    for news in (
        change("n1", "c-a", "passing", 12, "a", left=True),  # left the critical list
        change("n1", "c-a", "warning", 12, "a"),  # critical -> warning
    ):
        result = q.patch([news])
        assert result.reads == {("n1", "a")} and not result.changed
        assert ready(q) == {("192.0.2.1", 8080): False}


def test_passing_to_warning_is_patched_as_it_cannot_make_anything_ready():
    q = state(entry("n1", "a", "192.0.2.1", "passing", 3))
    assert q.patch([change("n1", "c-a", "warning", 12, "a")]).changed
    assert q.entries is not None
    assert q.entries[("n1", "a")].checks[0].status == "warning"


def test_after_an_index_reset_feed_edits_are_forgotten():
    q = state(entry("n1", "a", "192.0.2.1", "passing", 3))
    q.patch([change("n1", "c-a", "critical", 12, "a")])
    q.replace(2, [entry("n1", "a", "192.0.2.1", "passing", 1)], started=1, reset=True)
    assert ready(q) == {("192.0.2.1", 8080): True}


def test_a_new_node_check_such_as_maintenance_reaches_every_instance_on_the_node():
    q = state(
        entry("n1", "a", "192.0.2.1", "passing", 3),
        entry("n1", "b", "192.0.2.2", "passing", 3),
        entry("n2", "c", "192.0.2.3", "passing", 3),
    )
    result = q.patch([change("n1", "_node_maintenance", "critical", 11)])
    assert result.changed and not result.reads
    assert ready(q) == {
        ("192.0.2.1", 8080): False,
        ("192.0.2.2", 8080): False,
        ("192.0.2.3", 8080): True,
    }
    # A full read that started before maintenance began does not undo it...
    q.replace(
        10,
        [
            entry("n1", "a", "192.0.2.1", "passing", 3),
            entry("n1", "b", "192.0.2.2", "passing", 3),
            entry("n2", "c", "192.0.2.3", "passing", 3),
        ],
        started=1,
        reset=False,
    )
    assert ready(q)[("192.0.2.1", 8080)] is False
    # ...and maintenance ending (the check leaves the list) is a read of the node.
    assert q.patch([change("n1", "_node_maintenance", "passing", 14, left=True)]).reads == {
        ("n1", None)
    }


def test_a_partial_read_replaces_moved_instances_and_drops_deregistered_ones():
    q = state(
        entry("n1", "a", "192.0.2.1", "passing", 3),
        entry("n1", "b", "192.0.2.2", "passing", 3),
        entry("n2", "c", "192.0.2.3", "passing", 3),
    )
    # node n1 read: a moved to another port, b is gone.
    q.refresh(frozenset({("n1", None)}), 20, [entry("n1", "a", "192.0.2.1", "passing", 3, 9090)])
    assert ready(q) == {("192.0.2.1", 9090): True, ("192.0.2.3", 8080): True}
    assert ("n1", "b") not in (q.entries or {})


def test_a_check_passing_after_an_unseen_move_never_readies_the_old_address():
    """The issue's reproduction: A critical, B passing; A moves to another port (the feeds
    do not see it); A passes; B fails; A fails. syncd must never hold A's old port ready."""
    q = state(
        entry("n1", "a", "192.0.2.1", "critical", 3),
        entry("n1", "b", "192.0.2.2", "passing", 3),
    )
    result = q.patch([change("n1", "c-a", "passing", 12, "a", left=True)])  # A passes
    assert result.reads == {("n1", "a")} and not result.changed
    assert ready(q)[("192.0.2.1", 8080)] is False  # not patched ready
    # the read of A answers with its new port
    q.refresh(result.reads, 12, [entry("n1", "a", "192.0.2.1", "passing", 12, 9090)])
    q.patch([change("n1", "c-b", "critical", 13, "b")])  # B fails
    q.patch([change("n1", "c-a", "critical", 14, "a")])  # A fails
    assert ready(q) == {("192.0.2.1", 9090): False, ("192.0.2.2", 8080): False}


def test_a_partial_read_older_than_a_feed_edit_keeps_the_edit():
    q = state(entry("n1", "a", "192.0.2.1", "passing", 3))
    q.patch([change("n1", "c-a", "critical", 15, "a")])
    q.refresh(frozenset({("n1", "a")}), 14, [entry("n1", "a", "192.0.2.1", "passing", 3)])
    assert ready(q) == {("192.0.2.1", 8080): False}


def test_changed_nodes_are_those_whose_record_changed_or_that_left():
    before = node_records(
        [
            {"Node": "n1", "Address": "192.0.2.1", "Meta": {"zone": "a"}},
            {"Node": "n2", "Address": "192.0.2.2"},
            {"Node": "n3", "Address": "192.0.2.3"},
        ]
    )
    after = node_records(
        [
            {"Node": "n1", "Address": "192.0.2.1", "Meta": {"zone": "b"}},
            {"Node": "n2", "Address": "192.0.2.9"},
            {"Node": "n4", "Address": "192.0.2.4"},
        ]
    )
    assert changed_nodes(before, after) == {"n1", "n2", "n3"}
    assert changed_nodes(after, after) == set()


def test_targets_reading_different_addresses_of_one_service_ask_their_own_query():
    """A query keeps of each entry only the address and zone key its source reads: a
    target reading a service's wan address must not be handed what was kept for a target
    reading its service address (it would find no wan address and drop every instance)."""
    from dataclasses import replace

    from syncd.sources.consul_query import Queries, Subscriber

    wan_config = replace(CONFIG, address=ConsulAddress.WAN)
    wan_source = ConsulSource(wan_config, TARGET, SOURCE.clients)
    queries = Queries()
    service_query, _ = queries.add(SOURCE, Subscriber(SOURCE, None))  # type: ignore[arg-type]
    wan_query, _ = queries.add(wan_source, Subscriber(wan_source, None))  # type: ignore[arg-type]
    assert wan_query is not service_query
    body = [entry("n1", "a", "192.0.2.1", "passing", 5)]
    body[0]["Node"]["TaggedAddresses"] = {"wan": "198.51.100.7"}
    for query in (service_query, wan_query):
        query.replace(10, body, started=0, reset=False)
    assert ready(service_query) == {("192.0.2.1", 8080): True}
    assert {b.address for b in wan_source.snapshot(list(wan_query.entries.values())).backends} == {
        "198.51.100.7"
    }
