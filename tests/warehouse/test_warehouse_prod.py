"""The production path on fakesnow: the loader writes the feature tables with batched INSERTs of bound JSON,
then dbt-snowflake builds the same marts as DuckDB from them.

The end-to-end test talks to a fakesnow SERVER over HTTP for everything (loader, dbt, eraser): nothing is
patched in-process (the full CLI rehearsal is test_prod_rehearsal.py). One fakesnow limitation remains: it
cannot create the temporary tables dbt-snowflake uses for unit tests, so the prod run excludes them
(`DBT_EXCLUDE_RESOURCE_TYPES=unit_test`); the unit tests run on DuckDB (test_warehouse_local.py).
"""

from __future__ import annotations

from dataclasses import replace

import dagster as dg
import fakesnow
import pytest
import snowflake.connector

from personalization_assets.core.storage import LakeStorage
from personalization_assets.warehouse.assets import build_dbt_assets
from personalization_assets.warehouse.loader import (
    FEATURE_TABLES,
    build_features_loaded_asset,
)
from personalization_assets.warehouse.resources import SnowflakeWarehouse
from tests.warehouse.conftest import (
    MART_ORDER,
    MARTS,
    check_results,
    isolated_env,
    materializations,
    start_fakesnow_server,
)
from tests.warehouse.warehouse_fixtures import (
    AS_OF,
    feature_tables,
    pseudonym,
    write_feature_lake,
)

DATABASE = "PERSONALIZATION"


def test_loader_writes_feature_tables_in_declared_types(tmp_path):
    write_feature_lake(tmp_path)
    resources = {
        "lake": LakeStorage(url=str(tmp_path / "lake")),
        "snowflake": SnowflakeWarehouse(account="acme", user="loader", password="secret", role="LOADER", warehouse="WH", database=DATABASE),
    }
    with fakesnow.patch():
        for _ in range(2):  # a second load replaces the tables
            result = dg.materialize([build_features_loaded_asset("prod")], resources=resources)
        meta = materializations(result)["warehouse/features_loaded"]
        conn = snowflake.connector.connect(database=DATABASE, schema="FEATURES")
        cur = conn.cursor()
        for table, data in feature_tables().items():
            assert meta[f"rows/{table}"] == data.num_rows
            assert meta[f"location/{table}"] == f"{DATABASE}.FEATURES.{table.upper()}"
            assert cur.execute(f"select count(*) from {DATABASE}.features.{table}").fetchone()[0] == data.num_rows
            cur.execute(f"select * from {DATABASE}.features.{table} limit 1")
            # declared columns only (decayed_weight, sessions, consent_subjects stay in the lake), upper case
            assert [d[0] for d in cur.description] == [name.upper() for name, _ in FEATURE_TABLES[table]]
        # timestamps arrive as UTC wall-clock time (TIMESTAMP_NTZ)
        assert cur.execute(f"select min(as_of), max(first_seen_at) from {DATABASE}.features.user_rfm").fetchone()[0] == AS_OF.replace(tzinfo=None)
        tables = {r[0] for r in cur.execute(f"select table_name from {DATABASE}.information_schema.tables where table_schema = 'FEATURES'").fetchall()}
        assert tables == {t.upper() for t in FEATURE_TABLES}  # no __LOADING leftovers
        conn.close()


def test_prod_path_on_fakesnow_matches_duckdb(local_build, dbt_manifest, tmp_path):
    from personalization_assets.settings import load_settings
    from personalization_assets import warehouse as warehouse_layer

    write_feature_lake(tmp_path / "data")
    with start_fakesnow_server() as server, pytest.MonkeyPatch.context() as mp:
        isolated_env(mp, tmp_path / "data", tmp_path / "dbt_target")
        for name, value in {
            "SNOWFLAKE_ACCOUNT": "fakesnow",
            "SNOWFLAKE_USER": "fake",
            "SNOWFLAKE_PASSWORD": "snow",
            "SNOWFLAKE_ROLE": "TRANSFORMER",
            "SNOWFLAKE_WAREHOUSE": "TRANSFORMING",
            "SNOWFLAKE_DATABASE": DATABASE,
            "SNOWFLAKE_HOST": "127.0.0.1",
            "SNOWFLAKE_PORT": str(server["port"]),
            "SNOWFLAKE_PROTOCOL": "http",
            "DBT_EXCLUDE_RESOURCE_TYPES": "unit_test",
        }.items():
            mp.setenv(name, value)
        # the prod resources exactly as definitions build them (dg.EnvVar from the variables above);
        # the lake stays local (LakeStorage reads S3 and local paths alike)
        settings = replace(load_settings(), env="prod")
        defs = warehouse_layer.defs(settings)
        # the loader, dbt and the eraser all reach the server over HTTP, like they would reach Snowflake
        result = dg.materialize(
            list(defs.assets), resources={"lake": LakeStorage(url=settings.lake_url), **defs.resources}, raise_on_error=False
        )
        assert result.success
        assert set(materializations(result)) >= {f"segments/{m}" for m in MARTS}
        checks = check_results(result)
        assert len(checks) >= 60 and all(checks.values()), [k for k, ok in checks.items() if not ok]

        conn = snowflake.connector.connect(**server, database=DATABASE)
        try:
            cur = conn.cursor()
            snowflake_marts = {m: cur.execute(f"select * from segments.{m} order by {MART_ORDER[m]}").fetchall() for m in MARTS}
        finally:
            conn.close()
        for mart in MARTS:
            assert [tuple(r) for r in snowflake_marts[mart]] == local_build.marts[mart], mart

        # the erasure run's eraser (`warehouse` resource = the Snowflake resource in prod) on every
        # warehouse handler: the FEATURES copies and the marts, over the connector like in production
        eraser = SnowflakeWarehouse(
            account="fakesnow", user="fake", password="snow", role="R", warehouse="W", database=DATABASE,
            host=server["host"], port=server["port"], protocol=server["protocol"],
        )
        subject = {pseudonym("k01")}
        specs = [*build_features_loaded_asset("prod").specs, *build_dbt_assets("prod").specs]
        handlers = [h for h in (_handler(s) for s in specs) if h["kind"] == "warehouse"]
        assert len(handlers) == 4  # features_loaded (6 tables) + 3 marts
        present = {h.get("relation", "features"): eraser.erase(h, subject, apply=False) for h in handlers}
        assert all(n > 0 for n in present.values()), present
        assert [eraser.erase(h, subject, apply=True) for h in handlers] == list(present.values())
        assert [eraser.erase(h, subject, apply=False) for h in handlers] == [0] * len(handlers)


def _handler(spec: dg.AssetSpec) -> dict:
    value = spec.metadata["privacy/erasure"]
    return dict(getattr(value, "value", getattr(value, "data", value)))


def test_insert_batches_round_trip_awkward_values_over_the_server(tmp_path):
    """The default load path on a real fakesnow server over HTTP: several batches (tiny batch size), quotes,
    backslashes, unicode, NULLs, full-precision doubles, microsecond timestamps; and the settings switch."""
    import datetime as dt

    import pyarrow as pa

    from personalization_assets.settings import ConfigError
    from personalization_assets.warehouse.resources import snowflake_warehouse

    columns = (("s", "varchar"), ("d", "double"), ("n", "bigint"), ("t", "timestamp_ntz"), ("b", "boolean"))
    n = 2500
    data = pa.table({
        "s": [None if i % 11 == 0 else f"it's \"q\" \\ \u00fc {i}" for i in range(n)],
        "d": [None if i % 7 == 0 else i / 3 for i in range(n)],
        "n": pa.array([None if i % 5 == 0 else i * 10**12 for i in range(n)], pa.int64()),
        "t": pa.array([dt.datetime(2026, 11, 28, 13, 5, 7, i) for i in range(n)], pa.timestamp("us")),
        "b": [None if i % 13 == 0 else i % 2 == 0 for i in range(n)],
    })
    with start_fakesnow_server() as server:
        wh = SnowflakeWarehouse(account="fakesnow", user="fake", password="snow", role="R", warehouse="W", database=DATABASE,
                                host=server["host"], port=server["port"], protocol=server["protocol"], insert_batch_bytes=20_000)
        with wh.get_connection(paramstyle="qmark") as conn:
            conn.cursor().execute(f"create database if not exists {DATABASE}")
            loaded = wh.replace_table(conn, "awkward", columns, data)
            assert loaded.rows == n
            rows = conn.cursor().execute(f"select s, d, n, t, b from {DATABASE}.FEATURES.AWKWARD order by t").fetchall()
    assert [tuple(r) for r in rows] == list(zip(*(data.column(c).to_pylist() for c, _ in columns)))
    with pytest.raises(ConfigError, match="SNOWFLAKE_LOAD_METHOD='copy' is unknown"):
        snowflake_warehouse(replace(_prod_settings(), env="prod"), {"SNOWFLAKE_LOAD_METHOD": "copy"})
    assert snowflake_warehouse(replace(_prod_settings(), env="prod"), {"SNOWFLAKE_LOAD_METHOD": "stage"}).load_method == "stage"


def _prod_settings():
    from personalization_assets.settings import load_settings

    return load_settings({"PERSONALIZATION_DATA_DIR": "/tmp"})
