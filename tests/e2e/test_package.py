"""The package as it would be published: a wheel and an sdist built from the checkout
(offline: `python -m build --no-isolation`, the wheel built from the sdist, so the sdist is
proven complete), holding what a user needs and nothing of the tests; the wheel installed
into a new, empty virtual environment with its dependencies (from the wheelhouse
`make wheelhouse` fills from requirements.lock: no network in a test), where `syncd
--version` and `syncd render` of the example work."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from harness.helpers import REPO
from syncd import __version__

WHEELHOUSE = Path(
    os.environ.get("SYNCD_WHEELHOUSE", Path.home() / ".cache" / "syncd" / "wheelhouse")
)


def test_the_wheel_and_the_sdist_build_offline_and_the_wheel_runs_the_example(tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("syncd-*.whl")
    (sdist,) = dist.glob("syncd-*.tar.gz")

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"syncd/cli.py", "syncd/sources/consul_watch.py", "syncd/config/loader.py"} <= names
    assert not any(n.startswith(("tests/", "harness/", "bench/")) for n in names)
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Python: >=3.11" in metadata
    assert f"Version: {__version__}" in metadata
    assert f"{info}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "syncd = syncd.cli:entry" in entry_points

    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    assert {"LICENSE", "README.md", "pyproject.toml", "syncd/cli.py"} <= members

    venv = tmp_path / "venv"  # no system site packages: only what the wheel asks for
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.fail(f"no wheels in {WHEELHOUSE}: run `make wheelhouse` (make test does)")
    installed = subprocess.run(
        [venv / "bin" / "pip", "install", "--quiet", "--no-index", "--find-links", WHEELHOUSE,
         wheel],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    syncd = venv / "bin" / "syncd"
    version = subprocess.run(
        [syncd, "--version"], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert version.stdout.strip() == f"syncd {__version__}", version.stdout + version.stderr
    example = str(REPO / "config" / "ceph-rgw.yaml")
    rendered = subprocess.run(
        [syncd, "render", "--config", example],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.count("kind: EndpointSlice") == 2
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import syncd; print(syncd.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert where.stdout.startswith(str(venv))  # the installed copy, not the checkout
