"""Data-anomaly checks on consented/events: the hours the `consented_events` step writes are scored against
the same hour in previous weeks, like raw/events. The planted anomalies exist ONLY in the consented tier
(raw/events is normal there), so the raw checks must stay green there and the consented one must fire:

- an hour whose visitors all denied consent (raw volume normal; consented rows ~0: a broken CMP),
- and, on another hour, a null-rate spike (page context missing on 60% of the views), which is real in both
  tiers: raw/events' and consented/events' null-rate checks fail on that hour, nothing else.

Four normal weeks first (warming up, then scored: a normal week raises nothing), then the planted week.
History is read from the event log (one run per day), not by rescanning the lake.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import dagster as dg
import pytest

from personalization_assets.checks import anomalies
from tests.helpers import anomaly_config_file, defs_for_env, materialize

WEEKS = ["2026-10-31", "2026-11-07", "2026-11-14", "2026-11-21"]  # history; the last one is scored, all normal
DAY = "2026-11-28"
HOURS = {"volume": 10, "null": 11, "normal": 12}
USUAL = 240
USERS = 150
SELECTION = " or ".join(f"key:{k}" for k in (
    "raw/events", "raw/events_quarantine", "privacy/identity_links", "privacy/consent_ledger", "privacy/consent_state",
    "privacy/suppression_list", "consented/events", "consented/events_state"))
CONSENTED = "consented/events"
PURPOSES = ("functional", "analytics", "performance", "personalization", "advertising", "marketing", "data_sharing")


def _ctx(url: str | None) -> dict:
    c = {"ip": "203.0.113.7", "userAgent": "Mozilla/5.0", "locale": "de-DE", "location": {"country": "DE"}}
    if url is not None:
        c["page"] = {"url": url, "referrer": "https://search.example/"}
    return c


def _consent(day: str, hour: int, user: str, granted: bool) -> dict:
    ts = f"{day}T{hour:02d}:00:00.000Z"
    ctx = _ctx(None)
    ctx["consent"] = {"categoryPreferences": dict.fromkeys(PURPOSES, granted)}
    return {"messageId": f"consent-{day}-{hour}-{user}", "type": "track", "event": "Segment Consent Preference Updated",
            "anonymousId": f"anon-{user}", "userId": user, "timestamp": ts, "sentAt": ts, "receivedAt": ts, "context": ctx, "properties": {}}


def write_hour(landing: Path, day: str, hour: int, seed: int, users: str, consent_users: str, granted: bool = True,
               page_missing: float = 0.0) -> None:
    """~USUAL content views of USERS `users`, after USERS consent events of `consent_users` (grant all, or deny
    all). The viewers' own decision may be older (it holds until changed). Every hour has the same mix of
    consent events and views, so the raw statistics of a planted hour stay normal."""
    rng = random.Random(seed)
    lines = [json.dumps(_consent(day, hour, f"{consent_users}-{u}", granted)) for u in range(USERS)]
    for i in range(round(USUAL * rng.uniform(0.9, 1.1))):
        ts = f"{day}T{hour:02d}:{1 + rng.randrange(59):02d}:{rng.randrange(60):02d}.000Z"
        user = f"{users}-{rng.randrange(USERS)}"
        url = None if rng.random() < page_missing else f"https://news.example/{i}"
        lines.append(json.dumps({"messageId": f"m-{day}-{hour}-{i}", "type": "track", "event": "Content Viewed", "anonymousId": f"anon-{user}",
                                 "userId": user, "timestamp": ts, "sentAt": ts, "receivedAt": ts, "context": _ctx(url),
                                 "properties": {"content_id": f"c-{rng.randrange(40)}", "category": "news", "dwell_ms": 1000}}))
    folder = landing / "events" / f"date={day}" / f"hour={hour:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "batch.jsonl").write_text("\n".join(lines) + "\n")


def _pk(day: str, hour: int) -> str:
    return f"{day}-{hour:02d}:00"


def _evaluations(result) -> dict[tuple[str, str, str], bool]:
    out = {}
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            d = ev.event_specific_data
            if d.check_name.startswith("anomaly_"):
                out[(d.asset_key.to_user_string(), d.check_name, d.partition)] = d.passed
    return out


def _run_day(defs, instance, day):
    return materialize(defs, SELECTION, (_pk(day, min(HOURS.values())), _pk(day, max(HOURS.values()))), instance=instance, raise_on_error=False)


def test_consented_anomalies_fire_where_raw_is_normal(landing):
    defs = defs_for_env()
    consented_checks = ("anomaly_volume", "anomaly_null_rate", "anomaly_distinct_subjects")  # anomalies.yaml: consented_events
    with dg.DagsterInstance.ephemeral() as instance:
        seed = 0
        for w, day in enumerate(WEEKS):
            for slot, hour in HOURS.items():
                seed += 1
                # the viewers grant once, in the first week (the grant holds afterwards); later weeks' consent
                # events come from other visitors, who grant and never view
                write_hour(landing, day, hour, seed, users=f"u{slot}", consent_users=f"u{slot}" if w == 0 else f"c{w}{slot}")
            result = _run_day(defs, instance, day)
            assert result.success
            evaluations = _evaluations(result)
            mine = {k: v for k, v in evaluations.items() if k[0] == CONSENTED and k[2].startswith(day)}
            # one evaluation per hour written and check once three weeks of history exist; none while warming up
            assert len(mine) == (len(HOURS) * len(consented_checks) if w == 3 else 0), (w, sorted(mine))
            assert all(evaluations.values()), f"a normal week raised {[k for k, v in evaluations.items() if not v]}"
            scored = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                      and e.event_specific_data.asset_key.to_user_string() == CONSENTED and e.event_specific_data.check_name.startswith("anomaly_")
                      and e.event_specific_data.partition.startswith(day)
                      and not e.event_specific_data.metadata.get("warming_up")]
            # warm-up until three weeks of history exist; the fourth week is really scored
            assert bool(scored) == (w == 3), (w, len(scored))

        # new visitors who all deny, then view: the raw hour is as usual, the consented one is empty
        write_hour(landing, DAY, HOURS["volume"], 901, users="fresh", consent_users="fresh", granted=False)
        write_hour(landing, DAY, HOURS["null"], 902, users="unull", consent_users="c9null", page_missing=0.6)
        write_hour(landing, DAY, HOURS["normal"], 903, users="unormal", consent_users="c9normal")
        result = _run_day(defs, instance, DAY)
        assert result.success  # warn by default: nothing blocks
        evaluations = _evaluations(result)
        failed = {k for k, ok in evaluations.items() if not ok}
        assert failed == {
            (CONSENTED, "anomaly_volume", _pk(DAY, HOURS["volume"])),
            (CONSENTED, "anomaly_null_rate", _pk(DAY, HOURS["null"])),
            ("raw/events", "anomaly_null_rate", _pk(DAY, HOURS["null"])),
        }, failed
        # raw/events was scored on the same hours: its volume hour is normal, the consented check sees what raw cannot
        assert evaluations[("raw/events", "anomaly_volume", _pk(DAY, HOURS["volume"]))] is True
        assert len({k for k in evaluations if k[2].startswith(DAY)}) == len(HOURS) * (len(consented_checks) + len(anomalies.EVENT_CHECKS))
        ev = next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                  and e.event_specific_data.check_name == "anomaly_null_rate" and not e.event_specific_data.passed
                  and e.event_specific_data.asset_key.to_user_string() == CONSENTED)
        assert ev.metadata["failing_columns"].value == ["page_url"] and ev.severity == dg.AssetCheckSeverity.WARN
        # stored per partition (what the UI lists under the check, by hour), history included
        records = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(["consented", "events"]), "anomaly_volume"), limit=100)
        assert {r.partition for r in records} >= {_pk(d, HOURS["volume"]) for d in [*WEEKS, DAY]}
        # each hour's statistics are on its own materialization (the history of the next runs)
        hour_md = {e.event_specific_data.materialization.partition: e.event_specific_data.materialization.metadata
                   for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
                   and e.event_specific_data.materialization.asset_key.to_user_string() == CONSENTED}
        volume_hour = hour_md[_pk(DAY, HOURS["volume"])]
        assert volume_hour["rows_written"].value == 0 and volume_hour["raw_rows_read"].value > USUAL
        assert hour_md[_pk(DAY, HOURS["null"])]["null_rates"].value["page_url"] > 0.6


@pytest.mark.parametrize("state_only", [False, True], ids=["checks-selected", "state-alone"])
def test_a_blocking_consented_check_stops_downstream(landing, monkeypatch, state_only):
    """`consented_events.overrides.anomaly_volume: {severity: error, blocking: true}`: the consented step fails on
    the planted hour, and the features (downstream) do not run. Other targets keep their own settings. The same
    holds in a run that selects the step's state alone (automation), where the evaluations are logged events."""
    doc = anomalies.yaml.safe_load(anomalies.CONFIG_PATH.read_text())
    doc["consented_events"]["overrides"] = {"anomaly_volume": {"severity": "error", "blocking": True}}
    doc["history"]["min_points"] = 1  # one week of history is enough here
    config = anomalies.parse_config(doc)
    assert config.checks["anomaly_volume"].blocking is False and config.target(CONSENTED).checks["anomaly_volume"].blocking
    monkeypatch.setattr(anomalies, "load_config", lambda path=None: config)
    defs = defs_for_env()  # check specs are built from the config
    with dg.DagsterInstance.ephemeral() as instance:
        write_hour(landing, WEEKS[0], HOURS["volume"], 1, users="u", consent_users="u")
        assert materialize(defs, SELECTION, (_pk(WEEKS[0], 10), _pk(WEEKS[0], 10)), instance=instance).success
        write_hour(landing, WEEKS[1], HOURS["volume"], 2, users="fresh", consent_users="fresh", granted=False)
        selection = SELECTION.replace(" or key:consented/events or ", " or ") if state_only else SELECTION
        result = materialize(defs, selection + " or key:features/user_rfm", (_pk(WEEKS[1], 10), _pk(WEEKS[1], 10)), instance=instance,
                             raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert any("anomaly_volume" in e.event_specific_data.error.message for e in failures)
    built = {e.event_specific_data.materialization.asset_key.to_user_string() for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}
    assert "features/user_rfm" not in built


def test_a_run_for_the_state_alone_still_records_each_hours_checks(landing, monkeypatch, tmp_path):
    """Automation requests `consented/events_state` alone (the step then logs each hour it writes): the hours'
    anomaly evaluations are recorded all the same (logged, per hour), never skipped. One week of history is enough
    here (`history.min_points: 1`, set through PERSONALIZATION_ANOMALY_CONFIG as a user would)."""
    monkeypatch.setenv("PERSONALIZATION_ANOMALY_CONFIG", anomaly_config_file(tmp_path, lambda doc: doc["history"].update(min_points=1)))
    defs = defs_for_env()
    state_only = SELECTION.replace(" or key:consented/events or ", " or ")
    assert "key:consented/events_state" in state_only and "key:consented/events or" not in state_only
    with dg.DagsterInstance.ephemeral() as instance:
        for w, day in enumerate(WEEKS[:2]):
            write_hour(landing, day, HOURS["volume"], 1 + 2 * w, users="u", consent_users="u" if w == 0 else "c")
            write_hour(landing, day, HOURS["null"], 2 + 2 * w, users="v", consent_users="v" if w == 0 else "d")
            result = materialize(defs, state_only, (_pk(day, 10), _pk(day, 11)), instance=instance)
            built = {e.event_specific_data.materialization.partition for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
                     and e.event_specific_data.materialization.asset_key.to_user_string() == CONSENTED}
            assert built == {_pk(day, 10), _pk(day, 11)}
            found = {k for k in _evaluations(result) if k[0] == CONSENTED}
            # week 0 warms up (nothing recorded by the non-blocking checks); week 1 is scored against it
            assert found == (set() if w == 0 else {(CONSENTED, c, pk) for c in ("anomaly_volume", "anomaly_null_rate", "anomaly_distinct_subjects")
                                                   for pk in built}), (w, found)
        records = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(["consented", "events"]), "anomaly_volume"), limit=10)
        assert {r.partition for r in records} == built
