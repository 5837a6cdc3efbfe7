"""Data-anomaly checks on the feature tables (unpartitioned): each build is scored against the previous builds'
row count and null rates (recorded on their materializations; read from the Parquet footer). Four normal builds
(three warming up, the fourth scored: nothing raised), then a build on 5% of the usual input (every table's
volume check fails, nothing else), then a build whose page URLs are missing on 60% of events (events_clean's
null-rate check fails on page_url, nothing else). The results are also what the metrics push.
"""

from __future__ import annotations

import random

import dagster as dg

from personalization_assets.features import build_feature_assets
from personalization_assets.features.assets import FEATURE_KEYS
from personalization_assets.features.sql import TABLES
from personalization_assets.checks import anomalies
from personalization_assets.monitoring.metrics import anomaly_results, build_registry
from personalization_assets.resources import DuckDBEngine
from personalization_assets.core.storage import LakeStorage
from tests.features.feature_fixtures import event, granted_all, write_lake

AS_OF = "2026-01-10T00:00:00Z"
PERSONS = 300
CATEGORIES = ["news", "tech", "food", "travel", "sport"]
CHECKS = ("anomaly_volume", "anomaly_null_rate")  # anomalies.yaml: features.checks
MIN_BUILDS = 3  # features.min_points


def world(seed: int, persons_share: float = 1.0, page_missing: float = 0.01) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    persons = [f"p{seed}-{i}" for i in range(round(PERSONS * persons_share * rng.uniform(0.95, 1.05)))]
    events = []
    for p in persons:
        for k in range(rng.randrange(3, 7)):
            day, hour, minute = 5 + rng.randrange(4), rng.randrange(24), rng.randrange(60)
            events.append(event(at=f"2026-01-0{day} {hour:02d}:{minute:02d}", anon=f"a-{p}", user=p, category=rng.choice(CATEGORIES),
                                content_id=f"c{rng.randrange(50)}", dwell_ms=1000 + rng.randrange(5000),
                                page_url=None if rng.random() < page_missing else f"https://news.example/{k}"))
    return events, granted_all(*persons, *[f"a-{p}" for p in persons])


def build(tmp_path, instance, n: int, **kw) -> dg.ExecuteInProcessResult:
    lake = LakeStorage(url=str(tmp_path / f"lake{n}"))  # a fresh input each build; history lives in the event log
    write_lake(lake, *world(n, **kw))
    return dg.materialize(build_feature_assets(), instance=instance, resources={"lake": lake, "duckdb": DuckDBEngine(database=":memory:")},
                          run_config={"ops": {"feature_tables": {"config": {"as_of": AS_OF}}}})


def _anomalies(result) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations() if e.check_name.startswith("anomaly_")}


def test_feature_table_anomalies_against_previous_builds(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        for n in range(4):
            result = build(tmp_path, instance, n)
            found = _anomalies(result)
            assert set(found) == {(t, c) for t in TABLES for c in CHECKS}
            assert all(e.passed for e in found.values()), [k for k, e in found.items() if not e.passed]
            warming = {k for k, e in found.items() if e.metadata.get("warming_up")}
            assert warming == (set(found) if n < MIN_BUILDS else set()), (n, warming)
        # each build records its own statistics (the history of the next ones): the footer's null counts
        md = {m.asset_key.path[-1]: m.materialization.metadata for m in result.get_asset_materialization_events()}
        assert 0 < md["events_clean"]["null_rates"].value["page_url"] < 0.05

        small = build(tmp_path, instance, 10, persons_share=0.05)
        failed = {k for k, e in _anomalies(small).items() if not e.passed}
        assert failed == {(t, "anomaly_volume") for t in TABLES}, failed

        nulls = build(tmp_path, instance, 11, page_missing=0.6)
        found = _anomalies(nulls)
        failed = {k for k, e in found.items() if not e.passed}
        assert failed == {("events_clean", "anomaly_null_rate")}, failed
        ev = found[("events_clean", "anomaly_null_rate")]
        assert ev.metadata["failing_columns"].value == ["page_url"] and ev.severity == dg.AssetCheckSeverity.WARN

        # pushed like the raw ones: one series per table and check, failed = 1 for the planted one
        pushed = {(a, c): f for a, c, _p, f, _s, _score in anomaly_results(instance, nulls.run_id)}
        assert pushed[("features/events_clean", "anomaly_null_rate")] is True
        assert len(pushed) == len(TABLES) * len(CHECKS) and sum(pushed.values()) == 1
        registry = build_registry(instance, instance.get_run_by_id(nulls.run_id), [FEATURE_KEYS["user_rfm"]])
        samples = [s for fam in registry.collect() if fam.name == "personalization_anomaly_check_failed" for s in fam.samples]
        assert any(s.labels["asset"] == "features/events_clean" and s.labels["check"] == "anomaly_null_rate" and s.value == 1.0 for s in samples)


def test_feature_targets_config():
    config = anomalies.load_config().target("features")
    assert config.enabled == CHECKS and config.min_points == MIN_BUILDS and config.history == "previous_runs"
    assert config.null_columns == ["*"] and config.checks["anomaly_volume"].params["min_ratio"] == 0.5  # override
    assert anomalies.load_config().checks["anomaly_volume"].params["min_ratio"] == 0.3  # raw/events keeps its own
