"""A model of what a Consul catalog holds, and a seeded stream of random operations that
change a real Consul the way operators and agents do; what each syncd target must show
follows from the model alone.

Used by the suite's short randomized test and by `bench.consul_model` (the soak). The
operations cover everything that can change what a target shows: instances registered,
deregistered and moved (address or port), service checks passing, warning and failing,
new checks, node checks, node and service maintenance, node address changes, node
deregistration, and tags/meta that syncd ignores; some come in bursts.

Nodes: the agent's own node (instances registered through the agent, maintenance through
the agent's API) and `external` catalog nodes written through /v1/txn (as an external
service monitor such as consul-esm does), whose address can change and which can be
deregistered whole. Every address and port handed out is new, so no two instances ever
share an (address, port) and a moved instance is never mistaken for another.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from harness.consul_agent import ConsulAgent

AGENT_NODE = "syncd-test"  # the dev agent's node name (see ConsulAgent)
STATUSES = ("passing", "warning", "critical")
GUARD_CONFIRM_AFTER = 2.0  # seconds a large removal is held (the guard's default is 10)
Pair = tuple[str, int]


@dataclass
class Instance:
    node: str
    service: str
    id: str
    address: str | None  # None: the node's address (external nodes only)
    port: int
    checks: dict[str, str]  # service checks: id -> status
    maintenance: bool = False  # service maintenance (agent node only)


@dataclass
class Node:
    name: str
    address: str
    checks: dict[str, str] = field(default_factory=dict)  # node checks: id -> status
    maintenance: bool = False  # node maintenance (agent node only)

    @property
    def external(self) -> bool:
        return self.name != AGENT_NODE


@dataclass(frozen=True)
class TargetSpec:
    """One target of the config: its Service and the Consul services of its tiers."""

    service: str
    tiers: tuple[str, ...]
    drain_floor: int = 0
    guard: bool = True  # the removal guard on (large removals held GUARD_CONFIRM_AFTER)

    def config(self, namespace: str) -> dict:
        guards = (
            {"confirm_after": GUARD_CONFIRM_AFTER} if self.guard else {"max_removal_fraction": 1}
        )
        target: dict = {
            "namespace": namespace,
            "service": self.service,
            "ports": [{"name": "http", "port": 80}],
            "sources": [{"type": "consul", "service": tier} for tier in self.tiers],
            "drain_floor": self.drain_floor,
            "guards": guards,
        }
        if len(self.tiers) > 1:
            target["failover"] = {"min_ready": 1, "failback_after": 0}
        return target


@dataclass(frozen=True)
class Expectation:
    """What a target must show once syncd has caught up: exactly `endpoints`, or, when
    `held` (drain protection or no qualifying tier), what was applied before: at least
    `floor` ready endpoints, each one Consul listed for the target at some time."""

    endpoints: dict[Pair, bool]
    held: bool = False
    floor: int = 0


@dataclass(frozen=True)
class Operation:
    kind: str
    services: tuple[str, ...]  # whose answer it may change


class ConsulModel:
    def __init__(self, consul: ConsulAgent, services: list[str], seed: int, externals: int = 3):
        self.consul = consul
        self.services = services
        self.random = random.Random(seed)
        self.nodes: dict[str, Node] = {AGENT_NODE: Node(AGENT_NODE, "127.0.0.1")}
        self.instances: dict[tuple[str, str], Instance] = {}
        self.by_service: dict[str, set[tuple[str, str]]] = {}  # an index: 10,000 services
        self.listed: dict[str, set[Pair]] = {s: set() for s in services}  # ever, per service
        self._addresses = itertools.count(1)
        self._ports = itertools.count(20000)
        self._ids = itertools.count(1)
        self._external_names = [f"external-{n}" for n in range(1, externals + 1)]
        for name in self._external_names:
            self._put_node(name, self._new_address("198.19"))

    # -- addresses

    def _new_address(self, prefix: str = "198.18") -> str:
        n = next(self._addresses)
        return f"{prefix}.{n // 250 % 250}.{n % 250 + 1}"

    # -- what Consul holds, as syncd reads it

    def pair(self, instance: Instance) -> Pair:
        return (instance.address or self.nodes[instance.node].address, instance.port)

    def ready(self, instance: Instance) -> bool:
        node = self.nodes[instance.node]
        statuses = [*instance.checks.values(), *node.checks.values()]
        if instance.maintenance or node.maintenance:
            return False
        return all(status != "critical" for status in statuses)  # warning counts as ready

    def answer(self, service: str) -> dict[Pair, bool]:
        return {
            self.pair(self.instances[key]): self.ready(self.instances[key])
            for key in self.by_service.get(service, ())
        }

    def expect(self, target: TargetSpec) -> Expectation:
        answers = [self.answer(tier) for tier in target.tiers]
        if len(answers) == 1:
            (answer,) = answers
            if target.drain_floor and sum(answer.values()) < target.drain_floor:
                return Expectation(answer, held=True, floor=target.drain_floor)
            return Expectation(answer)
        for answer in answers:
            if sum(answer.values()) >= 1:  # min_ready 1, failback_after 0
                if target.drain_floor and sum(answer.values()) < target.drain_floor:
                    return Expectation(answer, held=True, floor=target.drain_floor)
                return Expectation(answer)
        return Expectation({}, held=True, floor=target.drain_floor)

    def note_listed(self, services: Iterable[str] | None = None) -> None:
        """Remember every (address, port) Consul lists now (for held targets' checks)."""
        for service in self.services if services is None else services:
            self.listed[service].update(self.answer(service))

    def _add(self, instance: Instance) -> None:
        key = (instance.node, instance.id)
        self.instances[key] = instance
        self.by_service.setdefault(instance.service, set()).add(key)

    def _remove(self, key: tuple[str, str]) -> None:
        instance = self.instances.pop(key)
        self.by_service[instance.service].discard(key)

    # -- writing to Consul

    def _txn(self, ops: list[dict]) -> None:
        self.consul.request("PUT", "/v1/txn", ops)

    def _put_node(self, name: str, address: str) -> None:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = Node(name, address)
        node.address = address
        self._txn([{"Node": {"Verb": "set", "Node": {"Node": name, "Address": address}}}])

    def _service_body(self, instance: Instance, meta: dict | None = None) -> dict:
        body: dict = {"ID": instance.id, "Service": instance.service, "Port": instance.port}
        if instance.address:
            body["Address"] = instance.address
        if meta:
            body["Meta"] = meta
        return body

    def _put_external(self, instance: Instance, meta: dict | None = None) -> None:
        ops: list[dict] = [
            {
                "Service": {
                    "Verb": "set",
                    "Node": instance.node,
                    "Service": self._service_body(instance, meta),
                }
            }
        ]
        ops += [
            {"Check": {"Verb": "set", "Check": self._check(instance, check, status)}}
            for check, status in instance.checks.items()
        ]
        self._txn(ops)

    @staticmethod
    def _check(instance: Instance, check: str, status: str) -> dict:
        return {
            "Node": instance.node,
            "CheckID": check,
            "Name": check,
            "Status": status,
            "ServiceID": instance.id,
            "Definition": {},
        }

    def _put_agent(self, instance: Instance, meta: dict | None = None) -> None:
        (status,) = instance.checks.values()
        self.consul.register(
            instance.id,
            instance.service,
            instance.address or "",
            instance.port,
            status=status,
            Meta=meta or {},
        )

    # -- the operations

    def populate(self, per_service: int) -> None:
        """`per_service` passing instances of every service on the external nodes, written
        in batches (thousands of services register in seconds)."""
        ops: list[dict] = []
        for service in self.services:
            for _ in range(per_service):
                number = next(self._ids)
                instance = Instance(
                    self.random.choice(self._external_names),
                    service,
                    f"{service}-e{number}",
                    self._new_address(),
                    next(self._ports),
                    {f"check:{service}-e{number}": "passing"},
                )
                self._add(instance)
                ops.append(
                    {
                        "Service": {
                            "Verb": "set",
                            "Node": instance.node,
                            "Service": self._service_body(instance),
                        }
                    }
                )
                check = self._check(instance, *next(iter(instance.checks.items())))
                ops.append({"Check": {"Verb": "set", "Check": check}})
        for start in range(0, len(ops), 64):
            self._txn(ops[start : start + 64])
        self.note_listed()

    def operations(self) -> dict[str, tuple[int, Callable[[], Operation | None]]]:
        """Every kind of operation, by name, with its weight in the random stream."""
        return {
            "register": (10, self.register),
            "deregister": (4, self.deregister),
            "move": (8, self.move),
            "check": (20, self.flip_check),
            "new-check": (3, self.add_check),
            "node-check": (5, self.node_check),
            "node-maintenance": (2, self.node_maintenance),
            "service-maintenance": (3, self.service_maintenance),
            "node-address": (2, self.node_address),
            "node-deregister": (1, self.node_deregister),
            "meta": (3, self.retag),
        }

    def step(self, only: Iterable[str] | None = None) -> Operation:
        """One random operation (of the kinds named in `only`, default all), applied to
        Consul and to the model."""
        table = self.operations()
        choices = [table[name] for name in (only or table)]
        while True:
            (action,) = self.random.choices(
                [a for _, a in choices], weights=[w for w, _ in choices]
            )
            operation = action()
            if operation is not None:
                self.note_listed(operation.services)
                return operation

    def _some_instance(self, agent: bool | None = None, steady: bool = False) -> Instance | None:
        """A random instance (on the agent's node or not); `steady`: one that may be
        registered again (the agent drops a maintenance check on re-registration)."""
        candidates = [
            i
            for i in self.instances.values()
            if (agent is None or (i.node == AGENT_NODE) == agent) and not (steady and i.maintenance)
        ]
        return self.random.choice(candidates) if candidates else None

    def register(self) -> Operation:
        service = self.random.choice(self.services)
        status = self.random.choices(STATUSES, weights=(6, 1, 2))[0]
        number = next(self._ids)
        if self.random.random() < 0.3:
            instance = Instance(
                AGENT_NODE,
                service,
                f"{service}-a{number}",
                self._new_address(),
                next(self._ports),
                {f"service:{service}-a{number}": status},
            )
            self._add(instance)
            self._put_agent(instance)
        else:
            node = self.random.choice(self._external_names)
            if node not in self.nodes:
                self._put_node(node, self._new_address("198.19"))
            own_address = self.random.random() < 0.7
            instance = Instance(
                node,
                service,
                f"{service}-e{number}",
                self._new_address() if own_address else None,
                next(self._ports),
                {f"check:{service}-e{number}": status},
            )
            self._add(instance)
            self._put_external(instance)
        return Operation("register", (service,))

    def deregister(self) -> Operation | None:
        instance = self._some_instance()
        if instance is None:
            return None
        self._remove((instance.node, instance.id))
        if instance.node == AGENT_NODE:
            self.consul.deregister(instance.id)
        else:
            self._txn(
                [
                    {
                        "Service": {
                            "Verb": "delete",
                            "Node": instance.node,
                            "Service": {"ID": instance.id, "Service": instance.service},
                        }
                    }
                ]
            )
        return Operation("deregister", (instance.service,))

    def move(self) -> Operation | None:
        instance = self._some_instance(steady=True)
        if instance is None:
            return None
        if instance.address is not None and self.random.random() < 0.5:
            instance.address = self._new_address()
            kind = "move-address"
        else:
            instance.port = next(self._ports)
            kind = "move-port"
        self._put_agent(instance) if instance.node == AGENT_NODE else self._put_external(instance)
        return Operation(kind, (instance.service,))

    def flip_check(self) -> Operation | None:
        instance = self._some_instance()
        if instance is None:
            return None
        check = self.random.choice(sorted(instance.checks))
        status = self.random.choice([s for s in STATUSES if s != instance.checks[check]])
        instance.checks[check] = status
        if instance.node == AGENT_NODE:
            self.consul.set_status(instance.id, status)
        else:
            self._txn([{"Check": {"Verb": "set", "Check": self._check(instance, check, status)}}])
        return Operation(f"check-{status}", (instance.service,))

    def add_check(self) -> Operation | None:
        instance = self._some_instance(agent=False)
        if instance is None or len(instance.checks) > 2:
            return None
        check = f"extra:{instance.id}:{len(instance.checks)}"
        status = self.random.choice(STATUSES)
        instance.checks[check] = status
        self._txn([{"Check": {"Verb": "set", "Check": self._check(instance, check, status)}}])
        return Operation("new-check", (instance.service,))

    def _services_on(self, node: str) -> tuple[str, ...]:
        return tuple(sorted({i.service for i in self.instances.values() if i.node == node}))

    def node_check(self) -> Operation | None:
        node = self.nodes.get(self.random.choice(self._external_names))
        if node is None or not self._services_on(node.name):
            return None
        if node.checks and self.random.random() < 0.3:
            del node.checks["node-health"]
            self._txn(
                [
                    {
                        "Check": {
                            "Verb": "delete",
                            "Check": {"Node": node.name, "CheckID": "node-health"},
                        }
                    }
                ]
            )
            return Operation("node-check-removed", self._services_on(node.name))
        status = self.random.choice(STATUSES)
        node.checks["node-health"] = status
        check = {
            "Node": node.name,
            "CheckID": "node-health",
            "Name": "node health",
            "Status": status,
            "Definition": {},
        }
        self._txn([{"Check": {"Verb": "set", "Check": check}}])
        return Operation(f"node-check-{status}", self._services_on(node.name))

    def node_maintenance(self) -> Operation | None:
        node = self.nodes[AGENT_NODE]
        node.maintenance = not node.maintenance
        flag = "true" if node.maintenance else "false"
        self.consul.request("PUT", f"/v1/agent/maintenance?enable={flag}&reason=model")
        return Operation("node-maintenance", self._services_on(AGENT_NODE))

    def service_maintenance(self) -> Operation | None:
        instance = self._some_instance(agent=True)
        if instance is None:
            return None
        instance.maintenance = not instance.maintenance
        self.consul.maintenance(instance.id, instance.maintenance)
        return Operation("service-maintenance", (instance.service,))

    def node_address(self) -> Operation | None:
        name = self.random.choice(self._external_names)
        if name not in self.nodes:
            return None
        self._put_node(name, self._new_address("198.19"))
        return Operation("node-address", self._services_on(name))

    def node_deregister(self) -> Operation | None:
        name = self.random.choice(self._external_names)
        if name not in self.nodes:
            return None
        services = self._services_on(name)
        for key in [k for k in self.instances if k[0] == name]:
            self._remove(key)
        del self.nodes[name]
        self._txn([{"Node": {"Verb": "delete", "Node": {"Node": name}}}])
        return Operation("node-deregister", services)

    def retag(self) -> Operation | None:
        instance = self._some_instance(steady=True)
        if instance is None:
            return None
        meta = {"build": str(self.random.randint(1, 10**6))}
        if instance.node == AGENT_NODE:
            self._put_agent(instance, meta)
        else:
            self._put_external(instance, meta)
        return Operation("ignored-meta", ())

    def run(
        self,
        operations: int,
        pause: float,
        on_step: Callable[[Operation, float], None] | None = None,
        burst_chance: float = 0.02,
        only: Iterable[str] | None = None,
    ) -> list[Operation]:
        """`operations` random operations, `pause` seconds apart on average; now and then
        a burst of 10-50 with no pause at all."""
        done: list[Operation] = []
        kinds = list(only) if only else None
        while len(done) < operations:
            count = self.random.randint(10, 50) if self.random.random() < burst_chance else 1
            for _ in range(min(count, operations - len(done))):
                operation = self.step(kinds)
                done.append(operation)
                if on_step is not None:
                    on_step(operation, time.monotonic())
            time.sleep(self.random.uniform(0, 2 * pause))
        return done


def mismatch(expectation: Expectation, live: dict[Pair, bool], listed: Iterable[Pair]) -> str:
    """ "" when what a target shows meets the expectation, else what is wrong."""
    if live == expectation.endpoints:
        return ""  # held or not: the answer itself (a held one when too little was applied)
    if not expectation.held:
        missing = {p: r for p, r in expectation.endpoints.items() if live.get(p) != r}
        extra = {p: r for p, r in live.items() if p not in expectation.endpoints}
        return f"want {missing or '-'} missing/different, {extra or '-'} extra"
    known = set(listed)
    never = [p for p in live if p not in known]
    if never:
        return f"held endpoints Consul never listed: {never}"
    if expectation.floor and sum(live.values()) < expectation.floor:
        return f"held with {sum(live.values())} ready, fewer than the floor {expectation.floor}"
    return ""


__all__ = [
    "AGENT_NODE",
    "ConsulModel",
    "Expectation",
    "Operation",
    "TargetSpec",
    "mismatch",
]
