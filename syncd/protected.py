"""Services syncd must never redirect unless told so by name: the cluster's own.

In a cluster shared by many teams, whoever can edit syncd's config (or steal its token)
could otherwise point the cluster's own Services anywhere: the API server's
`default/kubernetes`, `kube-system/kube-dns`, the OpenShift router. That is the class of
CVE-2021-25740 (Endpoints pointing a Service at anything). So syncd never writes a Service,
its Endpoints or its EndpointSlices in the protected namespaces below, nor
`default/kubernetes`, unless an explicit opt-in names it (`allow_protected` in the config,
or `--allow-protected`): `check` refuses such a target, and the sink refuses to write one
that reaches it any other way.
"""

from __future__ import annotations

from collections.abc import Iterable

PROTECTED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "openshift")
PROTECTED_PREFIXES = ("openshift-",)
PROTECTED_SERVICES = (("default", "kubernetes"),)


def protection_reason(namespace: str, service: str) -> str | None:
    """Why namespace/service is protected, or None when it is not."""
    if (namespace, service) in PROTECTED_SERVICES:
        return f"{namespace}/{service} is the API server's own Service"
    if namespace in PROTECTED_NAMESPACES or namespace.startswith(PROTECTED_PREFIXES):
        return f"{namespace} is a protected namespace (the cluster's own Services live there)"
    return None


def is_allowed(namespace: str, service: str, allowed: Iterable[str]) -> bool:
    """Does an opt-in name it? Entries are `namespace/service` or `namespace/*`."""
    return any(entry in (f"{namespace}/{service}", f"{namespace}/*") for entry in allowed)


def refusal(namespace: str, service: str, allowed: Iterable[str]) -> str | None:
    """The one-line refusal for a protected target nobody opted in, else None."""
    reason = protection_reason(namespace, service)
    if reason is None or is_allowed(namespace, service, allowed):
        return None
    return (
        f"{reason}; syncd never writes there unless allow_protected (or --allow-protected) "
        f"names '{namespace}/{service}' (see docs/ownership.md: protected Services)"
    )


def valid_entry(entry: str) -> bool:
    namespace, slash, service = entry.partition("/")
    return bool(namespace and slash and service)


__all__ = [
    "PROTECTED_NAMESPACES",
    "PROTECTED_PREFIXES",
    "PROTECTED_SERVICES",
    "is_allowed",
    "protection_reason",
    "refusal",
    "valid_entry",
]
