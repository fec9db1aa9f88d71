"""syncd: keep selectorless Kubernetes Services pointed at backends outside the cluster."""

__version__ = "0.1.0"
