"""The package as it would be published: a wheel and an sdist built from the checkout
(offline: `python -m build --no-isolation`, the wheel built from the sdist, so the sdist is
proven complete), holding what a user needs and nothing of the tests, and the installed
wheel running the example."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile

from harness.helpers import REPO


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
    assert f"{info}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "syncd = syncd.cli:entry" in entry_points

    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    assert {"LICENSE", "README.md", "pyproject.toml", "syncd/cli.py"} <= members

    site = tmp_path / "site"  # the wheel alone; its dependencies are this venv's
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site)}
    example = str(REPO / "config" / "ceph-rgw.yaml")
    rendered = subprocess.run(
        [sys.executable, "-m", "syncd", "render", "--config", example],
        capture_output=True, text=True, check=False, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.count("kind: EndpointSlice") == 2
    where = subprocess.run(
        [sys.executable, "-c", "import syncd; print(syncd.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert where.stdout.startswith(str(site))  # the installed copy, not the checkout
