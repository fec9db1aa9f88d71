"""The layout a newcomer relies on: every module has its place in the layers contract,
the benchmarks and the harness never reach into the tests, and no piece grows past what
one person reads at once (classes under 300 lines, functions at most 60)."""

from __future__ import annotations

import ast
import tomllib

from harness.helpers import REPO

MAX_CLASS_LINES = 299
MAX_FUNCTION_LINES = 60


def _layers() -> set[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    layered = [c for c in contracts if c["type"] == "layers" and c.get("containers") == ["syncd"]]
    assert len(layered) == 1, "one layers contract over syncd"
    return {name.strip() for layer in layered[0]["layers"] for name in layer.split("|")}


def test_every_module_of_syncd_is_placed_in_the_layers_contract():
    modules = {
        path.stem if path.is_file() else path.name
        for path in (REPO / "syncd").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    }
    assert modules - _layers() == set(), "add these to the layers contract in pyproject.toml"


def test_the_benchmarks_and_the_harness_do_not_import_the_tests():
    offenders = []
    for path in [*(REPO / "bench").glob("*.py"), *(REPO / "harness").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "tests"]
    assert offenders == []


def test_no_class_or_function_in_syncd_is_too_long_to_read_at_once():
    too_long = []
    for path in sorted((REPO / "syncd").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            lines = (
                (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
            )
            limit = (
                MAX_CLASS_LINES
                if isinstance(node, ast.ClassDef)
                else MAX_FUNCTION_LINES
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                else None
            )
            if limit is not None and lines > limit:
                name = getattr(node, "name", "?")
                too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {name}: {lines} lines")
    assert too_long == []
