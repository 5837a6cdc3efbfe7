"""The import contract ([tool.importlinter] in pyproject.toml): the layers import only downwards and no
package has an import cycle. `make test` runs `lint-imports` itself; these tests also show that the contract
catches an upward import and a cycle (a contract that cannot fail would prove nothing)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extras (import-linter is pinned in pyproject.toml)")
    return subprocess.run([str(LINT_IMPORTS), "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """The package and its contract, copied, so a test can plant an import without touching the checkout."""
    shutil.copytree(ROOT / "personalization_assets", tmp_path / "personalization_assets",
                    ignore=shutil.ignore_patterns("__pycache__", "*.yaml", "*.yml", "*.sql", "*.html"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_code_keeps_the_import_contract():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


@pytest.mark.parametrize("module, planted, broken", [
    # the core imports a layer (the lake access reaching up into privacy)
    ("core/storage.py", "from personalization_assets.privacy import consent", "personalization_assets.core is not allowed to import"),
    # raw reads from privacy (the pre-contract code did this: raw/assets.py -> privacy/pseudonymize.py)
    ("raw/layouts.py", "from personalization_assets.privacy import transforms", "personalization_assets.raw is not allowed to import"),
    # settings import a layer (the pre-contract code: settings -> privacy.policies, raw.layouts)
    ("settings.py", "from personalization_assets.raw import layouts", "personalization_assets.settings is not allowed to import"),
    # the privacy layer reaches up into the consented tier it feeds (the pre-split privacy/assets.py held both)
    ("privacy/identity.py", "from personalization_assets.consented import transform", "personalization_assets.privacy is not allowed to import"),
    # the consented tier imports the features' as_of rule (the pre-split exception; the rule now lives in core/as_of.py)
    ("consented/assets.py", "from personalization_assets.features import params", "personalization_assets.consented is not allowed to import"),
    # the monitoring sensors import the automation layer that registers them
    ("monitoring/metrics.py", "from personalization_assets import automation", "personalization_assets.monitoring.metrics is not allowed to import"),
])
def test_an_upward_import_breaks_the_contract(package_copy, module, planted, broken):
    path = package_copy / "personalization_assets" / module
    path.write_text(path.read_text() + f"\n{planted}  # planted\n")
    proc = _lint(package_copy)
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert broken in " ".join(proc.stdout.split()), proc.stdout[-4000:]


def test_a_module_cycle_inside_a_layer_breaks_the_contract(package_copy):
    # the pre-contract cycle: privacy/operations.py imported privacy/assets.py, which imported privacy/operations.py
    path = package_copy / "personalization_assets" / "privacy" / "operations.py"
    path.write_text(path.read_text() + "\nfrom personalization_assets.privacy import assets  # planted\n")
    proc = _lint(package_copy)
    assert proc.returncode == 1, proc.stdout[-4000:]
    out = " ".join(proc.stdout.split())
    assert "No cycles are allowed in personalization_assets.privacy" in out and ".operations -> .assets" in out, proc.stdout[-4000:]


def test_asset_keys_are_defined_once():
    """A fixed asset key is spelled out once, in core/asset_keys.py; every other module imports it (keys built
    from a table name, like raw/<table>, are not literals): no `AssetKey(["layer", "name"])` and no
    `["layer", "name"]` list (an `AssetSelection.assets(...)` argument, a key path compared) anywhere else."""
    import re

    layers = "raw|privacy|consented|features|warehouse|segments|exports"
    literal = re.compile(r'AssetKey\(\[\s*"[^"]*"\s*,\s*"[^"]*"\s*\]\)|\[\s*"(' + layers + r')"\s*,\s*"[a-z_]+"\s*\]')
    package = ROOT / "personalization_assets"
    offenders = sorted(
        f"{p.relative_to(package)}: {m.group(0)}" for p in package.rglob("*.py") if p.relative_to(package).as_posix() != "core/asset_keys.py"
        for m in literal.finditer(p.read_text())
    )
    assert offenders == []
