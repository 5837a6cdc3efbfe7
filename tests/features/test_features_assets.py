"""The feature multi-asset on a real temp lake: outputs, metadata, checks, blocking behaviour."""

from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa
import pytest

from personalization_assets.checks.pandera_checks import model_check
from personalization_assets.features import FeatureConfig, build_feature_assets
from personalization_assets.features.assets import FEATURE_KEYS, IDENTIFIER_CHECK, SESSION_CHECK
from personalization_assets.features.models import FEATURE_MODELS
from personalization_assets.features.params import parse_as_of
from personalization_assets.features.sql import TABLES
from personalization_assets.resources import DuckDBEngine
from personalization_assets.core.storage import LakeStorage
from tests.features.feature_fixtures import build, consent, event, granted_all, pseudo, ts, write_lake

AS_OF = "2026-01-10T00:00:00Z"


def scenario() -> tuple[list[dict], list[dict]]:
    ev = [
        event(at="2026-01-05 10:00", anon="a1", type="page", category="news", dwell_ms=1200, page_url="https://www.example.com/n"),
        event(at="2026-01-05 10:05", anon="a1", user="u1", name="Content Viewed", category="news", content_id="c1"),
        event(at="2026-01-05 10:20", user="u1", name="Order Completed", price=12.5, currency="EUR", category="news", message_id="order-1"),
        # a re-delivered copy in a later partition
        event(at="2026-01-05 10:20", user="u1", name="Order Completed", price=12.5, currency="EUR", category="news", message_id="order-1",
              received="2026-01-05 13:10"),
        # across midnight and partitions
        event(at="2026-01-05 23:55", user="u2", type="screen", category="tech"),
        event(at="2026-01-06 00:10", user="u2", name="Content Shared", category="tech"),
        # late: more than 3 days before its landing hour
        event(at="2026-01-01 00:00", user="u2", received="2026-01-06 02:00", message_id="late-1"),
        # withdrawn at as_of
        event(at="2026-01-05 12:00", user="gone", category="food"),
    ]
    ev += [event(at="2026-01-07 09:00", anon="kiosk", user=f"k{i}", subject=f"k{i}", category="travel") for i in range(6)]
    consent_rows = [
        *granted_all("a1", "u1", "u2", *[f"k{i}" for i in range(6)]),
        consent("gone", "personalization", "granted", end="2026-01-08 00:00"),
        consent("gone", "personalization", "denied", start="2026-01-08 00:00"),
    ]
    return ev, consent_rows


def run(lake: LakeStorage, extra_assets=(), as_of: str = AS_OF) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*build_feature_assets(), *extra_assets],
        resources={"lake": lake, "duckdb": DuckDBEngine(database=":memory:")},
        run_config={"ops": {"feature_tables": {"config": {"as_of": as_of}}}},
        raise_on_error=False,
    )


def test_materialize_writes_every_table_and_passes_every_check(tmp_path):
    lake = LakeStorage(url=str(tmp_path / "lake"))
    ev, consent_rows = scenario()
    write_lake(lake, ev, consent_rows)
    assert len(lake.partitions("consented", "events")) > 3

    result = run(lake)
    assert result.success

    checks = {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}
    expected = {(FEATURE_KEYS[t], f"pandera_{FEATURE_MODELS[t].__name__}") for t in TABLES}
    expected |= {(FEATURE_KEYS[t], IDENTIFIER_CHECK) for t in TABLES}
    expected |= {(FEATURE_KEYS["sessions"], SESSION_CHECK)}
    expected |= {(FEATURE_KEYS[t], c) for t in TABLES for c in ("anomaly_volume", "anomaly_null_rate")}  # checks/anomalies.yaml
    assert set(checks) == expected
    assert all(e.passed for e in checks.values()), [k for k, e in checks.items() if not e.passed]

    materialized = {m.asset_key: m.materialization.metadata for m in result.get_asset_materialization_events()}
    assert set(materialized) == set(FEATURE_KEYS.values())
    for table, key in FEATURE_KEYS.items():
        md = materialized[key]
        assert md["rows_written"].value == md["dagster/row_count"].value == lake.read_table("features", table).num_rows
        assert md["as_of"].value == "2026-01-10T00:00:00+00:00"
        assert md["config"].value["max_links"] == 5
    clean = materialized[FEATURE_KEYS["events_clean"]]
    assert clean["duplicates_dropped"].value == 1
    assert clean["late_rejected"].value == 1
    assert clean["subject_not_granted_at_as_of"].value == 1
    assert materialized[FEATURE_KEYS["identity_map"]]["junk_identifiers"].value == 1

    # the lake tables are exactly what the pure functions compute
    pure = build(ev, consent_rows, as_of=ts("2026-01-10 00:00"))
    for table in TABLES:
        written = lake.read_table("features", table)
        assert written.column_names == list(FEATURE_MODELS[table].to_schema().columns)
        assert written.equals(pure[table]), table
    persons = set(lake.read_table("features", "user_rfm")["person_id"].to_pylist())
    assert pseudo("gone") not in persons and pseudo("u1") in persons


def test_rerun_replaces_outputs(tmp_path):
    lake = LakeStorage(url=str(tmp_path / "lake"))
    ev, consent_rows = scenario()
    write_lake(lake, ev, consent_rows)
    assert run(lake, as_of="2026-01-05T12:00:00Z").success
    early = lake.read_table("features", "events_clean").num_rows
    assert run(lake).success
    assert lake.read_table("features", "events_clean").num_rows > early
    assert set(lake.read_table("features", "events_clean")["as_of"].to_pylist()) == {ts("2026-01-10 00:00")}


def test_blocking_check_failure_stops_downstream_asset(tmp_path):
    lake = LakeStorage(url=str(tmp_path / "lake"))
    ev, consent_rows = scenario()
    # an upstream defect: a negative price makes user_rfm.monetary negative
    ev.append(event(at="2026-01-06 10:00", user="u2", name="Order Completed", price=-50.0))
    write_lake(lake, ev, consent_rows)

    @dg.asset(key=["test", "audience"], deps=[FEATURE_KEYS["user_rfm"]])
    def audience():
        return None

    result = run(lake, extra_assets=[audience])
    assert not result.success
    failed = {(e.asset_key, e.check_name) for e in result.get_asset_check_evaluations() if not e.passed}
    assert (FEATURE_KEYS["user_rfm"], "pandera_UserRfm") in failed
    assert (FEATURE_KEYS["events_clean"], "pandera_EventsClean") in failed  # warn-level
    materialized = {m.asset_key for m in result.get_asset_materialization_events()}
    assert FEATURE_KEYS["user_rfm"] in materialized
    assert dg.AssetKey(["test", "audience"]) not in materialized


def test_empty_lake_writes_empty_tables(tmp_path):
    lake = LakeStorage(url=str(tmp_path / "lake"))
    result = run(lake)
    assert result.success
    for table in TABLES:
        assert lake.read_table("features", table).num_rows == 0


BREAKS = {
    "events_clean": ("person_id", "alice@example.com"),
    "identity_map": ("identifier_kind", "email"),
    "sessions": ("events", 0),
    "user_rfm": ("monetary", -1.0),
    "content_affinity": ("affinity", 1.5),
    "engagement": ("preferred_hour", 24),
    "purpose_eligibility": ("person_id", "not-a-pseudonym"),
}


@pytest.fixture(scope="module")
def valid_tables():
    ev, consent_rows = scenario()
    return build(ev, consent_rows, as_of=ts("2026-01-10 00:00"))


@pytest.mark.parametrize("table", TABLES)
def test_pandera_check_passes_valid_and_fails_broken_frame(valid_tables, table):
    good: pa.Table = valid_tables[table]
    check = model_check(FEATURE_KEYS[table], FEATURE_MODELS[table], blocking=True)
    assert check.evaluate(good).passed

    column, value = BREAKS[table]
    values = good[column].to_pylist()
    values[0] = value
    broken = good.set_column(good.column_names.index(column), column, pa.array(values, type=good.schema.field(column).type))
    result = check.evaluate(broken)
    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert result.metadata["failures"].value >= 1


def test_unique_keys_are_checked(valid_tables):
    t = valid_tables["purpose_eligibility"]
    doubled = pa.concat_tables([t, t.slice(0, 1)])
    assert not model_check(FEATURE_KEYS["purpose_eligibility"], FEATURE_MODELS["purpose_eligibility"], True).evaluate(doubled).passed


def test_a_duckdb_table_is_checked_on_the_same_sample_as_its_arrow_copy():
    """`evaluate_duckdb` (consent_state: the table stays in DuckDB) fetches only the sampled rows, by rowid. It must
    validate the rows `evaluate` samples from the same table: a broken row outside the sample passes both, one inside
    fails both, and the totals are the table's."""
    import duckdb
    import numpy as np

    from personalization_assets.checks.pandera_checks import sample_indices
    from personalization_assets.core.asset_keys import CONSENT_STATE
    from personalization_assets.privacy.consent import STATE_SCHEMA
    from personalization_assets.privacy.models import ConsentState

    n, k = 400, 25
    t = pa.table({"consent_subject": [pseudo(f"u{i}") for i in range(n)], "purpose": ["personalization"] * n,
                  "status": ["granted"] * n, "valid_from": [ts("2026-01-01 00:00")] * n, "valid_to": [None] * n,
                  "basis": ["decision"] * n, "jurisdiction": ["EU"] * n, "jurisdiction_source": ["event_location"] * n,
                  "source": ["cmp_event"] * n}, schema=STATE_SCHEMA)
    inside = int(sample_indices(n, k, 0)[3])
    outside = int(np.setdiff1d(np.arange(n), sample_indices(n, k, 0))[0])
    check = model_check(CONSENT_STATE, ConsentState, blocking=True)
    con = duckdb.connect()
    for row, fails in ((None, False), (outside, False), (inside, True)):
        status = ["granted"] * n
        if row is not None:
            status[row] = "maybe"
        table = t.set_column(t.column_names.index("status"), "status", pa.array(status, pa.string()))
        con.register("table_arrow", table)
        con.execute("create or replace temp table state as select * from table_arrow")
        on_arrow = check.evaluate(table, sample_rows=k)
        on_duckdb = check.evaluate_duckdb(con, "state", STATE_SCHEMA, sample_rows=k)
        assert on_arrow.passed == on_duckdb.passed == (not fails), row
        assert on_duckdb.metadata["rows_total"].value == n and on_duckdb.metadata["rows_validated"].value == k
        assert on_duckdb.metadata["sampled"].value is True
    # at most sample_rows: every row is validated, so the row outside the sample fails too
    con.register("table_arrow", t.set_column(t.column_names.index("status"), "status",
                                             pa.array(["maybe" if i == outside else "granted" for i in range(n)], pa.string())))
    con.execute("create or replace temp table state as select * from table_arrow")
    assert not check.evaluate_duckdb(con, "state", STATE_SCHEMA, sample_rows=n).passed


def test_config_and_definitions(tmp_path):
    now = datetime(2026, 3, 1, 12, 30, 45, 999_999, tzinfo=UTC)
    assert parse_as_of(None, now=now) == datetime(2026, 3, 1, 12, 30, 45, tzinfo=UTC)
    assert parse_as_of("2026-03-01T13:30:00+01:00") == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    assert parse_as_of("2026-03-01 12:30") == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_as_of("yesterday")
    assert FeatureConfig().to_params().as_of.microsecond == 0
    with pytest.raises(ValueError):
        FeatureConfig(max_links=0).to_params()

    defs = dg.Definitions(
        assets=build_feature_assets(),
        resources={"lake": LakeStorage(url=str(tmp_path)), "duckdb": DuckDBEngine(database=":memory:")},
    )
    dg.Definitions.validate_loadable(defs)
    specs = {s.key: s for s in defs.resolve_all_asset_specs() if s.key in set(FEATURE_KEYS.values())}
    assert len(specs) == 7
    for spec in specs.values():
        assert spec.group_name == "features"
        assert spec.owners == ["team:personalization"]
        assert spec.kinds == {"duckdb", "parquet"}
        assert "dagster/column_schema" in spec.metadata
        erasure = spec.metadata["privacy/erasure"]
        assert erasure["kind"] == "lake" and erasure["layer"] == "features" and erasure["table"] == spec.key.path[1]
        assert set(erasure["columns"]) <= set(FEATURE_MODELS[spec.key.path[1]].to_schema().columns)
    assert dg.AssetKey(["consented", "events"]) in {d.asset_key for d in specs[FEATURE_KEYS["events_clean"]].deps}
    assert dg.AssetKey(["privacy", "consent_state"]) in {d.asset_key for d in specs[FEATURE_KEYS["purpose_eligibility"]].deps}


def test_s3_lake_round_trip(moto_server, monkeypatch):
    """The same asset against an S3 lake (moto): Arrow-dataset views and sampled read-back over HTTP."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = f"features-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    lake = LakeStorage(url=f"s3://{bucket}/lake", s3_endpoint_url=moto_server,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    ev, consent_rows = scenario()
    write_lake(lake, ev, consent_rows)
    result = run(lake)
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    pure = build(ev, consent_rows, as_of=ts("2026-01-10 00:00"))
    for table in TABLES:
        assert lake.read_table("features", table).equals(pure[table]), table


@pytest.mark.integration  # a concurrency test: waits seconds on another build's lock
def test_a_second_feature_build_waits_for_the_one_in_progress(tmp_path):
    """The published tables and the per-person state are rewritten as one set: a build started while another
    holds the features' writer lock waits, then runs on what the first one left."""
    from personalization_assets.features.assets import _build_lock
    from tests.helpers import build_waits_behind

    lake = LakeStorage(url=str(tmp_path / "lake"))
    ev, consent_rows = scenario()
    write_lake(lake, ev, consent_rows)
    result, released = build_waits_behind(_build_lock(lake), lambda: run(lake), lambda: lake.exists("features", "events_clean"))
    assert result.success
    assert lake.read_table("features", "events_clean").num_rows > 0
    assert all(f.mtime_ns / 1e9 >= released for f in lake.partition_files("features", "events_clean"))


def test_str_columns_of_arrow_data_keep_every_check_but_the_element_type():
    """Pandera's `str` type check (a Python call per element) is skipped for Arrow string columns, which can hold
    nothing else. Each other check of such a column still fails a bad value, and a `str` column that arrives as
    another Arrow type still fails its type check, as does the same data given as a pandas frame."""
    import pandera.pandas as pda
    from pandera.typing import Series

    class M(pda.DataFrameModel):
        code: Series[str] = pda.Field(str_matches=r"^v1:[0-9a-f]{4}$")
        kind: Series[str] = pda.Field(isin=["a", "b"])
        note: Series[str] = pda.Field(nullable=True)

    def check(table):
        return model_check("t", M, blocking=True).evaluate(table)

    good = pa.table({"code": ["v1:00ab", "v1:ffff"], "kind": ["a", "b"], "note": [None, "x"]})
    assert check(good).passed
    assert not check(good.set_column(0, "code", pa.array(["v1:00ab", "nope"]))).passed  # pattern
    assert not check(good.set_column(1, "kind", pa.array(["a", "c"]))).passed  # allowed values
    assert not check(good.set_column(1, "kind", pa.array(["a", None], pa.string()))).passed  # not nullable
    as_ints = good.set_column(2, "note", pa.array([1, 2], pa.int64()))
    result = check(as_ints)
    assert not result.passed and "dtype('str')" in str(result.metadata["failed_checks"].value)
    frame = good.to_pandas()
    frame["note"] = [None, 3]
    assert not model_check("t", M, blocking=True).evaluate(frame).passed  # pandas input: element types still checked
