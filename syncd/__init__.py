"""syncd: keep selectorless Kubernetes Services pointed at backends outside the cluster."""

# The one place the version is written: the package's metadata reads it from here
# (pyproject.toml), and a test keeps the chart's appVersion and deploy/'s image tag with it.
__version__ = "0.2.0"
