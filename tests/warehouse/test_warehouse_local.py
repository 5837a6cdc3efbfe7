"""The local path: feature Parquet -> warehouse/features_loaded -> `dbt build` on DuckDB, run through Dagster."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace

import dagster as dg
import pytest

from personalization_assets.warehouse.assets import build_dbt_assets
from tests.warehouse.conftest import (
    MARTS,
    check_results,
    isolated_env,
    materializations,
)
from tests.warehouse.warehouse_fixtures import (
    AS_OF,
    CONSENTED,
    KNOWN,
    NOT_CONSENTED,
    SALE_SHARE_NOT_ELIGIBLE,
    feature_tables,
    pseudonym,
    write_feature_lake,
)

DBT_MODELS = {
    *(f"warehouse/stg_{t}" for t in ("user_rfm", "content_affinity", "engagement", "identity_map", "purpose_eligibility", "sessions")),
    *(f"segments/{m}" for m in MARTS),
}
BY_ID = {p.person_id: p for p in CONSENTED}


def value_quintiles(values: dict[str, float]) -> dict[str, int]:
    """The quintile of each value, worst = smallest first: 1 + floor(5 * (rank - 1) / n), rank = 1 + the number of
    strictly smaller values, so equal values share a score (models/marts/user_segments.yml)."""
    n = len(values)
    return {i: 1 + (5 * sum(1 for w in values.values() if w < v)) // n for i, v in values.items()}


def expected_segments() -> dict[str, tuple]:
    """The rules of models/marts/user_segments.yml, re-implemented on the fixture persons."""
    ids = [p.person_id for p in KNOWN]
    r = value_quintiles({i: -BY_ID[i].recency_days for i in ids})
    f = value_quintiles({i: BY_ID[i].frequency for i in ids})
    m = value_quintiles({i: BY_ID[i].monetary for i in ids})
    out = {}
    for i in ids:
        p = BY_ID[i]
        if r[i] >= 4 and f[i] >= 4 and m[i] >= 4:
            seg = "champions"
        elif r[i] >= 3 and f[i] >= 4:
            seg = "loyal"
        elif r[i] >= 4 and f[i] <= 2:
            seg = "new"
        elif r[i] >= 3:
            seg = "potential_loyalist"
        elif f[i] >= 3 or m[i] >= 3:
            seg = "at_risk"
        else:
            seg = "hibernating"
        if p.first_seen_days_ago <= 30:
            stage = "new"
        elif p.recency_days <= 30:
            stage = "active"
        elif p.recency_days <= 90:
            stage = "lapsing"
        else:
            stage = "dormant"
        top = min(p.categories, key=lambda c: (-c[1], c[0]))[0] if p.categories else None
        out[i] = (r[i], f[i], m[i], seg, top, stage)
    return out


def test_run_succeeds_and_materializes_every_model(local_build):
    assert local_build.result.success
    mats = materializations(local_build.result)
    assert set(mats) == DBT_MODELS | {"warehouse/features_loaded"}
    loaded = mats["warehouse/features_loaded"]
    assert loaded["rows/user_rfm"] == len(CONSENTED)
    assert loaded["rows/purpose_eligibility"] == 4 * (len(CONSENTED) + len(NOT_CONSENTED))


def test_dbt_data_tests_ran_as_passing_asset_checks(local_build):
    checks = check_results(local_build.result)
    assert len(checks) >= 60
    assert all(checks.values()), [k for k, ok in checks.items() if not ok]
    # one of each kind, on the asset the test belongs to
    for key in (
        "segments/user_segments:unique_user_segments_person_id",
        "segments/user_segments:accepted_values_user_segments_r_score__False__1__2__3__4__5",
        "segments/segment_membership:relationships_segment_membership_person_id__person_id__ref_user_segments_",
        "segments/segment_membership:unique_combination_of_columns_segment_membership_person_id__segment_name",
        "segments/advertising_audience:assert_advertising_audience_is_sale_share_eligible",
        "warehouse/stg_purpose_eligibility:accepted_values_stg_purpose_eligibility_purpose__personalization__analytics__advertising__sale_share",
    ):
        assert checks.get(key) is True, key
    # every dbt test of the project became a check
    assert set(checks) == {k.to_user_string() for k in build_dbt_assets("local").check_keys}


def test_dbt_unit_tests_ran_and_are_recorded(local_build):
    observations = [
        e.event_specific_data.asset_observation
        for e in local_build.result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    unit = {(o.asset_key.to_user_string(), o.metadata["dbt/unit_test"].value): o.metadata["dbt/unit_test_status"].value for o in observations}
    assert unit == {
        ("segments/user_segments", "test_user_segments_rfm_scores_and_segment_names"): "pass",
        ("segments/user_segments", "test_user_segments_lifecycle_boundaries"): "pass",
        ("segments/user_segments", "test_user_segments_scores_do_not_depend_on_person_id"): "pass",
        ("segments/user_segments", "test_user_segments_recency_within_a_day"): "pass",
        ("segments/segment_membership", "test_segment_membership_types_and_affinity_threshold"): "pass",
        ("segments/advertising_audience", "test_advertising_audience_only_sale_share_eligible"): "pass",
        ("segments/segment_sizes", "test_segment_sizes_counts_members_per_segment"): "pass",
    }


def test_user_segments_one_row_per_known_user_with_expected_scores(local_build):
    rows = local_build.marts["user_segments"]
    assert [r[0] for r in rows] == sorted(p.person_id for p in KNOWN)
    assert {r[0] for r in rows}.isdisjoint({pseudonym(n) for n in ("a01", "a02", *NOT_CONSENTED)})
    for position in (1, 2, 3):  # r, f, m
        assert set(Counter(r[position] for r in rows)) == {1, 2, 3, 4, 5}
    # the zero spenders (k04, k09, k14) share the lowest m_score, whatever their pseudonyms
    assert {r[3] for r in rows if BY_ID[r[0]].monetary == 0} == {1}
    assert {r[0]: r[1:7] for r in rows} == expected_segments()
    assert all(r[7].replace(tzinfo=None) == AS_OF.replace(tzinfo=None) for r in rows)


def test_tie_and_edge_cases(local_build):
    seg = {r[0]: r for r in local_build.marts["user_segments"]}
    # identical R, F and M: the same scores and segment, whichever pseudonym sorts first (splitting the tie by
    # person_id, as ntile() did, gave them different scores here: the tie straddles a quintile boundary)
    assert seg[pseudonym("k10")][1:5] == seg[pseudonym("k11")][1:5]
    assert seg[pseudonym("k15")][6] == "new"  # first seen 5 days before as_of
    assert seg[pseudonym("k04")][5] is None  # no content events, no top category


def test_advertising_audience_only_sale_share_eligible_known_users(local_build):
    audience = {r[0] for r in local_build.marts["advertising_audience"]}
    expected = {p.person_id for p in KNOWN if p.name not in SALE_SHARE_NOT_ELIGIBLE}
    assert audience == expected
    for excluded in (*SALE_SHARE_NOT_ELIGIBLE, "n01", "a01"):  # n01: eligible for sale_share but no personalization consent
        assert pseudonym(excluded) not in audience
    segments = {r[0]: (r[4], r[5]) for r in local_build.marts["user_segments"]}
    assert all((r[1], r[2]) == segments[r[0]] for r in local_build.marts["advertising_audience"])


def test_segment_membership_and_sizes(local_build):
    membership = local_build.marts["segment_membership"]
    affinity = feature_tables()["content_affinity"].to_pylist()
    known = {p.person_id for p in KNOWN}
    expected_affinity = {(a["person_id"], f"affinity:{a['category']}") for a in affinity if a["person_id"] in known and a["affinity"] >= 0.3}
    assert {(r[0], r[2]) for r in membership if r[1] == "affinity"} == expected_affinity
    per_type = Counter(r[1] for r in membership)
    assert per_type["rfm"] == per_type["lifecycle"] == len(KNOWN)
    assert all(r[2].startswith(r[1] + ":") for r in membership)
    sizes = {r[1]: r[2] for r in local_build.marts["segment_sizes"]}
    assert sizes == dict(Counter(r[2] for r in membership))


def test_mart_contracts_hold_on_duckdb(local_build):
    assert local_build.column_types["user_segments"] == {
        "person_id": "VARCHAR",
        "r_score": "INTEGER",
        "f_score": "INTEGER",
        "m_score": "INTEGER",
        "rfm_segment": "VARCHAR",
        "top_category": "VARCHAR",
        "lifecycle_stage": "VARCHAR",
        "as_of": "TIMESTAMP",
    }
    assert local_build.column_types["segment_sizes"]["members"] == "BIGINT"


def test_failing_data_test_blocks_the_marts(dbt_manifest, tmp_path):
    """A duplicate person in user_rfm fails the (blocking) unique check on stg_user_rfm: the run fails
    and dbt build does not write user_segments or anything after it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.settings import load_settings
    from personalization_assets import warehouse as warehouse_layer

    paths = write_feature_lake(tmp_path / "data")
    rfm = pq.read_table(paths["user_rfm"])
    pq.write_table(pa.concat_tables([rfm, rfm.slice(0, 1)]), paths["user_rfm"])
    with pytest.MonkeyPatch.context() as mp:
        isolated_env(mp, tmp_path / "data", tmp_path / "dbt_target")
        defs = warehouse_layer.defs(load_settings())
        result = dg.materialize(
            list(defs.assets), resources={"lake": LakeStorage(url=str(tmp_path / "data" / "lake")), **defs.resources}, raise_on_error=False
        )
    assert not result.success
    checks = check_results(result)
    assert checks["warehouse/stg_user_rfm:unique_stg_user_rfm_person_id"] is False
    assert not {"segments/user_segments", "segments/advertising_audience"} & set(materializations(result))


def test_local_loader_names_missing_feature_tables(tmp_path):
    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.warehouse.loader import build_features_loaded_asset
    from personalization_assets.warehouse.resources import SnowflakeWarehouse

    paths = write_feature_lake(tmp_path)
    paths["engagement"].unlink()
    with pytest.raises(dg.Failure, match="engagement"):
        dg.materialize(
            [build_features_loaded_asset("local")],
            resources={"lake": LakeStorage(url=str(tmp_path / "lake")), "snowflake": SnowflakeWarehouse(enabled=False)},
        )


def test_local_loader_refuses_an_s3_lake():
    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.warehouse.loader import build_features_loaded_asset
    from personalization_assets.warehouse.resources import SnowflakeWarehouse

    with pytest.raises(dg.Failure, match="cannot read s3://"):
        dg.materialize(
            [build_features_loaded_asset("local")],
            resources={"lake": LakeStorage(url="s3://bucket/lake"), "snowflake": SnowflakeWarehouse(enabled=False)},
        )


def test_local_and_prod_graphs_are_identical(dbt_manifest, tmp_path):
    """Environments differ in resources (and kinds), never in keys, dependencies or checks."""
    from personalization_assets.resources import build_resources
    from personalization_assets.settings import load_settings
    from personalization_assets import warehouse as warehouse_layer

    with pytest.MonkeyPatch.context() as mp:
        isolated_env(mp, tmp_path, tmp_path / "dbt_target")
        local = load_settings()
        graphs = {}
        for settings in (local, replace(local, env="prod")):
            warehouse_defs = warehouse_layer.defs(settings)
            # wired like definitions.py: the platform's resources (incl. `lake`) + the warehouse's
            defs = dg.Definitions.merge(dg.Definitions(resources=build_resources(local)), warehouse_defs)
            dg.Definitions.validate_loadable(defs)
            graph = defs.resolve_asset_graph()
            graphs[settings.env] = {
                "deps": {k.to_user_string(): sorted(p.to_user_string() for p in graph.get(k).parent_keys) for k in graph.get_all_asset_keys()},
                "groups": {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys() if graph.get(k).is_materializable},
                "checks": sorted(c.to_user_string() for c in graph.asset_check_keys),
                "resources": sorted(warehouse_defs.resources),
            }
            kinds = {k.to_user_string(): graph.get(k).kinds for k in graph.materializable_asset_keys}
            warehouse = "duckdb" if settings.env == "local" else "snowflake"
            assert kinds["segments/user_segments"] == {"dbt", warehouse}
    assert graphs["local"] == graphs["prod"]
    g = graphs["local"]
    assert g["resources"] == ["dbt", "snowflake", "warehouse"]
    assert g["deps"]["warehouse/stg_user_rfm"] == ["features/user_rfm", "warehouse/features_loaded"]
    assert g["deps"]["warehouse/features_loaded"] == sorted(f"features/{t}" for t in feature_tables())
    assert g["groups"]["segments/segment_membership"] == "segments"
    assert g["groups"]["warehouse/stg_sessions"] == "warehouse"


def _handler(spec: dg.AssetSpec) -> dict:
    value = spec.metadata["privacy/erasure"]
    return dict(getattr(value, "value", getattr(value, "data", value)))


def test_erasure_plan_covers_every_warehouse_asset(dbt_manifest, tmp_path):
    """The privacy layer's erasure planner accepts the warehouse assets once they hang below personal data."""
    from personalization_assets.privacy.erasure import plan_targets
    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.settings import load_settings
    from personalization_assets import warehouse as warehouse_layer

    raw = dg.AssetSpec(["raw", "events"], metadata={"privacy/erasure": {"kind": "raw"}})
    features = [
        dg.AssetSpec(["features", t], deps=[raw.key], metadata={"privacy/erasure": {"kind": "lake", "layer": "features", "table": t}})
        for t in feature_tables()
    ]
    with pytest.MonkeyPatch.context() as mp:
        isolated_env(mp, tmp_path, tmp_path / "dbt_target")
        warehouse = warehouse_layer.defs(load_settings())
    graph = dg.Definitions(
        assets=[raw, *features, *warehouse.assets], resources={"lake": LakeStorage(url=str(tmp_path)), **warehouse.resources}
    ).resolve_asset_graph()
    targets, _retained = plan_targets(graph, ())
    kinds = {t.asset: t.handler["kind"] for t in targets}
    assert kinds["warehouse/features_loaded"] == "warehouse"
    assert {kinds[f"segments/{m}"] for m in ("user_segments", "segment_membership", "advertising_audience")} == {"warehouse"}
    assert kinds["segments/segment_sizes"] == "none"
    assert all(kinds[m] == "none" for m in DBT_MODELS if m.startswith("warehouse/"))


def test_duckdb_eraser_deletes_a_subject_from_the_marts(local_build, tmp_path):
    import shutil

    from personalization_assets.warehouse.loader import build_features_loaded_asset
    from personalization_assets.warehouse.resources import DuckDBWarehouse

    copy = tmp_path / "warehouse.duckdb"  # the session's warehouse stays intact for the other tests
    shutil.copy(local_build.data_dir / "warehouse.duckdb", copy)
    eraser = DuckDBWarehouse(path=str(copy))
    subject = {pseudonym("k01")}
    erased = {}
    for key, spec in build_dbt_assets("local").specs_by_key.items():
        handler = _handler(spec)
        if handler["kind"] != "warehouse":
            continue
        present = eraser.erase(handler, subject, apply=False)
        assert present > 0, key
        assert eraser.erase(handler, subject, apply=True) == present
        assert eraser.erase(handler, subject, apply=False) == 0
        erased[key.to_user_string()] = present
    assert erased["segments/user_segments"] == 1
    assert erased["segments/segment_membership"] >= 2  # rfm + lifecycle (+ affinity)
    # locally the feature tables are read in place, never copied: nothing stored to erase
    loader_spec = next(iter(build_features_loaded_asset("local").specs))
    assert eraser.erase(_handler(loader_spec), subject, apply=False) == 0


_HOLD_WAREHOUSE = """
import sys, time
import duckdb
from personalization_assets.warehouse.resources import warehouse_file_lock
path, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
with warehouse_file_lock(path, shared=mode == "shared"):
    con = duckdb.connect(path, read_only=mode == "shared")
    print("held", flush=True)
    time.sleep(seconds)
    con.close()
"""


def _hold_warehouse(path, mode: str, seconds: float):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _HOLD_WAREHOUSE, str(path), mode, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_warehouse_build_waits_for_the_first(dbt_manifest, tmp_path):
    """Two runs ticking at once on one data dir: DuckDB lets one process hold the warehouse file for writing and
    refuses every other open ("Could not set lock on file"), so the second run's dbt step failed (a concurrency
    attack found it). The dbt step now takes the warehouse file lock: it waits for the other holder, then builds.
    The other run is a child process holding the lock and the file open for writing, as a dbt build does."""
    import duckdb

    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.settings import load_settings
    from personalization_assets import warehouse as warehouse_layer

    write_feature_lake(tmp_path / "data")
    wh = tmp_path / "data" / "warehouse.duckdb"
    duckdb.connect(str(wh)).close()
    waits: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: waits.append(record.getMessage())
    lock_log = logging.getLogger("personalization_assets.warehouse.resources")
    lock_log.addHandler(handler)
    lock_log.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as mp:
            isolated_env(mp, tmp_path / "data", tmp_path / "dbt_target")
            defs = warehouse_layer.defs(load_settings())
            # the other run: from just before this run starts until well after its dbt step would have started
            holder = _hold_warehouse(wh, "exclusive", 10)
            result = dg.materialize(
                list(defs.assets), resources={"lake": LakeStorage(url=str(tmp_path / "data" / "lake")), **defs.resources},
                raise_on_error=False)
    finally:
        lock_log.removeHandler(handler)
    assert holder.wait(timeout=60) == 0
    assert any("waiting for another run's use of the warehouse file" in m for m in waits)  # they did overlap
    assert result.success
    assert "segments/user_segments" in set(materializations(result))


def test_warehouse_readers_share_the_file_and_wait_for_a_writer(tmp_path):
    """Readers (the segment sizes, the exports, the eraser's verification) hold the lock shared: several at once; a
    reader facing a writer waits, and past its timeout fails naming the lock file (not DuckDB's lock error)."""
    import duckdb

    from personalization_assets.warehouse.resources import WarehouseBusy, warehouse_file_lock

    wh = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(wh)).close()
    reader = _hold_warehouse(wh, "shared", 3)
    with warehouse_file_lock(wh, shared=True, timeout=1):  # a second reader at the same time
        pass
    with pytest.raises(WarehouseBusy, match="warehouse.duckdb.lock"):
        with warehouse_file_lock(wh, timeout=0.5):  # a writer waits for the reader
            pass
    assert reader.wait(timeout=30) == 0
    writer = _hold_warehouse(wh, "exclusive", 3)
    with pytest.raises(WarehouseBusy, match="held by another run"):
        with warehouse_file_lock(wh, shared=True, timeout=0.5):
            pass
    with warehouse_file_lock(wh, shared=True, timeout=30):  # waits for the writer, then reads
        assert duckdb.connect(str(wh), read_only=True).execute("select 1").fetchall() == [(1,)]
    assert writer.wait(timeout=30) == 0
