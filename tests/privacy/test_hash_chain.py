"""Tamper evidence of the hash-chained logs (consent ledger and access audit log)."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest

from personalization_assets.core.audit import AccessAuditor, UndeclaredPurposeError, audit_log
from personalization_assets.privacy.consent import LEDGER_SCHEMA
from personalization_assets.core.hash_chain import HashChainedLog
from personalization_assets.core.policies import get_policy
from personalization_assets.core.storage import LakeStorage

T = datetime(2026, 11, 28, tzinfo=timezone.utc)


def row(i):
    return {"decision_id": f"d{i}", "identifier_pseudonym": "v1:" + f"{i:064x}", "identifier_kind": "user", "purpose": "personalization",
            "decision": "granted", "effective_at": T, "recorded_at": T, "source": "cmp_event", "source_ref": f"m{i}",
            "policy_version": "t", "jurisdiction": "EU", "jurisdiction_source": "event_location"}


@pytest.fixture
def ledger(tmp_path):
    log = HashChainedLog(lake=LakeStorage(url=str(tmp_path / "lake")), name="consent_ledger", schema=LEDGER_SCHEMA, lock_dir=str(tmp_path / "locks"))
    log.append([row(1), row(2), row(3)])
    log.append([row(4), row(5)])
    assert log.verify().ok and log.verify().rows == 5
    return log


def _segment_file(log, index):
    seg = log.segments()[index]
    return log.lake.full_path(log.lake.data_file("privacy", log.name, {"segment": seg}))


def _rewrite(path, mutate):
    rows = pq.read_table(path).to_pylist()
    rows = mutate(rows)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA), path)


def test_edited_row_is_detected(ledger):
    def edit(rows):
        rows[1]["decision"] = "denied"
        return rows

    _rewrite(_segment_file(ledger, 0), edit)
    status = ledger.verify()
    assert not status.ok and status.first_bad_seq == 2 and "edited" in status.problem


def test_removed_row_is_detected(ledger):
    _rewrite(_segment_file(ledger, 0), lambda rows: [rows[0], rows[2]])
    status = ledger.verify()
    assert not status.ok and "missing seq" in status.problem


def test_removed_last_segment_is_detected_against_the_recorded_head(ledger, tmp_path):
    head = ledger.verify().head_hash

    os.unlink(_segment_file(ledger, 1))
    assert ledger.verify().ok  # a truncated chain is internally consistent...
    assert not ledger.verify(expected_head=head).ok  # ...but not against the head recorded at the last append


def test_recomputed_edit_breaks_the_next_segment(ledger):
    """Editing a row and fixing its own hash still breaks the link to the next row."""
    from personalization_assets.core.hash_chain import row_hash

    def edit(rows):
        rows[2]["decision"] = "denied"
        rows[2]["row_hash"] = row_hash(rows[2]["prev_hash"], rows[2], LEDGER_SCHEMA)
        return rows

    _rewrite(_segment_file(ledger, 0), edit)
    status = ledger.verify()
    assert not status.ok and status.first_bad_seq == 4


def test_audit_requires_a_declared_policy_purpose(tmp_path):
    lake = LakeStorage(url=str(tmp_path / "lake"))
    ok = AccessAuditor(lake=lake, policy=get_policy(), reader="consented/events", run_id="r1")
    assert ok.record([("raw/events", "2026-11-28-13:00", None), ("features/user_rfm", None, None)]) == 1  # only sensitive reads
    rogue = AccessAuditor(lake=lake, policy=get_policy(), reader="features/user_rfm", run_id="r2")
    with pytest.raises(UndeclaredPurposeError, match="asset_purposes.yaml"):
        rogue.record([("raw/events", None, None)])
    log = audit_log(lake, None)
    rows = log.read_all().to_pylist()
    assert [(r["reader"], r["asset"], r["purpose"]) for r in rows] == [("consented/events", "raw/events", "data_minimization")]
    assert log.verify().ok


def test_concurrent_appends_never_overwrite_each_other(tmp_path):
    """Many writers racing (no lock, as on S3 across pods): every row lands once and the chain verifies."""
    from concurrent.futures import ThreadPoolExecutor

    lake = LakeStorage(url=str(tmp_path / "lake"))

    def writer(i):
        log = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA, lock_dir=None)
        log.append([row(i)])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(writer, range(1, 41)))
    log = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA)
    status = log.verify()
    assert status.ok and status.rows == 40
    assert sorted(r["decision_id"] for r in log.read_all().to_pylist()) == sorted(f"d{i}" for i in range(1, 41))


def test_exclusive_create_on_s3(moto_server, monkeypatch):
    import uuid

    import boto3

    bucket = f"t-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket=bucket)
    lake = LakeStorage(url=f"s3://{bucket}/lake", s3_endpoint_url=moto_server, aws_access_key_id="x", aws_secret_access_key="x")
    assert lake.create_exclusive("privacy/x/segment=1/data.parquet", b"one") is True
    assert lake.create_exclusive("privacy/x/segment=1/data.parquet", b"two") is False
    assert lake.read_bytes("privacy/x/segment=1/data.parquet") == b"one"


def test_streaming_verification_does_not_depend_on_the_batch_size(ledger):
    """verify() streams the log in batches; a tamper at any batch boundary is found at the same row."""
    intact = ledger.verify()
    assert all(ledger.verify(batch_rows=b) == intact for b in (1, 2, 3))

    def edit(rows):
        rows[2]["decision"] = "denied"
        return rows

    _rewrite(_segment_file(ledger, 0), edit)
    statuses = {ledger.verify(batch_rows=b) for b in (1, 2, 3, 65_536)}
    assert len(statuses) == 1 and not statuses.pop().ok


def test_a_large_ledger_append_is_split_into_chained_segments(tmp_path, clean_env):
    """The consent ledger appends one segment per LEDGER_SEGMENT_ROWS decisions (memory bounded by a segment):
    the segments chain into one log that verifies, holds every decision once, and a rerun appends nothing."""
    from personalization_assets.cli import landing_partition_keys
    from personalization_assets.privacy import assets as privacy_assets
    from tests.helpers import defs_for_env, generate, materialize, materializations

    monkeypatch = clean_env
    monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PERSONALIZATION_EVENTS_START", "2026-01-01")
    monkeypatch.setattr(privacy_assets, "LEDGER_SEGMENT_ROWS", 40)
    generate(tmp_path / "data" / "landing", users=60, events=3_000, bad_fraction=0.0)
    defs = defs_for_env()
    keys = landing_partition_keys(defs, None)
    selection = "key:raw/events or key:raw/events_quarantine or key:raw/privacy_requests or key:raw/privacy_requests_quarantine or key:privacy/consent_ledger"
    first = materializations(materialize(defs, selection, (keys[0], keys[-1])))["privacy/consent_ledger"]
    log = privacy_assets.ledger_log(defs.resources["lake"], defs.resources["platform"])
    status = log.verify()
    assert first["appended"] > 80 and status.ok and status.rows == first["appended"]
    assert status.segments == -(-first["appended"] // 40)  # ceil: full segments of 40 and the remainder
    ids = log.read_all(["decision_id"])["decision_id"]
    assert len(set(ids.to_pylist())) == len(ids)
    again = materializations(materialize(defs, "key:privacy/consent_ledger"))["privacy/consent_ledger"]
    assert again["appended"] == 0 and log.verify().rows == status.rows


def test_the_consent_ledgers_whole_log_aggregation_runs_within_the_platforms_duckdb_limits(data_dir, monkeypatch):
    """A full verification aggregates every decision id in DuckDB. A bare `duckdb.connect()` may use 80% of the machine
    and never spills: at 100M events it held 6.2 GB (bench.platform_path --after-ingestion, 2026-12-06). The ledger's
    connection takes the memory limit and spill directory the `duckdb` resource uses, from the same setting."""
    from personalization_assets.privacy.assets import ledger_log
    from tests.helpers import defs_for_env

    monkeypatch.setenv("PERSONALIZATION_DUCKDB_MEMORY_LIMIT", "300MB")
    r = defs_for_env().resources
    con = ledger_log(r["lake"], r["platform"]).duckdb_connection()
    try:
        limit = con.execute("select current_setting('memory_limit')").fetchone()[0]
        spill = con.execute("select current_setting('temp_directory')").fetchone()[0]
    finally:
        con.close()
    assert limit.replace(" ", "").upper() in ("286.1MIB", "300.0MB", "300MB"), limit
    assert spill == str(data_dir / "tmp" / "duckdb") and os.path.isdir(spill)


# --- the head hint: an append costs the same on a long log as on a short one --------------------------------------


def _long_log(tmp_path, segments: int) -> HashChainedLog:
    log = HashChainedLog(lake=LakeStorage(url=str(tmp_path / "lake")), name="consent_ledger", schema=LEDGER_SCHEMA)
    for i in range(1, segments + 1):
        log.append([row(i)])
    return log


def test_an_append_does_not_list_the_log(tmp_path, monkeypatch):
    """The access audit log gains a segment per audited step: listing every segment on every append made each run
    slower than the one before. The head comes from the hint, checked against the segment it names."""
    log = _long_log(tmp_path, 25)
    listings = []
    real = LakeStorage.partitions

    def counting(self, layer, table):
        listings.append((layer, table))
        return real(self, layer, table)

    monkeypatch.setattr(LakeStorage, "partitions", counting)
    assert log.append([row(26)])[0] == 1 and log.last_append_seq == 26
    assert log.head()[0] == 26
    assert listings == [], listings  # neither the append nor head() listed the segments
    monkeypatch.undo()
    status = log.verify()
    assert status.ok and status.rows == 26 and status.segments == 26


def _hint_file(log: HashChainedLog):
    store, relative = log._hint_location()
    return store.full_path(relative)


def test_a_writer_that_died_before_its_hint_is_followed(tmp_path, monkeypatch):
    """Segments appended after the hint (the writer died between its segment and the hint) are followed by name."""
    log = _long_log(tmp_path, 3)
    monkeypatch.setattr(HashChainedLog, "_write_hint", lambda self, *a: None)  # two appends leave no hint
    log.append([row(4), row(5)])
    log.append([row(6)])
    monkeypatch.undo()
    assert log.head() == log._listed_head() and log.head()[0] == 6
    log.append([row(7)])
    status = log.verify()
    assert status.ok and status.rows == 7, status
    assert [r["decision_id"] for r in log.read_all().to_pylist()] == [f"d{i}" for i in range(1, 8)]


@pytest.mark.parametrize("tamper", ["segment_removed", "wrong_hash", "another_log", "garbage", "log_removed"])
def test_a_hint_that_does_not_check_out_is_ignored(tmp_path, tamper):
    """The hint is coordination, never evidence: when the segment it names is gone or ends differently, or the hint
    is of another log or unreadable, the head comes from the listing."""
    import json
    import shutil

    log = _long_log(tmp_path, 4)
    hint_path = _hint_file(log)
    hint = json.loads(open(hint_path).read())
    assert hint["seq"] == 4 and hint["segment"] == "000000000004"
    if tamper == "segment_removed":
        shutil.rmtree(os.path.dirname(_segment_file(log, -1)))
        expected = (3, log._segment_head("000000000003")[1])
    elif tamper == "log_removed":
        shutil.rmtree(log.lake.full_path(log.lake.table_dir("privacy", log.name)))
        expected = (0, "0" * 64)
    else:
        expected = log._listed_head()
        if tamper == "wrong_hash":
            hint["hash"] = "f" * 64
        elif tamper == "another_log":
            hint["log"] = "s3://elsewhere/lake/privacy/consent_ledger"
        body = b"{not json" if tamper == "garbage" else json.dumps(hint).encode()
        with open(hint_path, "wb") as f:
            f.write(body)
    assert log._hinted_head() is None
    assert log.head() == expected
    # and the next append chains on from the real head
    log.append([row(10)])
    assert log.head()[0] == expected[0] + 1
    if tamper in ("wrong_hash", "another_log", "garbage", "log_removed"):
        assert log.verify().ok


def test_the_erasure_logs_new_columns_extend_a_chain_written_without_them(tmp_path):
    """Erasure logs of deployments before `requests_in_force` / `requests_digest` existed: their segments were hashed
    without the columns. Appending rows that carry them keeps the chain valid, the old rows read as null, and an
    edit of a new column in a new row is caught."""
    import pyarrow as pa

    from personalization_assets.privacy.erasure import ERASURE_LOG_SCHEMA

    old_schema = pa.schema([f for f in ERASURE_LOG_SCHEMA if not f.name.startswith("requests_")])
    lake = LakeStorage(url=str(tmp_path / "lake"))

    def rows(n, **extra):
        return [{"request_ids": "r1,r2", "asset": f"a{i}", "action": "lake", "rows_removed": 0, "residual_rows": 0, "verified": True,
                 "erased_at": T, "run_id": "run", **extra} for i in range(n)]

    HashChainedLog(lake=lake, name="erasure_log", schema=old_schema).append(rows(3))
    log = HashChainedLog(lake=lake, name="erasure_log", schema=ERASURE_LOG_SCHEMA)
    log.append(rows(2, request_ids="", requests_in_force=2, requests_digest="d" * 64))
    status = log.verify()
    assert status.ok and status.rows == 5
    table = log.read_all()
    assert table["requests_in_force"].to_pylist() == [None, None, None, 2, 2]
    from personalization_assets.privacy.ledger_checkpoint import verify as verify_checkpointed

    assert verify_checkpointed(log, lake).status.ok
    path = _segment_file(log, -1)
    tampered = pq.read_table(path).to_pylist()
    tampered[0]["requests_in_force"] = 1
    pq.write_table(pa.Table.from_pylist(tampered, schema=pq.read_schema(path)), path)
    bad = log.verify()
    assert not bad.ok and bad.first_bad_seq == 4
