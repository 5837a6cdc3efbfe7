"""Data-anomaly checks on raw/events: three weeks of history for four landing hours, then a day on which one
hour has 5% of its usual volume, one a null-rate spike (page_url 1% -> ~60%), one a quarantine surge, and one
is normal. Each planted hour fails exactly its matching check; the normal hour and every history hour fail
none; results are recorded per partition; history is read from the event log (one run per day), not by
rescanning the lake.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import dagster as dg
import pytest

from personalization_assets.checks import anomalies
from tests.helpers import anomaly_config_file, block_on_event_anomalies, defs_for_env, materialize

DAY = "2026-11-28"
HISTORY_DAYS = ["2026-11-07", "2026-11-14", "2026-11-21"]
HOURS = {"volume": 10, "null": 11, "quarantine": 12, "normal": 13}
USUAL = 240
SELECTION = "key:raw/events or key:raw/events_quarantine"


def _message(rng: random.Random, day: str, hour: int, i: int, page: bool = True) -> dict:
    minute = rng.randrange(60)
    ts = f"{day}T{hour:02d}:{minute:02d}:{rng.randrange(60):02d}.000Z"
    user = rng.randrange(180)
    context = {"ip": "203.0.113.7", "userAgent": "Mozilla/5.0", "locale": "de-DE", "location": {"country": "DE"},
               "consent": {"categoryPreferences": {"personalization": True}}}
    if page and rng.random() > 0.01:
        context["page"] = {"url": f"https://news.example/{i}", "referrer": "https://search.example/"}
    return {"messageId": f"m-{day}-{hour}-{i}", "type": "track", "event": "Content Viewed", "anonymousId": f"anon-{user}",
            "userId": f"user-{user}", "timestamp": ts, "sentAt": ts, "receivedAt": ts, "context": context,
            "properties": {"content_id": f"c-{rng.randrange(40)}", "category": "news", "dwell_ms": 1000}}


def write_hour(landing: Path, day: str, hour: int, seed: int, volume: float = 1.0, page_null: float = 0.0, bad: float = 0.01) -> int:
    rng = random.Random(seed)
    n = max(1, round(USUAL * volume * rng.uniform(0.9, 1.1)))
    lines = []
    for i in range(n):
        if rng.random() < bad:
            lines.append(b'{"messageId": "broken", "type": "track"')  # malformed JSON -> quarantine
        else:
            lines.append(json.dumps(_message(rng, day, hour, i, page=rng.random() >= page_null)).encode())
    folder = landing / "events" / f"date={day}" / f"hour={hour:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "batch.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return n


def _evaluations(result) -> dict[tuple[str, str], bool]:
    out = {}
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            d = ev.event_specific_data
            if d.check_name.startswith("anomaly_"):
                out[(d.check_name, d.partition)] = d.passed
    return out


def _pk(day: str, hour: int) -> str:
    return f"{day}-{hour:02d}:00"


@pytest.fixture
def history_instance(landing):
    """Three weeks of normal history for the four hours, one run per day (as the hourly schedule would)."""
    defs = defs_for_env()
    instance = dg.DagsterInstance.ephemeral()
    seed = 0
    for day in HISTORY_DAYS:
        for hour in HOURS.values():
            seed += 1
            write_hour(landing, day, hour, seed)
        result = materialize(defs, SELECTION, (_pk(day, min(HOURS.values())), _pk(day, max(HOURS.values()))), instance=instance)
        # warming up (fewer than 3 weeks of history): the hours are not scored, and the non-blocking checks record
        # nothing for them (the statistics the next weeks score against are on each hour's materialization)
        assert result.success and _evaluations(result) == {}
    yield defs, instance
    instance.dispose()


def test_planted_anomalies_fail_only_their_checks(landing, history_instance):
    defs, instance = history_instance
    write_hour(landing, DAY, HOURS["volume"], 101, volume=0.05)
    write_hour(landing, DAY, HOURS["null"], 102, page_null=0.6)
    write_hour(landing, DAY, HOURS["quarantine"], 103, bad=0.12)
    write_hour(landing, DAY, HOURS["normal"], 104)
    result = materialize(defs, SELECTION, (_pk(DAY, 10), _pk(DAY, 13)), instance=instance, raise_on_error=False)
    assert result.success  # warn by default: nothing blocks
    evaluations = _evaluations(result)
    failed = {k for k, ok in evaluations.items() if not ok}
    assert failed == {
        ("anomaly_volume", _pk(DAY, HOURS["volume"])),
        ("anomaly_null_rate", _pk(DAY, HOURS["null"])),
        ("anomaly_quarantine_rate", _pk(DAY, HOURS["quarantine"])),
    }, failed
    assert len(evaluations) == 4 * len(anomalies.EVENT_CHECKS)
    # the null-rate result names the column; results are stored per partition (what the UI lists)
    ev = next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
              and e.event_specific_data.check_name == "anomaly_null_rate" and not e.event_specific_data.passed)
    assert ev.metadata["failing_columns"].value == ["page_url"]
    assert ev.severity == dg.AssetCheckSeverity.WARN
    records = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey(["raw", "events"]), "anomaly_volume"), limit=50)
    assert {r.partition for r in records} >= {_pk(d, HOURS["volume"]) for d in [*HISTORY_DAYS, DAY]}


def test_a_normal_day_raises_nothing(landing, history_instance):
    defs, instance = history_instance
    for i, hour in enumerate(HOURS.values()):
        write_hour(landing, DAY, hour, 500 + i)
    result = materialize(defs, SELECTION, (_pk(DAY, 10), _pk(DAY, 13)), instance=instance)
    evaluations = _evaluations(result)
    assert len(evaluations) == 4 * len(anomalies.EVENT_CHECKS) and all(evaluations.values()), {k for k, v in evaluations.items() if not v}


def test_a_blocking_check_stops_the_run(landing, history_instance, monkeypatch, tmp_path):
    """`blocking: true` + `severity: error` in the YAML: a 5% hour fails the step (downstream does not run)."""
    doc = anomalies.yaml.safe_load(anomalies.CONFIG_PATH.read_text())
    doc["checks"]["anomaly_volume"].update(severity="error", blocking=True)
    blocking = anomalies.parse_config(doc)
    monkeypatch.setattr(anomalies, "load_config", lambda path=None: blocking)
    defs = defs_for_env()  # check specs are built from the config
    _, instance = history_instance
    write_hour(landing, DAY, HOURS["volume"], 101, volume=0.05)
    result = materialize(defs, "key:raw/events+ and group:raw or key:consented/events", (_pk(DAY, 10), _pk(DAY, 10)), instance=instance, raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert any("anomaly_volume" in e.event_specific_data.error.message for e in failures)


# ---- the scoring itself, on synthetic statistics (fast; each case built to break a naive rule) ----

def _stats(records=240, rows=236, quarantined=4, subjects=110, page_null=0.01):
    return {"records_read": records, "rows_written": rows, "quarantined": quarantined, "distinct_subjects": subjects,
            "null_rates": {"page_url": page_null, "user_id": 0.0}}


def test_scoring_warm_up_and_thresholds():
    config = anomalies.load_config()
    history = [_stats(records=r) for r in (230, 250, 240)]
    def by(results):
        return {r.check: r.passed for r in results}

    # warm-up: two points only -> passes even for an empty hour, and says so
    warm = anomalies.evaluate_partition("p", _stats(records=1, rows=1), history[:2], config)
    assert all(r.passed for r in warm) and all(r.metadata.get("warming_up") for r in warm)
    assert by(anomalies.evaluate_partition("p", _stats(), history, config)) == dict.fromkeys(anomalies.EVENT_CHECKS, True)
    # a spike in volume fails too (not only drops)
    assert not by(anomalies.evaluate_partition("p", _stats(records=2400, rows=2390, quarantined=10, subjects=1000), history, config))["anomaly_volume"]
    # -10% is noise, not an anomaly (a plain z-score on a near-flat history would flag it)
    assert by(anomalies.evaluate_partition("p", _stats(records=216, rows=212), [_stats(records=240)] * 3, config))["anomaly_volume"]
    # identities collapsing: 5 subjects for 236 events
    assert not by(anomalies.evaluate_partition("p", _stats(subjects=5), history, config))["anomaly_distinct_subjects"]


def test_segment_size_swings():
    config = anomalies.load_config()
    assert anomalies.evaluate_segment_sizes({"a": 100, "b": 50}, None, config).passed
    assert anomalies.evaluate_segment_sizes({"a": 110, "b": 45}, {"a": 100, "b": 50}, config).passed
    swing = anomalies.evaluate_segment_sizes({"a": 30, "b": 50, "tiny": 9}, {"a": 100, "b": 50, "tiny": 1}, config)
    assert not swing.passed and set(swing.metadata["swings"].value) == {"a"}


def test_config_errors_name_the_key_and_the_fix():
    doc = anomalies.yaml.safe_load(anomalies.CONFIG_PATH.read_text())
    doc["checks"]["anomaly_volume"]["blocking"] = True  # but severity warn
    with pytest.raises(anomalies.AnomalyConfigError, match="checks.anomaly_volume.*severity: error"):
        anomalies.parse_config(doc)
    doc = anomalies.yaml.safe_load(anomalies.CONFIG_PATH.read_text())
    del doc["checks"]["anomaly_null_rate"]["max_increase"]
    with pytest.raises(anomalies.AnomalyConfigError, match="anomaly_null_rate.max_increase missing"):
        anomalies.parse_config(doc)


def test_the_thresholds_file_is_a_setting(monkeypatch, tmp_path):
    """PERSONALIZATION_ANOMALY_CONFIG replaces the packaged anomalies.yaml (a user tunes the checks without editing
    the installed package); a path that is not a file is a configuration error naming the setting."""
    monkeypatch.setenv("PERSONALIZATION_ANOMALY_CONFIG", anomaly_config_file(tmp_path, block_on_event_anomalies))
    assert all(c.blocking and c.severity == "error" for c in anomalies.load_config().checks.values() if c.name in anomalies.EVENT_CHECKS)
    monkeypatch.setenv("PERSONALIZATION_ANOMALY_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(anomalies.AnomalyConfigError, match="PERSONALIZATION_ANOMALY_CONFIG=.*missing.yaml.* is not a file"):
        anomalies.load_config()
    monkeypatch.delenv("PERSONALIZATION_ANOMALY_CONFIG")
    assert not any(c.blocking for c in anomalies.load_config().checks.values())
