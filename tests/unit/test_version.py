"""The version is written once (syncd/__init__.py); everything that names it follows."""

from __future__ import annotations

import tomllib

import yaml

from harness.helpers import REPO
from syncd import __version__


def test_the_package_metadata_reads_the_version_from_the_code():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "syncd.__version__"}


def test_the_chart_and_deploy_install_the_image_of_this_version():
    chart = yaml.safe_load((REPO / "charts" / "syncd" / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    kustomization = yaml.safe_load((REPO / "deploy" / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert image["newTag"] == __version__


def test_the_changelog_names_the_version_the_code_carries():
    """What the CHANGELOG lists under the top heading ships as that version, not as the
    previous one under 'Unreleased'."""
    changelog = (REPO / "CHANGELOG.md").read_text()
    top = next(line for line in changelog.splitlines() if line.startswith("## "))
    assert top.startswith(f"## {__version__}"), top
