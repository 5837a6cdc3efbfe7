"""Folder = layer (issue #17): each layer package exposes ONE `defs()` returning its `dg.Definitions` (assets,
checks, the resources it owns, its jobs, schedules and sensors); definitions.py only merges them. Together the
layers are exactly the platform, no definition belongs to two layers, and an asset's group is its layer."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import dagster as dg
import pytest

import personalization_assets
from personalization_assets.settings import load_settings
from tests.helpers import defs_for_env

DATA_LAYERS = ("raw", "consented", "features", "warehouse", "exports")
# handed the other layers' definitions: the erasure plan is derived from the lineage, automation targets the assets
WHOLE_GRAPH_LAYERS = ("privacy", "automation")
LAYERS = DATA_LAYERS + WHOLE_GRAPH_LAYERS
# dbt marts are their own group inside the warehouse layer
GROUPS_OF = {layer: {layer} for layer in LAYERS} | {"warehouse": {"warehouse", "segments"}}


def _layer(name: str):
    return importlib.import_module(f"personalization_assets.{name}")


@pytest.fixture
def layer_defs(data_dir) -> dict[str, dg.Definitions]:
    """Every layer's definitions, built the way definitions.py builds them."""
    from personalization_assets.automation import staleness
    from personalization_assets.resources import build_resources

    settings = load_settings()
    out = {name: _layer(name).defs(settings) for name in DATA_LAYERS}
    lineage = dg.Definitions.merge(dg.Definitions(resources=build_resources(settings)), *out.values())
    run_tags = staleness.run_tags()  # the tag every run of this code carries (automation/staleness.py)
    out["privacy"] = _layer("privacy").defs(settings, lineage=lineage, job_tags=run_tags)
    out["automation"] = _layer("automation").defs(settings, platform=dg.Definitions.merge(lineage, out["privacy"]),
                                                  run_tags=run_tags)
    return out


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_package_exposes_one_defs(name):
    module = _layer(name)
    assert hasattr(module, "__path__"), f"personalization_assets.{name} must be a package (folder = layer)"
    assert callable(getattr(module, "defs", None)), f"personalization_assets.{name} has no defs()"
    assert next(iter(inspect.signature(module.defs).parameters)) == "settings"
    # one entry point per layer: no other public builder returning definitions at the package level
    builders = [n for n, v in vars(module).items() if n.startswith("build_") and callable(v) and "Definitions" in str(inspect.signature(v).return_annotation)]
    assert builders == [], builders


def test_the_layers_together_are_the_platform(layer_defs):
    """The union of the layers' assets, checks, jobs, schedules and sensors is the whole platform, each once."""
    platform = defs_for_env()
    repo = platform.get_repository_def()
    graph = platform.resolve_asset_graph()

    def asset_keys(d):
        return {k for a in (d.assets or []) for k in (a.keys if isinstance(a, dg.AssetsDefinition) else [a.key])}

    owners: dict = {}
    for name, d in layer_defs.items():
        assert isinstance(d, dg.Definitions), name
        for kind, items in (("asset", asset_keys(d)), ("job", {j.name for j in d.jobs or []}),
                            ("schedule", {s.name for s in d.schedules or []}), ("sensor", {s.name for s in d.sensors or []})):
            for item in items:
                assert (kind, item) not in owners, f"{kind} {item} is defined by both {owners[(kind, item)]} and {name}"
                owners[(kind, item)] = name
    assert {k for kind, k in owners if kind == "asset"} == set(graph.get_all_asset_keys())
    # jobs defined inside schedules (segments_rebuild) and the implicit asset jobs are not listed by a layer
    named_jobs = {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")}
    assert {k for kind, k in owners if kind == "job"} | {s.job_name for s in repo.schedule_defs} >= named_jobs
    assert {k for kind, k in owners if kind == "schedule"} == {s.name for s in repo.schedule_defs}
    assert {k for kind, k in owners if kind == "sensor"} == {s.name for s in repo.sensor_defs}
    # every asset's group belongs to the layer that defines it
    for (kind, key), name in owners.items():
        if kind == "asset":
            assert graph.get(key).group_name in GROUPS_OF[name], (key, graph.get(key).group_name, name)


def test_an_asset_group_is_its_layer(data_dir):
    """The key mirrors the storage and the group is the layer: consented/* is the consented layer, not privacy."""
    graph = defs_for_env().resolve_asset_graph()
    wrong = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys() if graph.get(k).group_name != k.path[0]}
    assert wrong == {}
    assert {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).group_name == "consented"} == {
        "consented/events", "consented/events_state", "consented/crm_profiles", "consented/content_catalog"}
OLD_MODULE_PATHS = (
    # compatibility aliases of modules moved to core/ or checks/ (removed: every import uses the new home)
    "monitoring.anomalies", "raw.partitions", "raw.tracking_plan", "resources.secrets", "resources.storage",
    "privacy.hash_chain", "privacy.policies", "privacy.quarantine_match", "privacy.pseudonymize", "privacy.audit", "privacy.keys",
    # moved to their layer's package
    "privacy.consented", "privacy.consented_state", "jobs",
    # renamed: features/identity.py (connected components) was easy to confuse with privacy/identity.py
    "features.identity",
)


PACKAGE = Path(personalization_assets.__file__).parent


@pytest.mark.parametrize("old", OLD_MODULE_PATHS)
def test_old_module_paths_are_gone(old):
    # looked up as files: an editable install of another checkout may extend the package's search path
    path = PACKAGE.joinpath(*old.split("."))
    assert not path.with_suffix(".py").exists() and not (path / "__init__.py").exists(), path


def test_no_module_aliases_another():
    """No `sys.modules[__name__] = ...` aliasing: a module is imported from the one place it lives."""
    offenders = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "sys.modules[__name__]" in p.read_text())
    assert offenders == []


def _python_files() -> list[Path]:
    root = PACKAGE.parent
    return [p for d in (PACKAGE, root / "tests", root / "bench") for p in d.rglob("*.py")]


def test_pa_always_means_pyarrow():
    """`pa` is pyarrow in every module; pandera is `pda` (issue #17: it meant pandera in 7 modules)."""
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    full = alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
                    if alias.asname == "pa" and not full.startswith("pyarrow"):
                        offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {full} as pa")
    assert offenders == []


def test_one_identity_module():
    """One `identity` module: the identity links (privacy/identity.py); the features' graph labelling is `components`."""
    assert sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("identity.py")) == ["privacy/identity.py"]
