"""The raw layer materialized on real local resources and on a real S3 API (moto on loopback)."""

from __future__ import annotations


import pytest

from tests.helpers import check_results, defs_for_env, materialize, materializations
from tests.raw.hostile import CASES, PARTITION, write_hostile_landing

RAW_SELECTION = "key:raw/events or key:raw/events_quarantine"


def _lake_tables(defs, part):
    lake = defs.resources["lake"]
    return lake.read_table("raw", "events", part), lake.read_table("raw", "events_quarantine", part)


def _assert_reconciled(result, defs):
    checks = check_results(result)
    assert checks["raw/events:reconciliation"] is True
    assert checks["raw/events:pandera_RawEvent"] is True
    md = materializations(result)["raw/events"]
    raw, q = _lake_tables(defs, {"date": "2026-11-28", "hour": "13"})
    assert md["records_read"] == raw.num_rows + q.num_rows
    return raw, q


def test_raw_layer_reconciles_and_is_idempotent_locally(landing):
    write_hostile_landing(landing)
    defs = defs_for_env()
    result = materialize(defs, RAW_SELECTION, (PARTITION, PARTITION))
    raw1, q1 = _assert_reconciled(result, defs)
    # hostile file: 3 raw rows (good, good_identify, good_2); the others quarantined; plus BOM/CRLF, gzip, stray
    assert {"a-hostile.jsonl", "b-bom-crlf.jsonl"} <= {f.rsplit("/", 1)[-1] for f in raw1["source_file"].to_pylist()}
    reasons = set(q1["reason"].to_pylist())
    assert {"unsupported_file", "truncated_gzip", "duplicate_message_id", "line_too_large"} <= reasons
    assert len([c for c in CASES if c[2] == "raw"]) + 5 <= raw1.num_rows
    # rerun: same partition, identical rows, nothing appended
    result2 = materialize(defs, RAW_SELECTION, (PARTITION, PARTITION))
    raw2, q2 = _assert_reconciled(result2, defs)
    assert raw2.equals(raw1) and q2.equals(q1)
    files = list((landing.parent / "lake" / "raw" / "events").rglob("*"))
    assert [f.name for f in files if f.is_file()] == ["data.parquet"], "exactly one object per partition, no leftovers"


def test_raw_layer_on_s3(s3_env, data_dir, tmp_path):
    """Same code path with landing and lake on a real S3 HTTP API."""
    local = tmp_path / "staging"
    write_hostile_landing(local)
    client, bucket = s3_env["client"], s3_env["bucket"]
    for f in local.rglob("*"):
        if f.is_file():
            client.put_object(Bucket=bucket, Key=f"landing/{f.relative_to(local).as_posix()}", Body=f.read_bytes())
    defs = defs_for_env()
    assert defs.resources["lake"].is_s3
    result = materialize(defs, RAW_SELECTION, (PARTITION, PARTITION))
    raw1, q1 = _assert_reconciled(result, defs)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="lake/")["Contents"])
    data_keys = [k for k in keys if not k.startswith("lake/privacy/access_audit_log/")]  # the merge's read of raw/events is audited
    assert data_keys == ["lake/raw/events/date=2026-11-28/hour=13/data.parquet", "lake/raw/events_quarantine/date=2026-11-28/hour=13/data.parquet",
                         "lake/raw/landing_manifest/data.parquet"]
    result2 = materialize(defs, RAW_SELECTION, (PARTITION, PARTITION))
    raw2, q2 = _assert_reconciled(result2, defs)
    assert raw2.equals(raw1) and q2.equals(q1)


@pytest.mark.parametrize("chunk_rows", [1, 2, None], ids=["chunks-of-1", "chunks-of-2", "default-chunks"])
def test_reference_sources_reconcile(landing, chunk_rows, monkeypatch):
    """The same outcome whatever the parse/validation chunk size (a big CRM export is handled in chunks)."""
    from personalization_assets.raw import reference_ingest

    if chunk_rows:
        monkeypatch.setattr(reference_ingest, "CHUNK_ROWS", chunk_rows)
    (landing / "crm").mkdir()
    (landing / "crm" / "export-1.csv").write_text(
        "user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n"
        "u1,a@x.example,+49 30 1234,Ann,A,DE,1990-01-02,2025-01-01T00:00:00Z,free,2025-01-01T00:00:00Z\n"
        "u1,a@x.example,+49 30 1234,Ann,A,DE,1990-01-02,2025-01-01T00:00:00Z,pro,2025-03-01T00:00:00Z\n"
        "u2,not-an-email,,Bo,B,US-CA,1980-13-40,,free,2025-01-01T00:00:00Z\n"
        "u3,too,few\n"
    )
    (landing / "catalog").mkdir()
    (landing / "catalog" / "c.jsonl").write_text(
        '{"content_id": "c1", "title": "T", "category": "news", "tags": ["a"], "author": "x", "published_at": "2026-01-01T00:00:00Z", "premium": false, "price": null}\n'
        '{"content_id": "c1", "title": "again", "category": "news"}\n{"title": "no id", "category": "news"}\n'
    )
    (landing / "privacy_requests").mkdir()
    (landing / "privacy_requests" / "r.jsonl").write_text(
        '{"request_id": "r1", "type": "erasure", "email": "a@x.example", "received_at": "2026-11-01T00:00:00Z", "jurisdiction": "EU"}\n'
        '{"request_id": "r2", "type": "forget-me", "user_id": "u2", "received_at": "2026-11-01T00:00:00Z"}\n'
        '{"request_id": "r3", "type": "erasure", "received_at": "2026-11-01T00:00:00Z"}\n'
    )
    defs = defs_for_env()
    result = materialize(defs, "key:raw/crm_profiles or key:raw/content_catalog or key:raw/privacy_requests")
    checks = check_results(result)
    for src in ("crm_profiles", "content_catalog", "privacy_requests"):
        assert checks[f"raw/{src}:reconciliation"] is True, src
    lake = defs.resources["lake"]
    crm = lake.read_table("raw", "crm_profiles").to_pylist()
    assert [(r["user_id"], r["plan"], r["is_current"]) for r in crm] == [("u1", "free", False), ("u1", "pro", True)]
    crm_q = {r["line_no"]: r["reason"] for r in lake.read_table("raw", "crm_profiles_quarantine").to_pylist()}
    assert crm_q == {4: "wrong_type", 5: "wrong_column_count"}
    cat_q = [r["reason"] for r in lake.read_table("raw", "content_catalog_quarantine").to_pylist()]
    assert sorted(cat_q) == ["duplicate_content_id", "missing_content_id"]
    req_q = {r["line_no"]: r["reason"] for r in lake.read_table("raw", "privacy_requests_quarantine").to_pylist()}
    assert req_q == {2: "invalid_type", 3: "missing_subject"}
