"""The default cutoff is deterministic: the end of the last complete landing hour (= the start of the latest
hour partition present in raw/events), not the wall clock. Two runs over the same landing give identical
features; an explicit as_of still wins."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa

from personalization_assets.features import build_feature_assets
from personalization_assets.features.assets import FEATURE_KEYS
from personalization_assets.core.as_of import latest_complete_hour, resolve_as_of
from personalization_assets.features.sql import TABLES
from personalization_assets.resources import DuckDBEngine
from personalization_assets.core.storage import LakeStorage
from tests.features.feature_fixtures import ts, write_lake
from tests.features.test_features_assets import AS_OF, run, scenario


def _raw_hours(lake: LakeStorage, *hours: str) -> None:
    # only the partition listing matters (no data is read to find the cutoff)
    for h in hours:
        lake.write_table("raw", "events", pa.table({"message_id": ["m"]}), partition={"date": h[:10], "hour": h[11:13]})


def _run_default(lake: LakeStorage) -> dg.ExecuteInProcessResult:
    return dg.materialize(build_feature_assets(), resources={"lake": lake, "duckdb": DuckDBEngine(database=":memory:")})


def _tables(lake: LakeStorage) -> dict[str, list]:
    return {t: sorted(map(repr, lake.read_table("features", t).to_pylist())) for t in TABLES}


def test_default_as_of_is_the_start_of_the_latest_raw_hour_and_runs_repeat_exactly(tmp_path):
    lake = LakeStorage(url=str(tmp_path / "lake"))
    ev, consent_rows = scenario()
    write_lake(lake, ev, consent_rows)
    _raw_hours(lake, "2026-01-06-23:00", "2026-01-07-10:00", "2026-01-07-09:00")
    assert latest_complete_hour(lake) == ts("2026-01-07 10:00")

    first = _run_default(lake)
    assert first.success
    md = {m.asset_key: m.materialization.metadata for m in first.get_asset_materialization_events()}
    for key in FEATURE_KEYS.values():
        assert md[key]["as_of"].value == "2026-01-07T10:00:00+00:00"
        assert md[key]["as_of_source"].value == "latest_raw_hour_start"
    before = _tables(lake)
    assert _run_default(lake).success
    assert _tables(lake) == before, "same landing, same features"
    assert set(lake.read_table("features", "events_clean")["as_of"].to_pylist()) == {ts("2026-01-07 10:00")}


def test_explicit_as_of_wins_and_an_empty_raw_tier_falls_back_to_now(tmp_path):
    lake = LakeStorage(url=str(tmp_path / "lake"))
    ev, consent_rows = scenario()
    write_lake(lake, ev, consent_rows)
    _raw_hours(lake, "2026-01-07-10:00")
    assert resolve_as_of("2026-01-05T12:00:00Z", lake) == (ts("2026-01-05 12:00"), "explicit")
    result = run(lake, as_of=AS_OF)
    assert result.success
    md = {m.asset_key: m.materialization.metadata for m in result.get_asset_materialization_events()}
    assert md[FEATURE_KEYS["user_rfm"]]["as_of"].value == "2026-01-10T00:00:00+00:00"
    assert md[FEATURE_KEYS["user_rfm"]]["as_of_source"].value == "explicit"
    empty = LakeStorage(url=str(tmp_path / "empty"))
    assert latest_complete_hour(empty) is None
    assert resolve_as_of(None, empty)[1] == "now_no_raw_partitions"
