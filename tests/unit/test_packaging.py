"""What building and running syncd from a checkout relies on, checked on the files."""

from __future__ import annotations

import re

import yaml

from harness.helpers import REPO


def test_the_build_context_leaves_out_what_the_image_never_needs():
    """`make run` leaves a .venv of hundreds of MB; podman reads .containerignore, Docker
    .dockerignore: one file, both names."""
    ignored = (REPO / ".containerignore").read_text().split()
    assert {".venv", ".git", "**/__pycache__"} <= set(ignored)
    assert (REPO / ".dockerignore").resolve() == (REPO / ".containerignore").resolve()


def test_the_dockerfile_names_the_syntax_its_secret_mount_needs():
    lines = (REPO / "Dockerfile").read_text().splitlines()
    assert re.match(r"^# syntax=docker/dockerfile:1", lines[0])
    assert any("RUN --mount=type=secret" in line for line in lines)
    assert not any(re.search(r"<digest> \w", line) for line in lines)  # two lines run together


def test_make_run_installs_syncd_without_the_test_tools():
    make = (REPO / "Makefile").read_text()
    (run_prerequisites,) = re.findall(r"(?m)^run: (.*)$", make)
    assert run_prerequisites.strip() == "$(RUN_STAMP)"
    recipe = make.split("$(RUN_STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    assert "pip install -qq -e ." in recipe and "[test]" not in recipe


def test_the_chart_points_nowhere_it_does_not_own():
    chart = yaml.safe_load((REPO / "charts" / "syncd" / "Chart.yaml").read_text())
    assert "example.com" not in str(chart.get("home", ""))


def test_every_place_that_states_the_sizing_says_what_the_figures_file_says():
    """The README, the chart's values and its README once gave three sizes for one thing:
    they are generated from docs/figures.yaml now (`python -m bench.figures`)."""
    from bench.figures import main

    assert main(["--check"]) == 0
