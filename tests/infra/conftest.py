"""Shared helpers for the infrastructure tests (Terraform, Helm values, Dagster instance, Prometheus).

External tools (checkov, promtool, terraform, a local PostgreSQL) are looked up here. A test that needs
a missing tool is skipped with a message saying how to install it, unless PERSONALIZATION_REQUIRE_INFRA_TOOLS
is set (make test / CI set it): then a missing tool is a failure, so CI cannot go green without running
the checks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import hcl2
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
TERRAFORM = INFRA / "terraform"
REQUIRE_ENV = "PERSONALIZATION_REQUIRE_INFRA_TOOLS"


def tools_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


def require_tool(name: str, candidates: list[Path | str], install_hint: str) -> str:
    """Return the path of the first existing executable among candidates (paths or names on PATH).

    Missing: pytest.fail when PERSONALIZATION_REQUIRE_INFRA_TOOLS is set, else pytest.skip with the hint.
    """
    for candidate in candidates:
        if isinstance(candidate, Path):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        else:
            found = shutil.which(candidate)
            if found:
                return found
    message = f"{name} not found ({', '.join(str(c) for c in candidates)}). Install it: {install_hint}"
    if tools_required():
        pytest.fail(
            f"{message} ({REQUIRE_ENV} is set, so this check may not be skipped)"
        )
    pytest.skip(message)


def load_script(name: str):
    """An `infra/scripts/<name>.py` module, loaded once per process (registered in sys.modules: dataclasses resolve
    their annotations through it)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, INFRA / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tf_files() -> list[Path]:
    return sorted(p for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts)


def load_tf(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return hcl2.load(
            fh,
            serialization_options=hcl2.SerializationOptions(
                strip_string_quotes=True, explicit_blocks=False
            ),
        )


def load_module(directory: Path) -> dict[str, list]:
    """Merge the top-level blocks of every .tf file of one module directory."""
    merged: dict[str, list] = {}
    for path in sorted(directory.glob("*.tf")):
        for key, blocks in load_tf(path).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def resources(module: dict[str, list], rtype: str) -> dict[str, dict]:
    """{name: body} of every resource of one type in a merged module."""
    found: dict[str, dict] = {}
    for block in module.get("resource", []):
        for name, body in block.get(rtype, {}).items():
            found[name] = body
    return found


def data_sources(module: dict[str, list], dtype: str) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for block in module.get("data", []):
        for name, body in block.get(dtype, {}).items():
            found[name] = body
    return found


def module_calls(module: dict[str, list]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for block in module.get("module", []):
        found.update(block)
    return found
