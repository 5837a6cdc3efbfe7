"""privacy/identity_links and privacy/consent_ledger read only the raw hours that changed since they last ran.

A run lists raw/events (metadata only), reads the hours whose file is new or different from what the step recorded
(privacy/<step>_consumed), and must give exactly what a scan of every hour gives:

* identity_links: equal to `build_identity_links` over all raw events, after hours are added, one is rewritten, one
  is deleted, and the active key version changes (with and without the rotation job);
* consent_ledger: the same raw landing decided over three runs, in one run, and over three full-scan runs appends
  the same set of decisions (GPC's "first signal" and `withdrawn` labelling included).

Real assets on a real (local) lake; a real S3 API (moto) for the fingerprints of S3 objects.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from personalization_assets.privacy.assets import RAW_CRM_SCHEMA, RAW_EVENT_SCHEMA
from personalization_assets.privacy.identity import (
    build_identity_links,
    jurisdiction_case_sql,
)
from personalization_assets.core.policies import get_policy
from tests.helpers import defs_for_env, generate, materializations, materialize

RAW = "key:raw/events or key:raw/crm_profiles or key:raw/privacy_requests"
IDENTITY = "key:privacy/identity_links"
LEDGER = "key:privacy/consent_ledger"


def _keys_env(monkeypatch, keys: dict[str, str], active: str) -> None:
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps(keys))
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION", active)


def _run(defs, selection: str, full_refresh: bool = False) -> dict:
    """Materialize `selection` (no partitions); `full_refresh` sets the assets' run config. Returns its metadata."""
    keys = dg.AssetSelection.from_string(selection).resolve(defs.resolve_asset_graph())
    config = {"ops": {k.to_python_identifier(): {"config": {"full_refresh": True}} for k in keys}} if full_refresh else None
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, asset_selection=list(keys), run_config=config)
    return materializations(result)


def _raw_landing(data_dir: Path, monkeypatch, days=2, events=8000, users=150) -> tuple[dg.Definitions, list[str], Path]:
    """Materialize raw for a generated landing, then move every raw/events hour aside (returned folder, hour paths)."""
    _keys_env(monkeypatch, {"1": secrets.token_hex(32)}, "1")
    generate(data_dir / "landing", users=users, events=events, days=days, bad_fraction=0.0)
    defs = defs_for_env()
    materialize(defs, RAW)  # incremental ingestion: every landing object is new
    lake = defs.resources["lake"]
    hours = sorted(f"date={p['date']}/hour={p['hour']}" for p in lake.partitions("raw", "events"))
    held = data_dir.parent / "held_raw_events"
    shutil.move(str(data_dir / "lake" / "raw" / "events"), held)
    return defs, hours, held


def _bring(held: Path, lake_dir: Path, hours: list[str], copy=False) -> None:
    for h in hours:
        dst = lake_dir / "raw" / "events" / h
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if copy else shutil.move)(str(held / h), str(dst))


def _reference_identity(defs) -> pa.Table:
    """identity_links as a from-scratch build over every raw event gives it (the pre-incremental definition)."""
    from personalization_assets.core.pseudonymize import Pseudonymizer

    lake = defs.resources["lake"]
    pz = Pseudonymizer(keys_json=os.environ["PERSONALIZATION_PSEUDONYM_KEYS"], active_version=os.environ["PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION"])
    con = duckdb.connect()
    lake.register(con, "raw_events", "raw", "events", empty_schema=RAW_EVENT_SCHEMA)
    lake.register(con, "raw_crm", "raw", "crm_profiles", empty_schema=RAW_CRM_SCHEMA)
    identity, links = build_identity_links(con, pz, jurisdiction_case_sql(get_policy()))
    con.register("identity_t", identity)
    con.register("links_t", links)
    return con.sql(
        """select i.*, coalesce(l.users, []) as linked_user_pseudonyms
           from identity_t i left join (select identifier, identifier_kind, list(user_pseudonym order by user_pseudonym) as users
                                        from links_t group by 1, 2) l using (identifier, identifier_kind)
           order by identifier_kind, identifier"""
    ).arrow().read_all()


def _assert_identity_exact(defs) -> pa.Table:
    got = defs.resources["lake"].read_table("privacy", "identity_links")
    want = _reference_identity(defs)
    assert got.num_rows == want.num_rows > 0
    order = [("identifier_kind", "ascending"), ("identifier", "ascending")]
    got, want = got.sort_by(order), want.sort_by(order)
    for name in want.column_names:
        assert got[name].to_pylist() == want[name].to_pylist(), name
    assert got.schema.names == want.schema.names
    return got


def _partials(defs) -> set[str]:
    return set(defs.resources["lake"].partition_fingerprints("privacy", "identity_partials"))


def _rewrite_hour(lake, hour: str) -> None:
    """Replace one raw hour as raw ingestion would for a replaced object: fewer rows, other locations, a new link."""
    part = dict(p.split("=", 1) for p in hour.split("/"))
    t = lake.read_table("raw", "events", part)
    t = t.slice(0, t.num_rows // 2)
    n = t.num_rows
    country = pa.array(["DE" if i % 3 == 0 else c for i, c in enumerate(t["context_country"].to_pylist())], pa.string())
    region = pa.array([None if i % 3 == 0 else r for i, r in enumerate(t["context_region"].to_pylist())], pa.string())
    t = t.set_column(t.schema.get_field_index("context_country"), "context_country", country)
    t = t.set_column(t.schema.get_field_index("context_region"), "context_region", region)
    # one anonymous id now also seen with a second user: it becomes ambiguous (linked_users 2, not merged)
    users = [u for u in t["user_id"].to_pylist() if u]
    anon = t["anonymous_id"].to_pylist()
    uid = t["user_id"].to_pylist()
    first = next(i for i in range(n) if uid[i] and anon[i])
    other = next(u for u in users if u != uid[first])
    t = t.set_column(t.schema.get_field_index("user_id"), "user_id", pa.array(uid[:-1] + [other], pa.string()))
    t = t.set_column(t.schema.get_field_index("anonymous_id"), "anonymous_id", pa.array(anon[:-1] + [anon[first]], pa.string()))
    lake.write_table("raw", "events", t.cast(lake.read_table("raw", "events", part).schema), partition=part)


def test_identity_links_folds_changed_hours_and_equals_a_full_build(data_dir, monkeypatch):
    defs, hours, held = _raw_landing(data_dir, monkeypatch)
    lake = defs.resources["lake"]
    first, rest = hours[: len(hours) // 2], hours[len(hours) // 2 :]

    _bring(held, data_dir / "lake", first)
    md = _run(defs, IDENTITY)["privacy/identity_links"]
    assert md["full_refresh"] is True and md["raw_hours_read"] == len(first)  # nothing consumed yet
    _assert_identity_exact(defs)
    assert _partials(defs) == set(first)

    _bring(held, data_dir / "lake", rest)
    md = _run(defs, IDENTITY)["privacy/identity_links"]
    assert md["full_refresh"] is False and md["raw_hours_read"] == len(rest) and md["raw_hours"] == len(hours)
    _assert_identity_exact(defs)

    md = _run(defs, IDENTITY)["privacy/identity_links"]  # nothing changed: nothing read
    assert md["raw_hours_read"] == 0 and md["raw_rows_read"] == 0
    before = _assert_identity_exact(defs)

    # a rewritten hour (a replaced landing object): only it is read again, and the result follows the new content
    rewritten = hours[len(hours) // 2]
    _rewrite_hour(lake, rewritten)
    md = _run(defs, IDENTITY)["privacy/identity_links"]
    assert md["raw_hours_read"] == 1
    after = _assert_identity_exact(defs)
    assert after["jurisdiction"].to_pylist() != before["jurisdiction"].to_pylist() or after.num_rows != before.num_rows
    assert pc.max(after["linked_users"]).as_py() >= 2

    # a deleted hour (retention, an erasure emptying it): its partial goes, and what only it contributed goes too
    deleted = hours[0]
    lake.delete_partition("raw", "events", dict(p.split("=", 1) for p in deleted.split("/")))
    md = _run(defs, IDENTITY)["privacy/identity_links"]
    assert md["raw_hours_read"] == 0 and md["partials_deleted"] == 1
    assert deleted not in _partials(defs)
    _assert_identity_exact(defs)

    # the active key changes without the rotation job: stored partials are re-keyed, no raw hour is read again
    v1 = json.loads(os.environ["PERSONALIZATION_PSEUDONYM_KEYS"])["1"]
    v2, v3 = secrets.token_hex(32), secrets.token_hex(32)
    _keys_env(monkeypatch, {"1": v1, "2": v2}, "2")
    defs = defs_for_env()
    md = _run(defs, IDENTITY)["privacy/identity_links"]
    assert md["key_version"] == "2" and md["partials_rekeyed"] > 0 and md["raw_hours_read"] == 0
    got = _assert_identity_exact(defs)
    assert all(v.startswith("v2:") for v in got["identifier"].to_pylist() if v)

    # the rotation job re-keys the partials with the privacy tier; a new hour after it joins them
    _keys_env(monkeypatch, {"1": v1, "2": v2, "3": v3}, "3")
    defs = defs_for_env()
    assert materializations(materialize(defs, "key:privacy/key_rotation_log"))["privacy/key_rotation_log"]["to_version"] == "3"
    lake = defs.resources["lake"]
    assert all(v.startswith("v3:") for p in lake.partitions("privacy", "identity_partials")
               for v in lake.read_table("privacy", "identity_partials", p)["identifier"].to_pylist() if v)
    shutil.move(str(data_dir / "lake" / "raw" / "events" / hours[-1]), data_dir.parent / "last_hour")
    _run(defs, IDENTITY)
    shutil.move(str(data_dir.parent / "last_hour"), str(data_dir / "lake" / "raw" / "events" / hours[-1]))
    md = _run(defs, IDENTITY)["privacy/identity_links"]
    assert md["raw_hours_read"] == 1 and md["partials_rekeyed"] == 0
    _assert_identity_exact(defs)

    # a full refresh recomputes every partial and gives the same table
    md = _run(defs, IDENTITY, full_refresh=True)["privacy/identity_links"]
    assert md["full_refresh"] is True and md["raw_hours_read"] == len(hours) - 1
    _assert_identity_exact(defs)


def test_unchanged_hours_are_not_read(data_dir, monkeypatch):
    """A run costs what is new: an hour whose file is unchanged (same size and mtime) is not opened at all, here
    proven by making its content unreadable behind an unchanged listing."""
    defs, hours, held = _raw_landing(data_dir, monkeypatch, days=1, events=3000, users=80)
    _bring(held, data_dir / "lake", hours)
    _run(defs, f"{IDENTITY} or {LEDGER}")
    victim = data_dir / "lake" / "raw" / "events" / hours[0] / "data.parquet"
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)  # same size ...
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and mtime: the listing says unchanged
    md = _run(defs, f"{IDENTITY} or {LEDGER}")
    assert md["privacy/identity_links"]["raw_hours_read"] == 0
    assert md["privacy/consent_ledger"]["raw_hours_read"] == 0 and md["privacy/consent_ledger"]["appended"] == 0


DECISION = ["identifier_pseudonym", "identifier_kind", "purpose", "decision", "effective_at", "source", "decision_id"]


def _decisions(defs) -> set[tuple]:
    from personalization_assets.privacy.assets import ledger_log

    t = ledger_log(defs.resources["lake"], defs.resources["platform"]).read_all(DECISION)
    rows = set(zip(*[t[c].to_pylist() for c in DECISION]))
    assert len(rows) == t.num_rows  # never a decision twice
    return rows


def _lake_with_raw_except_events(src: Path, dst_data: Path) -> None:
    for table in ("crm_profiles", "privacy_requests"):
        shutil.copytree(src / "lake" / "raw" / table, dst_data / "lake" / "raw" / table)


def test_consent_ledger_in_batches_appends_what_one_full_scan_appends(data_dir, monkeypatch, tmp_path):
    defs, hours, held = _raw_landing(data_dir, monkeypatch, days=3, events=12000, users=200)
    k1, k2 = len(hours) // 3, 2 * len(hours) // 3
    batches = [hours[:k1], hours[k1:k2], hours[k2:]]

    # A: incremental, one run per batch (later hours land in later runs)
    appended_in = []
    for i, batch in enumerate(batches):
        _bring(held, data_dir / "lake", batch, copy=True)
        md = _run(defs, LEDGER)["privacy/consent_ledger"]
        assert md["raw_hours_read"] == len(batch) and md["full_refresh"] is (i == 0)
        appended_in.append(_decisions(defs) - set().union(*appended_in))
    incremental = _decisions(defs)
    # the test means something: a withdrawal decided in a later run than the grant it withdraws
    assert any(w[3] == "withdrawn" and any(g[3] == "granted" and g[:3] == w[:3] for earlier in appended_in[:i] for g in earlier)
               for i in range(1, len(batches)) for w in appended_in[i])
    md = _run(defs, LEDGER, full_refresh=True)["privacy/consent_ledger"]  # a full re-scan finds nothing new
    assert md["raw_hours_read"] == len(hours) and md["appended"] == 0

    # B: the same landing decided in one run; C: three runs, each a full scan (what the ledger did before)
    outcomes = {}
    for name, runs in (("one_run", [hours]), ("full_scans", batches)):
        other = tmp_path / name
        (other / "lake" / "raw").mkdir(parents=True)
        _lake_with_raw_except_events(data_dir, other)
        monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(other))
        other_defs = defs_for_env()
        for batch in runs:
            _bring(held, other / "lake", batch, copy=True)
            _run(other_defs, LEDGER, full_refresh=True)
        outcomes[name] = _decisions(other_defs)

    assert incremental == outcomes["one_run"] == outcomes["full_scans"]
    sources = {r[5] for r in incremental}
    statuses = {r[3] for r in incremental}
    assert {"cmp_event", "gpc_signal", "privacy_request"} <= sources and {"granted", "denied", "withdrawn"} <= statuses
    # and some identifier sends GPC in more than one batch
    gpc_users = {}
    lake = defs.resources["lake"]
    for i, batch in enumerate(batches):
        for h in batch:
            t = lake.read_table("raw", "events", dict(p.split("=", 1) for p in h.split("/")), columns=["anonymous_id", "gpc"])
            for a in pc.filter(t["anonymous_id"], pc.fill_null(t["gpc"], False)).to_pylist():
                gpc_users.setdefault(a, set()).add(i)
    assert any(len(b) > 1 for b in gpc_users.values())


@pytest.mark.parametrize("store", ["local", "s3"])
def test_partition_fingerprints_change_with_a_rewrite_and_read_no_data(store, data_dir, request):
    from personalization_assets.core.storage import LakeStorage

    if store == "s3":
        env = request.getfixturevalue("s3_env")
        lake = LakeStorage(url=f"s3://{env['bucket']}/lake", s3_endpoint_url=env["endpoint"])
    else:
        lake = LakeStorage(url=str(data_dir / "lake"))
    assert lake.partition_fingerprints("raw", "events") == {}
    a = {"date": "2026-11-28", "hour": "13"}
    b = {"date": "2026-11-28", "hour": "14"}
    lake.write_table("raw", "events", pa.table({"x": [1, 2]}), partition=a)
    lake.write_table("raw", "events", pa.table({"x": [3]}), partition=b)
    first = lake.partition_fingerprints("raw", "events")
    assert set(first) == {"date=2026-11-28/hour=13", "date=2026-11-28/hour=14"}
    lake.write_table("raw", "events", pa.table({"x": [1, 5]}), partition=a)  # same size, new content
    second = lake.partition_fingerprints("raw", "events")
    assert second["date=2026-11-28/hour=13"] != first["date=2026-11-28/hour=13"]
    assert second["date=2026-11-28/hour=14"] == first["date=2026-11-28/hour=14"]
    lake.delete_partition("raw", "events", b)
    assert set(lake.partition_fingerprints("raw", "events")) == {"date=2026-11-28/hour=13"}


def test_erasure_removes_erased_subjects_from_the_identity_partials(data_dir, monkeypatch):
    """The partials hold pseudonyms: the erasure run removes and verifies them like identity_links itself."""
    from datetime import datetime, timezone

    from personalization_assets.privacy.suppression import SUPPRESSION_SCHEMA
    from tests.helpers import check_results

    defs, hours, held = _raw_landing(data_dir, monkeypatch, days=1, events=3000, users=80)
    _bring(held, data_dir / "lake", hours)
    _run(defs, IDENTITY)
    lake = defs.resources["lake"]
    links = lake.read_table("privacy", "identity_links").to_pylist()
    # a user whose events link an anonymous id to them (so they are in the partials)
    linked = {u for p in lake.partitions("privacy", "identity_partials")
              for u in lake.read_table("privacy", "identity_partials", p)["user_pseudonym"].to_pylist() if u}
    victim = next(r for r in links if r["identifier_kind"] == "user" and r["identifier"] in linked)
    erased = {victim["identifier"]} | {r["identifier"] for r in links if victim["identifier"] in r["linked_user_pseudonyms"]}

    def in_partials() -> int:
        return sum(1 for p in lake.partitions("privacy", "identity_partials")
                   for r in lake.read_table("privacy", "identity_partials", p).to_pylist()
                   if r["identifier"] in erased or r["user_pseudonym"] in erased)

    assert in_partials() > 0
    now = datetime.now(timezone.utc)
    lake.write_table("privacy", "suppression_list", pa.Table.from_pylist(
        [{"request_id": "r-1", "identifier": i, "identifier_kind": "user" if i == victim["identifier"] else "anonymous", "requested_at": now}
         for i in sorted(erased)], schema=SUPPRESSION_SCHEMA))
    result = materialize(defs, "key:privacy/erasure_log")
    assert check_results(result)["privacy/erasure_log:subjects_absent_everywhere"] is True
    assert materializations(result)["privacy/erasure_log"]["rows_removed_per_asset"]["privacy/identity_links"] > len(erased)
    assert in_partials() == 0


def test_a_run_that_dies_before_recording_what_it_consumed_reprocesses_those_hours(data_dir, monkeypatch):
    """The consumed record is written only after the output: a run that dies in between (here: the record write
    fails) leaves the hours unrecorded, and the next run reads them again (idempotently) instead of skipping them."""
    from personalization_assets.privacy import incremental

    defs, hours, held = _raw_landing(data_dir, monkeypatch, days=1, events=3000, users=80)
    _bring(held, data_dir / "lake", hours[:-8])
    _run(defs, f"{IDENTITY} or {LEDGER}")
    _bring(held, data_dir / "lake", hours[-8:])
    decisions_before = _decisions(defs)

    def dies(*args, **kwargs):
        raise RuntimeError("killed before recording what was consumed")

    real = incremental.write_consumed
    monkeypatch.setattr(incremental, "write_consumed", dies)
    for selection in (IDENTITY, LEDGER):
        with pytest.raises(Exception):
            _run(defs, selection)
    monkeypatch.setattr(incremental, "write_consumed", real)
    appended_by_failed_run = _decisions(defs) - decisions_before
    assert appended_by_failed_run  # the ledger did append before dying
    md = _run(defs, f"{IDENTITY} or {LEDGER}")
    assert md["privacy/identity_links"]["raw_hours_read"] == 8 and md["privacy/consent_ledger"]["raw_hours_read"] == 8
    assert md["privacy/consent_ledger"]["appended"] == 0  # re-seen decisions are idempotent
    _assert_identity_exact(defs)
