"""requirements.lock (what the image installs, every file hash-checked) agrees with
pyproject.toml: every runtime dependency pinned, at a version its range allows, with
hashes; and setuptools for building syncd itself offline."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from harness.helpers import REPO

_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ \\]+)")


def _pins() -> dict[str, tuple[Version, bool]]:
    """name -> (version, has hashes), from the lock file's entries."""
    text = (REPO / "requirements.lock").read_text()
    pins = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = _PIN.match(entry)
        if match:
            name = match.group(1).lower().replace("_", "-")
            pins[name] = (Version(match.group(2)), "--hash=sha256:" in entry)
    return pins


def test_every_dependency_is_pinned_in_its_range_with_hashes():
    pins = _pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements.lock: regenerate it (Dockerfile)"
        version, hashed = pins[name]
        assert version in requirement.specifier, f"{name} {version} is outside {requirement}"
        assert hashed, name
    assert all(hashed for _version, hashed in pins.values())
    assert pins["setuptools"][0] >= Version("77")  # builds syncd with --no-build-isolation
