"""Tests and benchmarks use Dagster's public API: a private module (`dagster._…`) is imported only in
tests/dagster_internals.py, where each use says why no public call covers it."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit
ALLOWED = ROOT / "tests" / "dagster_internals.py"


def private_dagster_imports(source: str, label: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source, label)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if isinstance(node, ast.ImportFrom) and node.module == "dagster":
            names += [f"dagster.{a.name}" for a in node.names]  # `from dagster import _core`
        out += [f"{label}:{node.lineno} {n}" for n in names if n.startswith("dagster._")]
    return out


def test_no_private_dagster_import_outside_the_one_module():
    found = [hit for d in ("tests", "bench") for p in sorted((ROOT / d).rglob("*.py")) if p != ALLOWED
             for hit in private_dagster_imports(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == [], "use the public API (or add the use, with its reason, to tests/dagster_internals.py)"


def test_the_check_sees_every_import_form():
    planted = "import dagster as dg\nimport dagster._core.errors\nfrom dagster._time import now\nfrom dagster import _serdes, asset\n"
    assert private_dagster_imports(planted, "planted.py") == [
        "planted.py:2 dagster._core.errors", "planted.py:3 dagster._time", "planted.py:4 dagster._serdes"]
    assert private_dagster_imports(ALLOWED.read_text(), "dagster_internals.py"), "the one module really holds them"
