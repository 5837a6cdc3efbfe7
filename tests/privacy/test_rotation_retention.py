"""Key rotation keeps joins; retention deletes old partitions and records what it removed."""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa


from personalization_assets.cli import landing_partition_keys
from personalization_assets.core.retention import read_cutoffs
from tests.helpers import PIPELINE, check_results, defs_for_env, generate, held_by_another_thread, materialize, materializations


def test_rotation_rekeys_curated_tier_and_new_data_still_joins(data_dir, monkeypatch):
    generate(data_dir / "landing", users=120, events=6000, days=1, bad_fraction=0.0)
    defs = defs_for_env()
    keys = landing_partition_keys(defs, None)
    assert check_results(materialize(defs, PIPELINE, (keys[0], keys[-1]))).get("consented/events:pandera_ConsentedEvent")
    lake = defs.resources["lake"]
    before = lake.read_table("privacy", "identity_links")
    assert all(v.startswith("v1:") for v in before["identifier"].to_pylist())

    v1 = json.loads((data_dir / "dev_pseudonym_keys.json").read_text())["1"]
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps({"1": v1, "2": secrets.token_hex(32)}))
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION", "2")
    rotated_defs = defs_for_env()
    result = materialize(rotated_defs, "key:privacy/key_rotation_log")
    md = materializations(result)["privacy/key_rotation_log"]
    assert md["to_version"] == "2" and md["values_rekeyed"] > 0
    rotated = lake.read_table("privacy", "identity_links")
    assert all(v.startswith("v2:") for v in rotated["identifier"].to_pylist())
    old_partition = lake.read_table("consented", "events", {"date": keys[-1][:10], "hour": keys[-1][11:13]})
    assert all(v.startswith("v2:") for v in old_partition["consent_subject"].to_pylist())

    # new processing under key v2 produces exactly the rotated pseudonyms: joins are kept
    result = materialize(rotated_defs, "key:privacy/identity_links or key:privacy/consent_ledger or key:privacy/consent_state or key:consented/events",
                         (keys[-1], keys[-1]))
    assert all(check_results(result).values())
    fresh = lake.read_table("privacy", "identity_links")
    assert sorted(fresh["identifier"].to_pylist()) == sorted(rotated["identifier"].to_pylist())
    reprocessed = lake.read_table("consented", "events", {"date": keys[-1][:10], "hour": keys[-1][11:13]})
    assert reprocessed.num_rows == old_partition.num_rows
    assert sorted(reprocessed["consent_subject"].to_pylist()) == sorted(old_partition["consent_subject"].to_pylist())
    # the immutable ledger still holds v1 values and is read through the chain
    ledger = [r for seg in lake.partitions("privacy", "consent_ledger") for r in lake.read_table("privacy", "consent_ledger", seg).to_pylist()]
    assert any(r["identifier_pseudonym"].startswith("v1:") for r in ledger)
    state = lake.read_table("privacy", "consent_state")
    assert all(v.startswith("v2:") for v in state["consent_subject"].to_pylist())


def test_retention_deletes_expired_partitions_and_logs_them(data_dir, monkeypatch):
    old_end = (datetime.now(timezone.utc) - timedelta(days=45)).date().isoformat()
    recent_end = datetime.now(timezone.utc).date().isoformat()
    generate(data_dir / "landing" / "old", users=50, events=1500, days=1, bad_fraction=0.0, end=old_end)
    generate(data_dir / "landing" / "new", users=50, events=1500, days=1, bad_fraction=0.0, end=recent_end)
    # merge the two zones' event folders into the real landing layout
    import shutil

    for zone in ("old", "new"):
        for f in (data_dir / "landing" / zone / "events").rglob("*.jsonl.gz"):
            dest = data_dir / "landing" / f.relative_to(data_dir / "landing" / zone)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
        shutil.rmtree(data_dir / "landing" / zone)
    defs = defs_for_env()
    keys = landing_partition_keys(defs, None)
    old_keys = [k for k in keys if k[:10] <= old_end]
    new_keys = [k for k in keys if k[:10] > old_end]
    materialize(defs, "key:raw/events", (old_keys[0], old_keys[-1]))
    materialize(defs, "key:raw/events", (new_keys[0], new_keys[-1]))
    lake = defs.resources["lake"]
    before = lake.partitions("raw", "events")
    # an expired consented hour (kept 13 months; a copy of a raw hour: retention reads no row)
    expired = {"date": (datetime.now(timezone.utc) - timedelta(days=800)).date().isoformat(), "hour": "05"}
    lake.write_table("consented", "events", lake.read_table("raw", "events", before[0]), partition=expired)
    # an identity partial past the privacy tier's 6 years: a key rotation rewrote it (S3's age of the object restarted,
    # so S3 alone would keep it for ever); the job deletes it by its hour
    from personalization_assets.privacy.identity_partials import PARTIAL_SCHEMA

    ancient = {"date": (datetime.now(timezone.utc) - timedelta(days=2200)).date().isoformat(), "hour": "07"}
    lake.write_table("privacy", "identity_partials", pa.Table.from_pylist(
        [{"row_kind": "link", "identifier": "v1:" + "c" * 64, "identifier_kind": "anonymous", "user_pseudonym": "v1:" + "d" * 64}],
        schema=PARTIAL_SCHEMA), partition=ancient)
    # retention holds the lock the builder of each table holds (the ingestion's for raw hours) and each consented hour's
    # own: an erasure or a build rewriting a partition while retention deleted it put the expired partition back
    from personalization_assets.core.hash_chain import partition_writer_lock, table_writer_lock
    from personalization_assets.privacy import erasure, operations
    from personalization_assets.raw.assets import INGESTION_LOCK

    monkeypatch.setattr(operations, "BUILDER_LOCK_TIMEOUT", 2.0)
    monkeypatch.setattr(erasure, "PARTITION_LOCK_TIMEOUT", 2.0)
    for held, name in ((lambda: table_writer_lock(lake, INGESTION_LOCK), "raw/landing_manifest"),
                       (lambda: partition_writer_lock(lake, "consented", "events", expired),
                        f"_partition_locks/events/date={expired['date']}/hour={expired['hour']}")):
        with held_by_another_thread(held):
            failed = materialize(defs, "key:privacy/retention_log", raise_on_error=False)
        assert not failed.success, f"retention deleted partitions while another writer held {name}"
        assert name in "".join(str(e.event_specific_data.error) for e in failed.all_events if e.is_step_failure)
    result = materialize(defs, "key:privacy/retention_log")
    assert not lake.exists("consented", "events", expired)
    after = lake.partitions("raw", "events")
    removed = [p for p in before if p not in after]
    cutoff = (datetime.now(timezone.utc) - timedelta(days=30)).strftime("%Y-%m-%d")
    assert removed and all(p["date"] < cutoff for p in removed)
    assert after and all(p["date"] >= cutoff for p in after)
    md = materializations(result)["privacy/retention_log"]
    log = [r for seg in lake.partitions("privacy", "retention_log") for r in lake.read_table("privacy", "retention_log", seg).to_pylist()]
    # the run that failed on the consented hour's lock had deleted the raw hours: each deletion is logged, once
    logged = [r["partition"] for r in log if r["table"] == "raw/events"]
    assert sorted(logged) == sorted(f"{p['date']}-{p['hour']}:00" for p in removed)
    assert not lake.exists("privacy", "identity_partials", ancient)
    assert md["partitions_removed"] == 2 and [r["table"] for r in log[-2:]] == ["consented/events", "privacy/identity_partials"]
    assert log[-1]["retention_days"] == 2190
    assert {r["table"] for r in log} >= {"raw/events", "raw/events_quarantine"} and all(r["retention_days"] == 30 for r in log if r["table"] == "raw/events")
    assert sum(r["rows_removed"] for r in log if r["table"] == "raw/events") > 0

    # a late object for a removed hour, and a full refresh over a landing zone that still holds the old objects (a local
    # one has no lifecycle rule): neither brings a removed raw hour back; the messages are quarantined as past_retention
    # without their bytes (filed under their object's hour). Past the cutoff the
    # retention run recorded, not the clock's: before retention ran, the old hours were ingested above
    assert read_cutoffs(lake)["raw"] > datetime.strptime(f"{removed[0]['date']}", "%Y-%m-%d").replace(tzinfo=timezone.utc)
    late_hour = sorted(removed, key=lambda p: (p["date"], p["hour"]))[-1]
    late = data_dir / "landing" / "events" / f"date={late_hour['date']}" / f"hour={late_hour['hour']}" / "late.jsonl"
    late.write_text(json.dumps({"messageId": "late-1", "type": "track", "event": "Content Viewed", "anonymousId": "anon-late",
                                "timestamp": f"{late_hour['date']}T{late_hour['hour']}:10:00Z",
                                "receivedAt": f"{late_hour['date']}T{late_hour['hour']}:10:01Z"}) + "\n")
    materialize(defs, "key:raw/events")
    materialize(defs, "key:raw/events", run_config={"ops": {"raw_events": {"config": {"full_refresh": True}}}})
    assert lake.partitions("raw", "events") == after, "a removed raw hour came back"
    quarantined = lake.read_table("raw", "events_quarantine", late_hour).to_pylist()
    assert {r["reason"] for r in quarantined} == {"past_retention"} and any(r["line_no"] == 1 and "late.jsonl" in r["source_file"]
                                                                          for r in quarantined)
    # recorded (nothing unaccounted), without the bytes retention removed
    assert all(r["original_bytes"] is None and r["original_text"] is None for r in quarantined)


def test_identity_links_outlive_raw_retention_and_go_with_a_raw_hour_the_landing_no_longer_holds(data_dir, monkeypatch):
    """An anonymous visitor's consent decision is attributed to the user they log in as through the identity link the
    login made. The links were folded from per-raw-hour partials, each dropped with its raw hour: a month later retention
    removed the login's hour, the link went, and the user fell back to the jurisdiction's default although the ledger
    still held the visitor's opt-out. A partial now outlives raw retention; the partial of an hour gone for another
    reason (the landing no longer holds it, then a full refresh) still goes."""
    import gzip
    import os

    from personalization_assets.core.pseudonymize import Pseudonymizer
    from tests.raw.hostile import line, msg

    now = datetime.now(timezone.utc)
    old, recent = now - timedelta(days=45), now - timedelta(days=1)

    def obj(when: datetime, name: str, message: dict) -> Path:
        stamp = when.strftime("%Y-%m-%dT%H:05:00.000Z")
        path = data_dir / "landing" / "events" / f"date={when:%Y-%m-%d}" / f"hour={when:%H}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(line({**message, "timestamp": stamp, "sentAt": stamp, "receivedAt": stamp}), mtime=0))
        return path

    obj(old, "login.jsonl.gz", msg(1, type="identify", event=None, anonymousId="anon-before-login", userId="user-u"))
    later = obj(recent, "visit.jsonl.gz", msg(2, anonymousId="anon-later", userId="user-u"))
    monkeypatch.setenv("PERSONALIZATION_EVENTS_START", (old - timedelta(days=1)).date().isoformat())
    defs = defs_for_env()
    lake, pz = defs.resources["lake"], defs.resources["pseudonymizer"]

    def linked() -> set[str]:
        links = lake.read_table("privacy", "identity_links")
        user = pz.pseudonymize_values(["user-u"], "id")[0]
        anons = {a: pz.pseudonymize_values([a], "id")[0] for a in ("anon-before-login", "anon-later")}
        pairs = set(zip(links["identifier"].to_pylist(), links["consent_subject"].to_pylist()))
        return {a for a, p in anons.items() if (p, user) in pairs}

    build = "key:raw/events or key:privacy/identity_links"
    materialize(defs, build)
    assert linked() == {"anon-before-login", "anon-later"}
    materialize(defs, "key:privacy/retention_log")  # the login's raw hour is 45 days old: removed
    assert not lake.exists("raw", "events", {"date": f"{old:%Y-%m-%d}", "hour": f"{old:%H}"})
    materialize(defs, build)
    assert linked() == {"anon-before-login", "anon-later"}, "the login's link went with its raw hour"
    materialize(defs, build, run_config={"ops": {"privacy__identity_links": {"config": {"full_refresh": True}}}})
    assert linked() == {"anon-before-login", "anon-later"}
    # a new active key without the rotation job: the build re-keys the stored partials it does not recompute, the kept
    # one included (no raw hour recomputes it; left under the old key, its link matched nothing)
    v1 = json.loads((data_dir / "dev_pseudonym_keys.json").read_text())["1"]
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps({"1": v1, "2": secrets.token_hex(32)}))
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION", "2")
    defs = defs_for_env()
    lake = defs.resources["lake"]
    pz = Pseudonymizer(keys_json=os.environ["PERSONALIZATION_PSEUDONYM_KEYS"], active_version="2")  # the resource holds EnvVars
    materialize(defs, build)
    assert linked() == {"anon-before-login", "anon-later"}, "the kept partial was left under the old key"
    assert all(v.startswith("v2:") for v in lake.read_table("privacy", "identity_links")["identifier"].to_pylist())
    later.unlink()  # the recent hour's object is withdrawn from the landing zone, and raw is rebuilt
    materialize(defs, build, run_config={"ops": {"raw_events": {"config": {"full_refresh": True}}}})
    assert linked() == {"anon-before-login"}, "a raw hour gone for another reason than retention took its links along"


def test_two_retention_runs_recording_cutoffs_at_once_keep_both(tmp_path):
    """`record_cutoffs` reads the recorded cutoffs, merges and writes them back. Two runs at once (a manual run beside
    the schedule) each wrote back what they had read: the second dropped a cutoff only the first recorded (a raw hour
    then came back with a late object). It now holds the table's writer lock for the whole read-modify-write."""
    from personalization_assets.core.hash_chain import table_writer_lock
    from personalization_assets.core.retention import LAYER, TABLE, record_cutoffs
    from personalization_assets.core.storage import LakeStorage
    from tests.helpers import build_waits_behind

    lake = LakeStorage(url=str(tmp_path / "lake"), lock_dir=str(tmp_path / "locks"))
    t = datetime(2026, 11, 1, tzinfo=timezone.utc)
    record_cutoffs(lake, {"raw": t})
    merged, _ = build_waits_behind(table_writer_lock(lake, {"layer": LAYER, "name": TABLE}),
                                   lambda: record_cutoffs(lake, {"consented": t - timedelta(days=365)}),
                                   written=lambda: "consented" in read_cutoffs(lake), wait_s=2)
    assert set(merged) == set(read_cutoffs(lake)) == {"raw", "consented"}
    assert record_cutoffs(lake, {"raw": t - timedelta(days=1)})["raw"] == t  # never moves back
