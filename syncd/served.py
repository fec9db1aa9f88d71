"""What this cluster's API server keeps of the fields syncd writes.

Users run Kubernetes older than the newest: a field the server does not keep (an alpha
field whose feature gate is off, such as Service `spec.trafficDistribution` on 1.30, or a
value it does not know yet, such as `PreferSameZone` before 1.34) comes back missing from
every write, and comparing against it would write again on every pass, forever.

So syncd learns what the server keeps from the answer to its own write of the Service and,
when a live Service lacks a value its target asks for, by asking the server (a server-side
dry-run create of a probe Service carrying the value: nothing is stored). A value that does
not come back is left out for every target asking for it, reported once (log, metric, an
Event on each such Service), and never re-sent: one write at most, then zero on every pass.
The other fields syncd writes are kept by every served version (EndpointSlice hints since
1.21, addresses, conditions, zone, ports; Service ports and annotations).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from syncd.errors import KubeError
from syncd.kinds import TRAFFIC_DISTRIBUTION
from syncd.kube import Kube
from syncd.model import Target
from syncd.observability import UNSUPPORTED_FIELDS

log = logging.getLogger(__name__)

FieldValue = tuple[str, str]  # (field path, value)


class ServedFields:
    """The (field, value) pairs this cluster does not keep, learned by probes and by the
    answers to syncd's own writes; each is reported once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unsupported: dict[FieldValue, str] = {}

    @property
    def unsupported(self) -> frozenset[FieldValue]:
        with self._lock:
            return frozenset(self._unsupported)

    def reason(self, field_value: FieldValue) -> str:
        with self._lock:
            return self._unsupported.get(field_value, "")

    def mark(self, field_value: FieldValue, reason: str) -> bool:
        """Remember a value the server does not keep; True the first time (report it)."""
        with self._lock:
            if field_value in self._unsupported:
                return False
            self._unsupported[field_value] = reason
        field, value = field_value
        UNSUPPORTED_FIELDS.labels(field, value).set(1)
        log.warning(
            "this Kubernetes API server does not keep Service %s=%s (%s); syncd leaves it "
            "out (and writes no zone hints) for every target asking for it",
            field,
            value,
            reason,
        )
        return True

    def probe(
        self,
        kube: Kube,
        targets: Iterable[Target],
        live_service: Callable[[Target], Mapping[str, Any] | None],
    ) -> list[FieldValue]:
        """Ask the server about a traffic_distribution only where it matters: a target's
        Service does not exist yet, or lacks the value it asks for (the server may drop
        it, or someone removed it); a live Service that has it shows the server keeps it.
        One dry-run create per value at most; returns the values newly found unsupported."""
        found = []
        asked: set[str] = set()
        for target in targets:
            value = target.traffic_distribution
            if not value or not target.manage_service or value in asked:
                continue
            key = (TRAFFIC_DISTRIBUTION, value)
            if key in self.unsupported:
                continue
            service = live_service(target)
            if service is not None and (service.get("spec") or {}).get("trafficDistribution") == (
                value
            ):
                continue  # it is kept: there it is
            asked.add(value)
            why = probe_traffic_distribution(kube, target.namespace, value)
            if why is not None and self.mark(key, why):
                found.append(key)
        return found

    def check_answer(
        self, desired: Mapping[str, Any], written: Mapping[str, Any] | None
    ) -> FieldValue | None:
        """A Service write's answer: did it keep the trafficDistribution syncd sent? Returns
        the pair when it newly turns out not to."""
        wanted = ((desired or {}).get("spec") or {}).get("trafficDistribution")
        if not wanted or written is None:
            return None
        kept = (written.get("spec") or {}).get("trafficDistribution")
        key = (TRAFFIC_DISTRIBUTION, str(wanted))
        if kept == wanted:
            return None
        return key if self.mark(key, "the API server answered a write without it") else None


def probe_traffic_distribution(kube: Kube, namespace: str, value: str) -> str | None:
    """None if the server keeps Service spec.trafficDistribution=value, else why not. A
    probe that cannot be made (no such namespace, no permission) tells nothing: None,
    and the answers to syncd's own writes decide."""
    probe = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"generateName": "syncd-probe-", "namespace": namespace},
        "spec": {"ports": [{"port": 80}], "trafficDistribution": value},
    }
    try:
        answer = kube.create(probe, dry_run=True)
    except KubeError as exc:
        if exc.status == 422:
            return f"it rejects the value: {exc}"
        log.info("could not ask the API server about trafficDistribution %s: %s", value, exc)
        return None
    if ((answer or {}).get("spec") or {}).get("trafficDistribution") == value:
        return None
    return "the field is alpha or unknown there: it answered without it"


__all__ = ["FieldValue", "ServedFields", "probe_traffic_distribution"]
