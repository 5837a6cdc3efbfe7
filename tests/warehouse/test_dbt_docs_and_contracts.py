"""dbt documentation and contracts: every column described (and the described columns are the real ones),
a unit test for each mart, and ONE freshness contract shared by dbt's source freshness and Dagster's
freshness policies (dbt's is generated from personalization_assets/automation/freshness.py)."""

from __future__ import annotations

import json
from datetime import timedelta

import dagster as dg
import duckdb
import yaml

from personalization_assets.automation import freshness
from personalization_assets.settings import PROJECT_ROOT
from tests.warehouse.conftest import MARTS


def _manifest(path) -> dict:
    return json.loads(path.read_text())


def _models(manifest: dict) -> list[dict]:
    return [n for n in manifest["nodes"].values() if n["resource_type"] == "model"]


def test_every_model_and_source_column_is_described(dbt_manifest):
    manifest = _manifest(dbt_manifest)
    undocumented = [
        f"{n['name']}.{c}"
        for n in [*_models(manifest), *manifest["sources"].values()]
        for c, col in n["columns"].items()
        if not (col.get("description") or "").strip()
    ]
    assert not undocumented, undocumented
    assert all((n.get("description") or "").strip() for n in _models(manifest))


def test_documented_columns_are_the_columns_the_models_produce(dbt_manifest, local_build):
    """Docs cannot drift from the SQL: the declared columns of every model = the columns DuckDB built."""
    manifest = _manifest(dbt_manifest)
    con = duckdb.connect(str(local_build.data_dir / "warehouse.duckdb"), read_only=True)
    try:
        for node in _models(manifest):
            built = [r[0] for r in con.execute(
                "select column_name from information_schema.columns where table_name = ? order by ordinal_position", [node["name"]]
            ).fetchall()]
            assert built, node["name"]
            assert sorted(node["columns"]) == sorted(built), node["name"]
    finally:
        con.close()


def test_every_mart_has_a_unit_test(dbt_manifest):
    manifest = _manifest(dbt_manifest)
    tested = {u["model"] for u in manifest.get("unit_tests", {}).values()}
    assert set(MARTS) <= tested, set(MARTS) - tested


def test_dbt_source_freshness_is_generated_from_the_dagster_contract(dbt_manifest, monkeypatch):
    monkeypatch.delenv("PERSONALIZATION_FRESHNESS_SCALE", raising=False)
    # the file in the repo is what the generator writes (run `python -m personalization_assets.automation.freshness`)
    assert not freshness.sync_dbt_sources(write=False), "dbt/models/staging/__sources.yml is out of sync with freshness.py"
    manifest = _manifest(dbt_manifest)
    unit = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
    for source in manifest["sources"].values():
        f = source["freshness"]
        warn = f["warn_after"]["count"] * unit[f["warn_after"]["period"]]
        fail = f["error_after"]["count"] * unit[f["error_after"]["period"]]
        # the Dagster policy of the asset behind the source (meta.dagster.asset_key)
        key = dg.AssetKey(source["meta"]["dagster"]["asset_key"])
        policy = freshness.policy_for(key)
        assert (fail, warn) == (policy.fail_window.to_timedelta(), policy.warn_window.to_timedelta()), source["name"]


def test_the_generator_rewrites_a_drifted_file(tmp_path):
    src = PROJECT_ROOT / freshness.DBT_SOURCES_YML
    drifted = src.read_text().replace("warn_after: {count: 20, period: minute}", "warn_after: {count: 26, period: hour}")
    assert drifted != src.read_text()
    copy = tmp_path / "__sources.yml"
    copy.write_text(drifted)
    assert freshness.sync_dbt_sources(copy) is True
    assert copy.read_text() == src.read_text()
    doc = yaml.safe_load(copy.read_text())
    assert doc["sources"][0]["config"]["freshness"] == freshness.dbt_source_freshness("features")
