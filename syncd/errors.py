"""syncd's own error types, so callers catch what they mean and nothing else."""

from __future__ import annotations

from syncd.redact import without_userinfo


class SyncdError(Exception):
    """Base of every error syncd raises on purpose. Its message never carries a URL's
    user and password (see syncd.redact)."""

    def __init__(self, message: str = "", *args: object):
        super().__init__(without_userinfo(str(message)), *args)


class ConfigError(SyncdError):
    """The configuration is unusable. Carries every problem found, one line each."""

    def __init__(self, problems: list[str] | str):
        listed = [problems] if isinstance(problems, str) else list(problems)
        self.problems = [without_userinfo(problem) for problem in listed]
        super().__init__("\n".join(self.problems))


class SourceError(SyncdError):
    """A registry could not answer. Distinct from an empty answer: never empty a Service on it."""


class SourceUnreachable(SourceError):
    """The registry did not answer at all (refused, reset, timed out), as opposed to
    answering with an error (429, 403, 500)."""


class KubeError(SyncdError):
    """The Kubernetes API refused or failed a call (after retries, if it was transient)."""

    def __init__(self, message: str, status: int | None = None, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubeNotFound(KubeError):
    """404: the object (or its namespace) does not exist."""


class KubeConflict(KubeError):
    """409: the object already exists, or changed since it was read."""


class KubeConfigError(SyncdError):
    """No usable kubeconfig or in-cluster configuration."""


class OwnershipConflict(SyncdError):
    """An object syncd would write exists but is not syncd's; it is reported and left alone."""


class TargetError(SyncdError):
    """A target cannot be reconciled for a reason the user must fix (e.g. missing Service)."""
