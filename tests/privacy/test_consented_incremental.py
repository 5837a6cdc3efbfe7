"""The consented tier updated incrementally is exactly a rebuild from scratch.

`consented/events` is written by the unpartitioned step `consented_events` (state `consented/events_state`),
which finds its own stale hours. Each scenario below changes an OLD consented hour through data that lands in
a NEW hour, so a naive "build only the new raw hours" step leaves wrong rows behind:

* a login (identify) arriving later stitches earlier anonymous events to a consented user;
* a late consent grant and a late withdrawal, both with an old effective time;
* an erasure request arriving after the subject's events;
* a raw hour rewritten because a re-delivered object landed in its folder;
* a pseudonym key rotation between runs (with the rotation job, and without it).

Lake states are built with the real pipeline (raw + privacy assets on a first landing, then files added
and the assets run again) and compared, row for row, with a fresh lake built once over the union.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import local_environment
from tests.helpers import check_results, defs_for_env, materializations, materialize

H10, H11, H12 = "2026-11-28-10:00", "2026-11-28-11:00", "2026-11-28-12:00"
KEY_V1 = "1f" * 32
RAW = "key:raw/events"
PRIVACY = " or ".join(f"key:{k}" for k in (
    "raw/crm_profiles", "raw/privacy_requests", "privacy/identity_links", "privacy/consent_ledger",
    "privacy/consent_state", "privacy/suppression_list"))
STATE = "key:consented/events_state"
DE = {"country": "DE"}
ALL = {"personalization": True, "analytics": True, "advertising": True, "marketing": True, "data_sharing": True, "performance": True}
NONE = {k: False for k in ALL}


def _msg(mid, hour, minute, user=None, anon=None, event="Content Viewed", prefs=None, mtype="track", received=None):
    ts = f"2026-11-28T{hour:02d}:{minute:02d}:00.000Z"
    context = {"locale": "de-DE", "location": DE}
    if prefs is not None:
        context["consent"] = {"categoryPreferences": prefs}
    m = {"messageId": mid, "type": mtype, "anonymousId": anon or f"anon-of-{user}", "timestamp": ts, "sentAt": ts,
         "receivedAt": received or ts, "context": context}
    if mtype == "track":
        m.update(event=event, properties={"content_id": "c-1", "category": "news"})
    if user:
        m["userId"] = user
    return m


def _grant(mid, hour, minute, user, prefs=ALL, received=None):
    return _msg(mid, hour, minute, user=user, event="Segment Consent Preference Updated", prefs=prefs, received=received)


FIRST = {  # landing folder hour -> file name -> messages
    10: {"a.jsonl": [
        _grant("g-stitch", 10, 1, "u-stitch"),
        _msg("m-anon-1", 10, 30, anon="anon-s"), _msg("m-anon-2", 10, 31, anon="anon-s"),
        _msg("m-late-1", 10, 30, user="u-late"),
        # u-late's device without the user id: its consent subject is u-late only through the identity link
        _msg("m-late-anon", 10, 40, anon="anon-of-u-late"),
        _grant("g-wd", 10, 0, "u-wd"), _msg("m-wd-1", 10, 30, user="u-wd"),
        _grant("g-erase", 10, 0, "u-erase"), _msg("m-erase-1", 10, 30, user="u-erase"),
        _grant("g-steady", 10, 0, "u-steady"), _msg("m-steady-1", 10, 40, user="u-steady"),
    ]},
    11: {"a.jsonl": [
        _msg("m-wd-2", 11, 30, user="u-wd"), _msg("m-erase-2", 11, 30, user="u-erase"),
        _msg("m-steady-2", 11, 30, user="u-steady"), _msg("m-anon-3", 11, 10, anon="anon-s"),
    ]},
}
SECOND = {
    # a re-delivered / late object lands in an hour already ingested
    11: {"b.jsonl": [_msg("m-steady-3", 11, 45, user="u-steady")]},
    12: {"a.jsonl": [
        # the login that stitches anon-s to u-stitch (consented since 10:01)
        _msg("m-login", 12, 5, user="u-stitch", anon="anon-s", mtype="identify"),
        # late consent decisions with old effective times, delivered in hour 12
        _grant("g-late", 10, 1, "u-late", received="2026-11-28T12:00:00.000Z"),
        _grant("w-wd", 11, 0, "u-wd", prefs=NONE, received="2026-11-28T12:00:00.000Z"),
        _msg("m-steady-4", 12, 10, user="u-steady"),
    ]},
}
ERASURE = [{"request_id": "r-erase", "type": "erasure", "user_id": "u-erase", "received_at": "2026-11-28T12:00:00Z"}]


def _write(landing: Path, files: dict, requests: list[dict]) -> None:
    for hour, named in files.items():
        folder = landing / "events" / "date=2026-11-28" / f"hour={hour:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, msgs in named.items():
            (folder / name).write_text("".join(json.dumps(m) + "\n" for m in msgs))
    (landing / "crm").mkdir(parents=True, exist_ok=True)
    (landing / "crm" / "export.csv").write_text(
        "user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n"
        "u-steady,s@x.example,,A,B,DE,1990-01-02,2025-01-01T00:00:00Z,free,2025-01-01T00:00:00Z\n")
    (landing / "privacy_requests").mkdir(parents=True, exist_ok=True)
    (landing / "privacy_requests" / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))


def _env(monkeypatch, data_dir: Path, keys: dict[str, str], active: str | None = None) -> None:
    monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps(keys))
    if active:
        monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION", active)


def _ok(result):
    checks = check_results(result)
    assert all(checks.values()), {k: v for k, v in checks.items() if not v}
    return result


def _tick(defs, raw_hours: tuple[str, str] | None):
    """One incremental tick: new raw hours ingested, privacy assets rebuilt, then the consented step with no
    partition tags (it finds its own stale hours)."""
    if raw_hours:
        _ok(materialize(defs, RAW, raw_hours))
    _ok(materialize(defs, PRIVACY))
    result = _ok(materialize(defs, STATE))
    return materializations(result)["consented/events_state"]


def _rows(lake) -> list[tuple]:
    parts = [lake.read_table("consented", "events", p) for p in lake.partitions("consented", "events")]
    if not parts:
        return []
    table = pa.concat_tables(parts)
    return sorted(tuple(repr(v) for v in r.values()) for r in table.to_pylist())


def _fresh(tmp_path: Path, monkeypatch, keys, active=None):
    """A lake built once, from scratch, over the union of every landing file."""
    d = tmp_path / "fresh"
    _env(monkeypatch, d, keys, active)
    _write(d / "landing", FIRST, [])
    _write(d / "landing", SECOND, ERASURE)
    defs = defs_for_env()
    _ok(materialize(defs, RAW, (H10, H12)))
    _ok(materialize(defs, PRIVACY))
    _ok(materialize(defs, STATE, (H10, H12)))  # an explicit range: every hour rebuilt
    return defs


@pytest.fixture(scope="module")
def first_landing_built(tmp_path_factory, clean_env_module):
    """The first landing built once per module (its data dir and Dagster home); each test gets a copy."""
    root = tmp_path_factory.mktemp("first_landing")
    local_environment(root, clean_env_module)
    _env(clean_env_module, root / "data", {"1": KEY_V1})
    _write(root / "data" / "landing", FIRST, [])
    md = _tick(defs_for_env(), (H10, H11))
    assert md["build_mode"] == "incremental" and md["hours_built"] == 2
    return root


@pytest.fixture
def first_landing(first_landing_built, data_dir, monkeypatch):
    """The first landing ingested and the consented tier built: a private copy of `first_landing_built`, so the
    tests change it in any order. The consent ledger's checkpoint names the log's location and file identities,
    so the copy's first run re-verifies the (small) ledger chain in full, as after a restore from backup; what
    these tests compare, the consented tier, does not depend on it."""
    shutil.copytree(first_landing_built / "data", data_dir, dirs_exist_ok=True)
    shutil.copytree(first_landing_built / "dagster_home", os.environ["DAGSTER_HOME"], dirs_exist_ok=True)
    _env(monkeypatch, data_dir, {"1": KEY_V1})
    return defs_for_env()


def _pz(value: str) -> str:
    """The pseudonym of `value` under the keys the environment sets now."""
    import os

    from personalization_assets.core.pseudonymize import Pseudonymizer

    pz = Pseudonymizer(keys_json=os.environ["PERSONALIZATION_PSEUDONYM_KEYS"],
                       active_version=os.environ.get("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION"))
    return pz.pseudonymize_values([value], "id")[0]


def _subject_rows(defs, user=None, anon=None):
    lake = defs.resources["lake"]
    col, value = ("user_pseudonym", user) if user else ("anonymous_pseudonym", anon)
    p = _pz(value)
    return [r for part in lake.partitions("consented", "events") for r in lake.read_table("consented", "events", part).to_pylist()
            if r[col] == p and r["message_id"].startswith("m-")]  # content events (consent updates aside)


def test_incremental_runs_equal_a_full_rebuild(first_landing, data_dir, tmp_path, monkeypatch):
    defs = first_landing
    # the planted cases before the late data: what a naive step would leave in place
    assert _subject_rows(defs, anon="anon-s") == [], "anonymous visitor without consent: excluded"
    assert _subject_rows(defs, user="u-late") == []
    assert {r["message_id"] for r in _subject_rows(defs, user="u-wd")} == {"m-wd-1", "m-wd-2"}
    assert {r["message_id"] for r in _subject_rows(defs, user="u-erase")} == {"m-erase-1", "m-erase-2"}

    _write(data_dir / "landing", SECOND, ERASURE)
    md = _tick(defs, (H11, H12))

    incremental = _rows(defs.resources["lake"])
    fresh = _fresh(tmp_path, monkeypatch, {"1": KEY_V1})
    assert incremental == _rows(fresh.resources["lake"])
    stitched = _subject_rows(defs, anon="anon-s")
    u_stitch = _pz("u-stitch")
    assert {r["message_id"] for r in stitched} >= {"m-anon-1", "m-anon-2", "m-anon-3"}
    assert all(r["consent_subject"] == u_stitch for r in stitched)
    assert {r["message_id"] for r in _subject_rows(defs, user="u-late")} >= {"m-late-1"}
    assert [r["consent_subject"] for r in _subject_rows(defs, anon="anon-of-u-late") if r["message_id"] == "m-late-anon"] == [_pz("u-late")]
    assert {r["message_id"] for r in _subject_rows(defs, user="u-wd")} == {"m-wd-1"}, "withdrawn at 11:00"
    assert _subject_rows(defs, user="u-erase") == [], "erased subject's rows are gone"
    assert "m-steady-3" in {r["message_id"] for r in _subject_rows(defs, user="u-steady")}

    # hour 10 was rebuilt although no raw data of hour 10 changed: patched (only the rows carrying a changed key
    # decided again: the stitched anonymous id, the late grant, the withdrawal, the erased user); 11 and 12 whole
    assert md["build_mode"] == "incremental"
    assert set(md["hours_built_list"]) == {H10, H11, H12}
    assert md["hours_patched_list"] == [H10]
    assert md["stale_hours_by_reason"]["privacy_inputs_changed"] >= 1


def test_a_tick_without_changes_builds_nothing_and_a_new_hour_only_itself(first_landing, data_dir):
    defs = first_landing
    md = _ok(materialize(defs, STATE))
    md = materializations(md)["consented/events_state"]
    assert md["hours_built"] == 0 and md["hours_deleted"] == 0
    # a new hour of a subject whose consent did not change: only that hour is built
    _write(data_dir / "landing", {12: {"a.jsonl": [_msg("m-steady-9", 12, 10, user="u-steady")]}}, [])
    md = _tick(defs, (H12, H12))
    assert md["hours_built_list"] == [H12]


def test_removed_raw_hour_deletes_the_consented_hour(first_landing):
    defs = first_landing
    lake = defs.resources["lake"]
    assert lake.exists("consented", "events", {"date": "2026-11-28", "hour": "11"})
    lake.delete_partition("raw", "events", {"date": "2026-11-28", "hour": "11"})
    md = materializations(_ok(materialize(defs, STATE)))["consented/events_state"]
    assert md["hours_deleted_list"] == [H11] and md["hours_built"] == 0
    assert not lake.exists("consented", "events", {"date": "2026-11-28", "hour": "11"})


def test_explicit_range_rebuilds_exactly_it_and_full_refresh_everything(first_landing, data_dir):
    defs = first_landing
    md = materializations(_ok(materialize(defs, "key:consented/events", (H11, H11))))
    assert "consented/events_state" not in md  # only the partitioned asset was selected
    state = defs.resources["lake"].read_table("consented", "events_state").to_pylist()
    assert {r["hour"] for r in state if r["record"] == "hour"} == {H10, H11}
    job = defs.resolve_implicit_global_asset_job_def()
    import dagster as dg

    with dg.DagsterInstance.ephemeral() as inst:
        result = job.execute_in_process(instance=inst, asset_selection=[dg.AssetKey(["consented", "events_state"])],
                                        run_config={"ops": {"consented_events": {"config": {"full_refresh": True}}}})
        md = materializations(result)["consented/events_state"]
        assert md["build_mode"] == "full_refresh" and set(md["hours_built_list"]) == {H10, H11}
        assert inst.get_materialized_partitions(dg.AssetKey(["consented", "events"])) == {H10, H11}


def test_range_leaves_stale_hours_outside_it_dirty_for_the_next_run(first_landing, data_dir, tmp_path, monkeypatch):
    """A range run applies the new privacy inputs to its own hours only; the other stale hours must still be
    rebuilt by the next incremental run (the state never claims an hour is up to date when it is not)."""
    defs = first_landing
    _write(data_dir / "landing", SECOND, ERASURE)
    _ok(materialize(defs, RAW, (H11, H12)))
    _ok(materialize(defs, PRIVACY))
    md = materializations(_ok(materialize(defs, STATE, (H12, H12))))["consented/events_state"]
    assert md["hours_built_list"] == [H12] and md["hours_marked_dirty"] == 2
    md = materializations(_ok(materialize(defs, STATE)))["consented/events_state"]
    assert set(md["hours_built_list"]) == {H10, H11}
    assert _rows(defs.resources["lake"]) == _rows(_fresh(tmp_path, monkeypatch, {"1": KEY_V1}).resources["lake"])


@pytest.mark.parametrize("with_rotation_job", [True, False])
def test_key_rotation_between_runs(first_landing, data_dir, tmp_path, monkeypatch, with_rotation_job):
    keys = {"1": KEY_V1, "2": secrets.token_hex(32)}
    _env(monkeypatch, data_dir, keys, active="2")
    rotated = defs_for_env()
    if with_rotation_job:
        _ok(materialize(rotated, "key:privacy/key_rotation_log"))
    _write(data_dir / "landing", SECOND, ERASURE)
    md = _tick(rotated, (H11, H12))
    if with_rotation_job:
        assert md["stale_hours_by_reason"].get("key_version_changed") is None, "the rotation job re-keyed the tier: no forced rebuild"
    else:
        assert md["stale_hours_by_reason"]["key_version_changed"] == 3 and set(md["hours_built_list"]) == {H10, H11, H12}
    rows = _rows(rotated.resources["lake"])
    assert rows and not any("'v1:" in v for r in rows for v in r)
    assert rows == _rows(_fresh(tmp_path, monkeypatch, keys, active="2").resources["lake"])


def test_on_s3_fingerprints_come_from_the_listing(s3_env, monkeypatch):
    """Landing and lake on the moto S3 server: a tick without changes builds nothing (size + LastModified are stable),
    an object re-delivered into an ingested hour rebuilds exactly that hour."""
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps({"1": KEY_V1}))
    client, bucket = s3_env["client"], s3_env["bucket"]

    def put(files):
        for hour, named in files.items():
            for name, msgs in named.items():
                client.put_object(Bucket=bucket, Key=f"landing/events/date=2026-11-28/hour={hour:02d}/{name}",
                                  Body="".join(json.dumps(m) + "\n" for m in msgs).encode())

    put(FIRST)
    defs = defs_for_env()
    assert defs.resources["lake"].is_s3
    assert _tick(defs, (H10, H11))["hours_built"] == 2
    assert materializations(_ok(materialize(defs, STATE)))["consented/events_state"]["hours_built"] == 0
    put({11: SECOND[11]})
    md = _tick(defs, (H11, H11))
    assert md["hours_built_list"] == [H11] and md["stale_hours_by_reason"]["raw_new_or_changed"] == 1
    assert "m-steady-3" in {r["message_id"] for r in _subject_rows(defs, user="u-steady")}


def test_a_run_without_partition_tags_does_not_skip_what_is_downstream(first_landing):
    """consented/events is skippable: a run that selects it and its downstream (features) without partition
    tags must still run the features (Dagster skips the steps downstream of an output never yielded)."""
    defs = first_landing
    result = _ok(materialize(defs, "key:consented/events or group:features"))
    md = materializations(result)
    assert "features/user_rfm" in md
    # without a partition range the step runs through its state (consented/events itself needs a range to be
    # selected): nothing was stale
    assert md["consented/events_state"]["hours_built"] == 0


def test_raw_hour_removed_by_raw_retention_keeps_its_consented_hour(first_landing, monkeypatch):
    """Raw lives 30 days, the consented tier 13 months: a raw hour the retention job removed (before the raw cutoff it
    recorded) leaves the state, and its consented hour stays (deleting it would cut the consented retention to the raw
    one). One gone for another reason is deleted."""
    from datetime import datetime, timezone

    import duckdb

    from personalization_assets.consented import state as cstate
    from personalization_assets.consented.assets import _register_privacy_views
    from personalization_assets.core.policies import get_policy

    defs = first_landing
    lake = defs.resources["lake"]
    lake.delete_partition("raw", "events", {"date": "2026-11-28", "hour": "10"})
    con = duckdb.connect()
    _register_privacy_views(con, lake)
    cstate.current_signatures(con)
    state = cstate.load_state(lake)
    kwargs = dict(policy=get_policy(), active_key_version="1", requested=None, full_refresh=False, valid_key=lambda pk: True)
    # the raw cutoff the retention run recorded decides, not the clock: the same lake, the same plan whenever it runs
    soon = cstate.plan(con, lake, state, raw_cutoff=datetime(2026, 11, 28, 10, 30, tzinfo=timezone.utc), **kwargs)
    assert soon.delete == [H10] and soon.retire == [], "not before the recorded cutoff: the raw hour was removed on purpose"
    assert cstate.plan(con, lake, state, raw_cutoff=None, **kwargs).delete == [H10]  # retention never ran
    later = cstate.plan(con, lake, state, raw_cutoff=datetime(2026, 11, 28, 11, tzinfo=timezone.utc), **kwargs)
    assert later.delete == [] and later.retire == [H10] and later.build == []
    # by default the plan reads the recorded cutoff itself, AFTER listing raw: read before, a retention run in between
    # removed raw hours the plan then saw gone and not before the cutoff it had read (deleted instead of retired)
    calls: list[str] = []
    listing, cutoffs = cstate.raw_fingerprints, cstate.read_cutoffs
    monkeypatch.setattr(cstate, "raw_fingerprints", lambda lake: calls.append("list raw") or listing(lake))
    monkeypatch.setattr(cstate, "read_cutoffs", lambda lake: calls.append("read cutoff") or cutoffs(lake))
    assert cstate.plan(con, lake, state, **kwargs).delete == [H10] and calls == ["list raw", "read cutoff"]
    after = cstate.new_state(con, state, later, pa.table({"hour": pa.array([], pa.string()), "key": pa.array([], pa.string())}), get_policy())
    assert H10 not in {r["hour"] for r in after.to_pylist() if r["record"] in ("hour", "key")}
    assert H11 in {r["hour"] for r in after.to_pylist() if r["record"] == "key"}


def test_signatures_in_key_buckets_equal_one_pass(first_landing):
    """current_signatures splits its keys into hash buckets when consent_state is large (its ordered per-subject
    aggregates keep their state in memory, which ran out of 2 GB at 100M events): together the buckets hold exactly
    the rows of one pass."""
    import duckdb

    from personalization_assets.consented import state as cstate
    from personalization_assets.consented.assets import _register_privacy_views

    con = duckdb.connect()
    _register_privacy_views(con, first_landing.resources["lake"])
    rows = con.execute("select count(*) from consent_state").fetchall()[0][0]
    assert rows >= 5

    def signatures(bucket_rows):
        cstate.current_signatures(con, bucket_rows=bucket_rows)
        return sorted(con.sql("select * from __sig_new").arrow().read_all().to_pylist(), key=lambda r: r["key"])

    one = signatures(rows)  # one bucket
    assert len({r["key"] for r in one}) == len(one) and any(r["intervals"] for r in one) and any(r["resolved_subject"] for r in one)
    assert signatures(max(1, rows // 5)) == one  # five buckets or more


def test_a_decision_that_reasserts_the_status_in_force_rewrites_no_old_hour(first_landing, data_dir):
    """A subject's rows depend on the purposes granted at each event's time, not on how the ledger split the intervals:
    a re-grant of what is already granted (and a repeated denial) splits an interval in privacy/consent_state but
    changes no row, so no hour of the subject is rewritten; a real change (a withdrawal) still is."""
    defs = first_landing
    lake = defs.resources["lake"]
    regrant = {12: {"a.jsonl": [_grant("g-steady-again", 12, 0, "u-steady"), _msg("m-steady-5", 12, 10, user="u-steady"),
                                _msg("m-wd-3", 12, 20, user="u-wd", prefs=None)]}}
    _write(data_dir / "landing", regrant, [])
    state_before = lake.read_table("privacy", "consent_state")
    md = _tick(defs, (H12, H12))
    state_after = lake.read_table("privacy", "consent_state")
    u_steady = _pz("u-steady")
    count = lambda t: sum(1 for s in t["consent_subject"].to_pylist() if s == u_steady)  # noqa: E731
    assert count(state_after) > count(state_before), "the re-grant did split u-steady's interval"
    assert md["hours_built_list"] == [H12], md["stale_hours_by_reason"]
    incremental = _rows(lake)
    _ok(materialize(defs, STATE, (H10, H12)))  # every hour rebuilt from scratch
    assert _rows(lake) == incremental
    # a real change of the status in force still rewrites the old hours holding the subject
    _write(data_dir / "landing", {12: {"b.jsonl": [_grant("w-steady", 10, 30, "u-steady", prefs=NONE,
                                                          received="2026-11-28T12:30:00.000Z")]}}, [])
    md = _tick(defs, (H12, H12))
    assert {H10, H11} <= set(md["hours_built_list"])
    incremental = _rows(lake)
    _ok(materialize(defs, STATE, (H10, H12)))
    assert _rows(lake) == incremental


# ------------------------------------------------------------------------------------------------
# A consent change reaches only the rows at or after its first differing instant (CHANGED_HOURS_SQL): an hour whose
# rows of the subject all precede it is not rebuilt, an hour holding a LATER row is, whatever its landing hour.

WITHDRAW_1215 = {12: {"w.jsonl": [_grant("w-steady", 12, 15, "u-steady", prefs=NONE), _msg("m-steady-5", 12, 20, user="u-steady")]}}
# a row of u-steady received at 11:30 (landing hour 11) whose event time is 12:30: a clock ahead by an hour, within
# PERSONALIZATION_MAX_FUTURE_MINUTES. It was made by 11:30 at the latest (it had been received): consent is looked up
# at min(timestamp, receivedAt), as the ledger decides a consent event's time
SKEWED = {11: {"skew.jsonl": [_msg("m-steady-skew", 12, 30, user="u-steady", received="2026-11-28T11:30:00.000Z")]}}
# a withdrawal made at 11:20, received late (12:05, landing hour 12): before the skewed row was made
WITHDRAW_1120_LATE = {12: {"w-late.jsonl": [_grant("w-steady-late", 11, 20, "u-steady", prefs=NONE,
                                                   received="2026-11-28T12:05:00.000Z")]}}


def _fresh_over(tmp_path: Path, monkeypatch, *landings: dict) -> list[tuple]:
    d = tmp_path / "fresh-over"
    _env(monkeypatch, d, {"1": KEY_V1})
    for files in landings:
        _write(d / "landing", files, [])
    defs = defs_for_env()
    _ok(materialize(defs, RAW, (H10, H12)))
    _ok(materialize(defs, PRIVACY))
    _ok(materialize(defs, STATE, (H10, H12)))
    return _rows(defs.resources["lake"])


def test_a_consent_change_rebuilds_no_hour_whose_rows_all_precede_it(first_landing, data_dir, tmp_path, monkeypatch):
    """u-steady's rows of hours 10 and 11 are older than the 12:15 withdrawal: only hour 12 is built (the
    previous whole-subject signature rebuilt all three), and the rows equal a rebuild from scratch."""
    defs = first_landing
    _write(data_dir / "landing", WITHDRAW_1215, [])
    md = _tick(defs, (H12, H12))
    assert md["hours_built_list"] == [H12]
    assert {r["message_id"] for r in _subject_rows(defs, user="u-steady")} == {"m-steady-1", "m-steady-2"}
    assert _rows(defs.resources["lake"]) == _fresh_over(tmp_path, monkeypatch, FIRST, WITHDRAW_1215)


def test_a_consent_change_rebuilds_an_old_landing_hour_holding_a_later_row(data_dir, tmp_path, monkeypatch):
    """Rows are filed by receivedAt, consent applies at the event's time, never later than its receivedAt. The hour-11
    row timed 12:30 (a clock an hour ahead) was received at 11:30: the 12:15 withdrawal comes after it, so hour 11 stays
    (looked up at 12:30, the row used to leave: a device clock decided). A withdrawal made at 11:20 and received late,
    in hour 12, does reach it: hour 11 is rebuilt and the row leaves. Each time the rows equal a build from scratch."""
    _env(monkeypatch, data_dir, {"1": KEY_V1})
    _write(data_dir / "landing", FIRST, [])
    _write(data_dir / "landing", SKEWED, [])
    defs = defs_for_env()
    _tick(defs, (H10, H11))
    assert "m-steady-skew" in {r["message_id"] for r in _subject_rows(defs, user="u-steady")}
    _write(data_dir / "landing", WITHDRAW_1215, [])
    md = _tick(defs, (H12, H12))
    assert md["hours_built_list"] == [H12]
    assert "m-steady-skew" in {r["message_id"] for r in _subject_rows(defs, user="u-steady")}
    assert _rows(defs.resources["lake"]) == _fresh_over(tmp_path / "a", monkeypatch, FIRST, SKEWED, WITHDRAW_1215)
    _env(monkeypatch, data_dir, {"1": KEY_V1})  # back to this lake (the fresh build used its own)
    defs = defs_for_env()
    _write(data_dir / "landing", WITHDRAW_1120_LATE, [])
    md = _tick(defs, (H12, H12))
    assert {H11, H12} <= set(md["hours_built_list"])
    assert "m-steady-skew" not in {r["message_id"] for r in _subject_rows(defs, user="u-steady")}
    assert _rows(defs.resources["lake"]) == _fresh_over(tmp_path / "b", monkeypatch, FIRST, SKEWED, WITHDRAW_1215, WITHDRAW_1120_LATE)


def test_a_state_without_intervals_or_event_times_rebuilds_every_hour_of_a_changed_subject(first_landing, data_dir, tmp_path, monkeypatch):
    """A state written before the intervals and event times were kept (those columns absent) knows no change
    point: a consent change reaches every hour holding the subject, as before."""
    defs = first_landing
    lake = defs.resources["lake"]
    old = lake.read_table("consented", "events_state")
    lake.write_table("consented", "events_state", old.drop_columns(["base_digest", "intervals", "max_ts"]))
    _write(data_dir / "landing", WITHDRAW_1215, [])
    md = _tick(defs, (H12, H12))
    assert md["hours_built_list"] == [H10, H11, H12]
    assert _rows(lake) == _fresh_over(tmp_path, monkeypatch, FIRST, WITHDRAW_1215)


def test_kept_rows_come_back_hour_by_hour_in_raw_order():
    """The consented step writes each hour from one ordered stream of the batch's kept rows: each requested hour
    gets exactly its rows in raw order, also across stream batches; an hour without kept rows gets an empty table;
    rows of an hour not requested are not handed to another hour; hours out of order are refused."""
    from datetime import datetime, timedelta, timezone

    import duckdb

    from personalization_assets.consented.transform import CONSENTED_EVENT_SCHEMA, kept_rows_by_hour

    con = duckdb.connect()
    con.execute("set timezone = 'UTC'")
    h0 = datetime(2026, 11, 28, 10, tzinfo=timezone.utc)
    hours = [h0 + timedelta(hours=i) for i in range(5)]
    # rows of hours 0, 1, 3 and 4 (hour 2 kept nothing), interleaved, with __row out of order within an hour
    rows = [(h, r) for r, h in enumerate([0, 1, 3, 0, 4, 1, 0, 3, 4, 4, 0, 1])]
    rows.reverse()
    cols = {name: pa.nulls(len(rows), CONSENTED_EVENT_SCHEMA.field(name).type) for name in CONSENTED_EVENT_SCHEMA.names}
    cols["message_id"] = pa.array([f"m{r}" for _, r in rows])
    cols["landing_hour"] = pa.array([hours[h] for h, _ in rows], CONSENTED_EVENT_SCHEMA.field("landing_hour").type)
    table = pa.table({**cols, "__row": pa.array([r for _, r in rows], pa.int64())})
    con.register("kept_arrow", table)
    con.execute("create temp table kept as select * from kept_arrow")

    expected = {h: [f"m{r}" for hh, r in sorted(rows, key=lambda x: x[1]) if hh == h] for h in range(5)}
    for batch_rows in (1, 2, 100):
        got = list(kept_rows_by_hour(con, "kept", hours, batch_rows=batch_rows))
        assert [t["message_id"].to_pylist() for t in got] == [expected[h] for h in range(5)], batch_rows
        assert all(t.schema == CONSENTED_EVENT_SCHEMA for t in got)
        con.execute("select 1").fetchall()  # the stream was run to its end: the connection is free
    # hour 3 not requested: its rows go nowhere (the step's key index refuses them), hour 4 still gets its own
    got = list(kept_rows_by_hour(con, "kept", [hours[0], hours[4]]))
    assert [t["message_id"].to_pylist() for t in got] == [expected[0], expected[4]]
    with pytest.raises(ValueError, match="ascending"):
        list(kept_rows_by_hour(con, "kept", [hours[1], hours[0]]))


def test_a_failed_hour_write_fails_the_step_and_the_next_run_completes_it(first_landing, data_dir, tmp_path, monkeypatch):
    """Hours are encoded and written in a writer thread while the step logs the previous hour: a write that fails
    there must fail the step (a thread's exception is easily lost: the state would then be committed with the hour
    recorded as built), and the next run must redo what the failed one left."""
    from personalization_assets.core.partitions import partition_dict
    from personalization_assets.core.storage import LakeStorage

    defs = first_landing
    _write(data_dir / "landing", SECOND, ERASURE)
    _ok(materialize(defs, RAW, (H11, H12)))
    _ok(materialize(defs, PRIVACY))
    real = LakeStorage.write_table

    def failing(self, layer, table, data, partition=None, schema=None):
        if (layer, table) == ("consented", "events") and dict(partition or {}) == partition_dict(H11):
            raise OSError("No space left on device")
        return real(self, layer, table, data, partition=partition, schema=schema)

    with monkeypatch.context() as m:
        m.setattr(LakeStorage, "write_table", failing)
        failed = materialize(defs, STATE, raise_on_error=False)
    assert not failed.success
    assert "No space left on device" in str(failed.failure_data_for_node("consented_events").error)
    md = materializations(_ok(materialize(defs, STATE)))["consented/events_state"]
    assert H11 in md["hours_built_list"]
    assert _rows(defs.resources["lake"]) == _rows(_fresh(tmp_path, monkeypatch, {"1": KEY_V1}).resources["lake"])
