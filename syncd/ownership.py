"""What makes an object syncd's: labels set on everything it writes, checked before every write.

EndpointSlices carry the well-known `endpointslice.kubernetes.io/managed-by` label (the control
plane's controllers ignore slices managed by others); Services and Endpoints carry
`app.kubernetes.io/managed-by`. Every object also carries `syncd.io/owner`: the identity of
the syncd instance that wrote it.

The identity scopes everything, like the id of an ApplySet (KEP-3659) or external-dns's
owner id: an instance updates only objects of its own identity, and prunes (deletes what a
removed target left) only among them. Unlike external-dns, whose default owner id is one
shared constant, the default identity is per config: the config's `owner_id`, else its
file name. Two configs are therefore two instances unless someone gives them the same
identity on purpose, and a target removed from a config is pruned by the instance that
wrote it.

Objects written before identities were per config carry the old shared default
(`default`); an instance adopts those of the targets in its config (and relabels them on
its next write), but never prunes them unless its identity is `default` itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from syncd.kinds import (
    ANNOTATION_PREFIX,
    KINDS,
    MANAGED_LABEL_KEYS,
    OWNER_LABEL,
    RESOURCE_LABEL,
    SERVICE_NAME_LABEL,
    SKIP_MIRROR_LABEL,
    Obj,
    labels_of,
)

MANAGED_BY = "syncd"
LEGACY_OWNER_ID = "default"  # every instance's identity before it became per config

# Annotations syncd writes on Services it owns (what it decided); others' are left alone.
ACTIVE_TIER_ANNOTATION = "syncd.io/active-tier"
ACTIVE_SOURCE_ANNOTATION = "syncd.io/active-source"


__all__ = [
    "ACTIVE_SOURCE_ANNOTATION",
    "ACTIVE_TIER_ANNOTATION",
    "ANNOTATION_PREFIX",
    "LEGACY_OWNER_ID",
    "MANAGED_BY",
    "MANAGED_LABEL_KEYS",
    "OWNER_ID_RULE",
    "OWNER_LABEL",
    "RESOURCE_LABEL",
    "SERVICE_NAME_LABEL",
    "SKIP_MIRROR_LABEL",
    "derivation_note",
    "derive_owner_id",
    "owner_description",
    "ownership_labels",
    "prunable_by",
    "updatable_by",
    "valid_owner_id",
]


# An owner id is a label value on every object syncd writes, and the suffix of its Lease's
# name (syncd-<owner id>), which must be a DNS-1123 subdomain: both hold for lowercase
# letters, digits, '-' and '.' (dot-separated labels), starting and ending alphanumeric.
_OWNER_ID = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
OWNER_ID_RULE = (
    "lowercase letters, digits, '-' and '.', at most 63, starting and ending with a letter "
    "or digit: it is a label value and names the Lease"
)


def valid_owner_id(value: str) -> bool:
    return bool(value) and len(value) <= 63 and bool(_OWNER_ID.match(value))


def _as_owner_id(name: str) -> str:
    """`name` lowercased, with what an owner id may not hold replaced by '-' (uncut)."""
    text = re.sub(r"[^a-z0-9.-]+", "-", name.lower())
    text = re.sub(r"\.[^a-z0-9]+|[^a-z0-9]+\.", ".", text)  # each dotted part alphanumeric
    return re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", text)


def derive_owner_id(config_path: Path) -> str:
    """The default identity: the config file's name, made a valid owner id.

    config/ceph-rgw.yaml -> "ceph-rgw"; "My Config.v2.yaml" -> "my-config.v2". Stable while
    the file keeps its name, different for every differently named config; renaming the
    file changes it (objects written under the old name are then someone else's: reported
    as conflicts, never touched).
    """
    return _as_owner_id(_as_owner_id(config_path.stem)[:63]) or "syncd"


def derivation_note(config_path: Path) -> str:
    """How the file's name was made an owner id, when it was not one as it is ("")."""
    stem = config_path.stem
    if stem == derive_owner_id(config_path):
        return ""
    cut = ", cut to 63 characters" if len(_as_owner_id(stem)) > 63 else ""
    return f"{stem!r} made a valid owner id (lowercase, '-' for other characters{cut})"


GENERIC_CONFIG_NAMES = frozenset({"config", "syncd", "stdin", "values", "settings", "conf"})


def is_generic_config_name(config_path: Path) -> bool:
    """Would many installs' configs carry this file name (config.yaml, syncd.yaml, stdin,
    a /dev/fd/N pipe)? Then the owner id derived from it tells nothing apart."""
    stem = derive_owner_id(config_path).lower()
    return (
        stem in GENERIC_CONFIG_NAMES
        or stem.isdigit()
        or str(config_path).startswith(("/dev/", "/proc/"))
    )


def ownership_labels(kind: str, owner_id: str) -> dict[str, str]:
    return {KINDS[kind].managed_by_label: MANAGED_BY, OWNER_LABEL: owner_id}


def is_managed_by_syncd(obj: Obj) -> bool:
    """Written by some syncd instance (any owner id)."""
    kind = KINDS.get(obj.get("kind", ""))
    return kind is not None and labels_of(obj).get(kind.managed_by_label) == MANAGED_BY


def prunable_by(obj: Obj, owner_id: str) -> bool:
    """Written by this syncd instance: the only objects it may prune."""
    return is_managed_by_syncd(obj) and labels_of(obj).get(OWNER_LABEL) == owner_id


def updatable_by(obj: Obj, owner_id: str) -> bool:
    """May this instance update it, for a target in its config? Its own objects, and those
    written under the old shared identity (adopted: relabelled on the next write)."""
    return is_managed_by_syncd(obj) and labels_of(obj).get(OWNER_LABEL) in (
        owner_id,
        LEGACY_OWNER_ID,
    )


def owner_description(obj: Obj) -> str:
    """Who seems to manage an object syncd does not own, for conflict messages."""
    kind = KINDS.get(obj.get("kind", ""))
    labels = labels_of(obj)
    manager = labels.get(kind.managed_by_label) if kind else None
    if manager == MANAGED_BY:
        owner = labels.get(OWNER_LABEL, "?")
        return (
            f"another syncd instance (owner {owner!r}; if that was this config under another "
            f"name, set owner_id: {owner} in it)"
        )
    return f"managed by {manager!r}" if manager else "not managed by syncd"
