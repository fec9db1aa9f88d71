"""What makes an object syncd's: labels set on everything it writes, checked before every write.

EndpointSlices carry the well-known `endpointslice.kubernetes.io/managed-by` label (the control
plane's controllers ignore slices managed by others); Services and Endpoints carry
`app.kubernetes.io/managed-by`. Every object also carries `syncd.io/owner`, so several syncd
instances (e.g. one per team) never prune each other's objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MANAGED_BY = "syncd"
DEFAULT_OWNER_ID = "default"

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
APP_MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OWNER_LABEL = "syncd.io/owner"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"

# Labels syncd sets or removes itself; any other label on an owned object is left alone.
MANAGED_LABEL_KEYS = frozenset(
    {
        SERVICE_NAME_LABEL,
        SLICE_MANAGED_BY_LABEL,
        APP_MANAGED_BY_LABEL,
        OWNER_LABEL,
        SKIP_MIRROR_LABEL,
    }
)

# Annotations syncd writes on Services it owns (what it decided); others' are left alone.
ANNOTATION_PREFIX = "syncd.io/"
ACTIVE_TIER_ANNOTATION = "syncd.io/active-tier"
ACTIVE_SOURCE_ANNOTATION = "syncd.io/active-source"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def valid_owner_id(value: str) -> bool:
    return bool(value) and len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def managed_by_label(kind: str) -> str:
    return SLICE_MANAGED_BY_LABEL if kind == "EndpointSlice" else APP_MANAGED_BY_LABEL


def ownership_labels(kind: str, owner_id: str) -> dict[str, str]:
    return {managed_by_label(kind): MANAGED_BY, OWNER_LABEL: owner_id}


def owned_selector(kind: str, owner_id: str) -> str:
    """Label selector matching exactly the objects of `kind` this syncd instance owns."""
    return f"{managed_by_label(kind)}={MANAGED_BY},{OWNER_LABEL}={owner_id}"


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def is_owned(obj: Mapping[str, Any], owner_id: str) -> bool:
    labels = labels_of(obj)
    return labels.get(managed_by_label(obj.get("kind", ""))) == MANAGED_BY and (
        labels.get(OWNER_LABEL) == owner_id
    )


def owner_description(obj: Mapping[str, Any]) -> str:
    """Who seems to manage an object syncd does not own, for conflict messages."""
    labels = labels_of(obj)
    manager = labels.get(managed_by_label(obj.get("kind", "")))
    if manager == MANAGED_BY:
        return f"another syncd instance (owner {labels.get(OWNER_LABEL, '?')!r})"
    return f"managed by {manager!r}" if manager else "not managed by syncd"
