"""What makes an object syncd's: labels set on everything it writes, checked before every write.

EndpointSlices carry the well-known `endpointslice.kubernetes.io/managed-by` label (the control
plane's controllers ignore slices managed by others); Services and Endpoints carry
`app.kubernetes.io/managed-by`. Every object also carries `syncd.io/owner`, so several syncd
instances (e.g. one per team) never prune each other's objects.
"""

from __future__ import annotations

import re

from syncd.kinds import (
    ANNOTATION_PREFIX,
    KINDS,
    MANAGED_LABEL_KEYS,
    OWNER_LABEL,
    SERVICE_NAME_LABEL,
    SKIP_MIRROR_LABEL,
    Obj,
    labels_of,
)

MANAGED_BY = "syncd"
DEFAULT_OWNER_ID = "default"

# Annotations syncd writes on Services it owns (what it decided); others' are left alone.
ACTIVE_TIER_ANNOTATION = "syncd.io/active-tier"
ACTIVE_SOURCE_ANNOTATION = "syncd.io/active-source"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

__all__ = [
    "ACTIVE_SOURCE_ANNOTATION",
    "ACTIVE_TIER_ANNOTATION",
    "ANNOTATION_PREFIX",
    "DEFAULT_OWNER_ID",
    "MANAGED_BY",
    "MANAGED_LABEL_KEYS",
    "OWNER_LABEL",
    "SERVICE_NAME_LABEL",
    "SKIP_MIRROR_LABEL",
    "is_owned",
    "owner_description",
    "ownership_labels",
    "valid_owner_id",
]


def valid_owner_id(value: str) -> bool:
    return bool(value) and len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def ownership_labels(kind: str, owner_id: str) -> dict[str, str]:
    return {KINDS[kind].managed_by_label: MANAGED_BY, OWNER_LABEL: owner_id}


def is_managed_by_syncd(obj: Obj) -> bool:
    """Written by some syncd instance (any owner id)."""
    kind = KINDS.get(obj.get("kind", ""))
    return kind is not None and labels_of(obj).get(kind.managed_by_label) == MANAGED_BY


def is_owned(obj: Obj, owner_id: str) -> bool:
    """Written by this syncd instance: the only objects it may update or delete."""
    return is_managed_by_syncd(obj) and labels_of(obj).get(OWNER_LABEL) == owner_id


def owner_description(obj: Obj) -> str:
    """Who seems to manage an object syncd does not own, for conflict messages."""
    kind = KINDS.get(obj.get("kind", ""))
    labels = labels_of(obj)
    manager = labels.get(kind.managed_by_label) if kind else None
    if manager == MANAGED_BY:
        return f"another syncd instance (owner {labels.get(OWNER_LABEL, '?')!r})"
    return f"managed by {manager!r}" if manager else "not managed by syncd"
