"""Audited reads by construction: during a run, the lake itself audits every read of a sensitive table.

* reads the old code made without an audit record (the consented tier's side reads of identity links and
  the suppression list, raw ingestion's read of the suppression list) now leave one;
* an asset that reads a sensitive table without recording it is audited by the lake anyway, and fails when
  it declares no purpose;
* no module reads lake files around the lake's API (a static scan, shown to catch a planted bypass).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import dagster as dg
import pytest

from personalization_assets.core.audit import UndeclaredPurposeError, audit_log
from personalization_assets.core.storage import LakeStorage
from tests.conftest import ROOT
from tests.helpers import defs_for_env, generate, materialize, partition_range


def _audit_rows(lake: LakeStorage) -> list[dict]:
    return audit_log(lake, None).read_all().to_pylist()


def _pairs(rows) -> set[tuple[str, str]]:
    return {(r["reader"], r["asset"]) for r in rows}


def test_side_reads_of_the_privacy_tables_are_audited(landing):
    manifest = generate(landing, users=120, events=4_000, days=1)
    defs = defs_for_env()
    parts = partition_range(manifest)
    materialize(defs, "group:raw or group:privacy or group:consented", parts)
    # second ingestion: the suppression list exists now, and raw/events reads it
    materialize(defs, "key:raw/events", parts)
    lake = defs.resources["lake"]
    rows = _audit_rows(lake)
    pairs = _pairs(rows)
    assert ("consented/events", "privacy/identity_links") in pairs
    assert ("consented/events", "privacy/suppression_list") in pairs
    assert ("raw/events", "privacy/suppression_list") in pairs
    for r in rows:
        assert r["purpose"], r
    # the audit log stays a valid chain
    assert audit_log(lake, None).verify().ok


def _segments_of(lake: LakeStorage, run_id: str, reader: str) -> list[str]:
    log = audit_log(lake, None)
    return [s for s in log.segments() if any(r["run_id"] == run_id and r["reader"] == reader
                                             for r in log._read_segment(s, log.schema).to_pylist())]


def test_a_run_adds_audit_segments_per_step_not_per_partition_and_the_log_is_verified_from_its_checkpoint(landing):
    """The erasure run declares every table it cleans (also the `also` tables, e.g. privacy/identity_partials) in one
    append: each partition it read was an audit segment of its own (130-300 per run at 1M events), and the audit log,
    verified whole on every run, grew without bound. Then the log is verified from its checkpoint: a run checks what
    was appended since the last one, and a rewritten old segment still fails the check."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers import check_results, materializations

    manifest = generate(landing, users=120, events=4_000, days=1)
    defs = defs_for_env()
    parts = partition_range(manifest)
    # everything but the privacy operations: the erasure run below is the first, so it reads every partition
    materialize(defs, "(group:raw or group:privacy or group:consented) and not (key:privacy/erasure_log or key:privacy/retention_log "
                "or key:privacy/key_rotation_log)", parts)
    lake = defs.resources["lake"]
    assert len(lake.partitions("privacy", "identity_partials")) > 1 and not lake.exists("privacy", "erasure_state")
    assert lake.read_table("privacy", "suppression_list").num_rows > 0  # the landing holds erasure requests
    first = materialize(defs, "key:privacy/access_audit_log")
    md = materializations(first)["privacy/access_audit_log"]
    assert check_results(first)["privacy/access_audit_log:hash_chain_intact"]
    assert md["rows"] > 0

    erased = materialize(defs, "key:privacy/erasure_log")
    rows = [r for r in _audit_rows(lake) if r["run_id"] == erased.run_id and r["reader"] == "privacy/erasure_log"]
    partials = [r["partition"] for r in rows if r["asset"] == "privacy/identity_partials"]
    assert partials == ["*"], partials  # declared once, not recorded per partition read
    scope = materializations(erased)["privacy/erasure_log"]["scope"]
    assert scope["partitions_checked_against_whole_list"] > len(lake.partitions("privacy", "identity_partials")), scope
    assert len(_segments_of(lake, erased.run_id, "privacy/erasure_log")) == 1

    second = materialize(defs, "key:privacy/access_audit_log")
    md2 = materializations(second)["privacy/access_audit_log"]
    assert check_results(second)["privacy/access_audit_log:hash_chain_intact"]
    assert md2["verify_mode"] == "incremental" and md2["segments_verified"] == md2["segments"] - md["segments"] >= 1, (md, md2)
    assert md2["rows"] == audit_log(lake, None).verify().rows

    # an edited row in a segment verified earlier: the segment's fingerprint changed, the whole chain is verified again
    log = audit_log(lake, None)
    path = lake.full_path(lake.data_file("privacy", "access_audit_log", {"segment": log.segments()[0]}))
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("purpose"), "purpose", pa.array(["analytics"] * table.num_rows)), path)
    third = materialize(defs, "key:privacy/access_audit_log", raise_on_error=False)
    md3 = materializations(third).get("privacy/access_audit_log", {})
    assert check_results(third)["privacy/access_audit_log:hash_chain_intact"] is False
    assert md3.get("verify_reason") == "segment_rewritten", md3


def test_the_ingestion_records_the_stored_hours_it_merges_in_one_append(landing):
    """A full refresh over a built lake reads every stored hour (raw rows and quarantine) to merge the objects it
    re-reads into it; each of those reads was an audit append of its own (336 at a full refresh of a built 1M-event
    lake). The merges' reads are recorded before any happens, one row per partition, in one append per batch; reads
    of other partitions are still recorded by the lake when they happen."""
    from personalization_assets.core.storage import partition_path

    manifest = generate(landing, users=120, events=4_000, days=1)
    defs = defs_for_env()
    parts = partition_range(manifest)
    materialize(defs, "key:raw/events", parts)
    lake = defs.resources["lake"]
    stored = {(f"raw/{t}", partition_path(p)) for t in ("events", "events_quarantine") for p in lake.partitions("raw", t)}
    assert len(stored) > 24  # a day of hours, and quarantined lines in some of them
    refresh = materialize(defs, "key:raw/events", parts, run_config={"ops": {"raw_events": {"config": {"full_refresh": True}}}})
    rows = [r for r in _audit_rows(lake) if r["run_id"] == refresh.run_id and r["reader"] == "raw/events"]
    merged = [(r["asset"], r["partition"]) for r in rows if r["asset"] in ("raw/events", "raw/events_quarantine")]
    assert set(merged) == stored and len(merged) == len(stored), sorted(set(merged) ^ stored)[:5]
    log = audit_log(lake, None)
    merge_segments = [seg for seg in _segments_of(lake, refresh.run_id, "raw/events")
                      if any(r["asset"] != "raw/landing_manifest" for r in log._read_segment(seg, log.schema).to_pylist())]
    assert len(merge_segments) == 1  # one batch (each read an append of its own before: 48 here)
    assert log.verify().ok


@dg.asset(key=["features", "sneaky"])
def sneaky(lake: LakeStorage):
    """Reads raw events without recording the reads: as a table, then as the file's bytes."""
    part = lake.partitions("raw", "events")[0]
    rows = lake.read_table("raw", "events", part, columns=["message_id"]).num_rows
    size = len(lake.read_bytes(lake.data_file("raw", "events", part)))
    return dg.MaterializeResult(metadata={"rows": rows, "bytes": size})


def test_a_read_nobody_recorded_is_audited_by_the_lake(landing, tmp_path, monkeypatch):
    manifest = generate(landing, users=60, events=1_500, days=1)
    defs = defs_for_env()
    materialize(defs, "key:raw/events", partition_range(manifest))
    lake = defs.resources["lake"]
    before = len(_audit_rows(lake))

    # undeclared purpose: the read fails before any data is touched
    with pytest.raises(UndeclaredPurposeError):
        dg.materialize([sneaky], resources={"lake": lake})
    assert len(_audit_rows(lake)) == before

    # with a declared purpose the read goes through, and the lake wrote the audit row itself
    policy_dir = tmp_path / "policies"
    shutil.copytree(ROOT / "privacy_policies", policy_dir)
    purposes = policy_dir / "asset_purposes.yaml"
    purposes.write_text(purposes.read_text().replace("\nassets:\n", "\nassets:\n  features/sneaky: analytics\n", 1))
    monkeypatch.setenv("PERSONALIZATION_POLICY_DIR", str(policy_dir))
    from personalization_assets.core.policies import get_policy

    assert get_policy().asset_purposes["features/sneaky"] == "analytics"
    result = dg.materialize([sneaky], resources={"lake": lake})
    assert result.success
    new = _audit_rows(lake)[before:]
    assert [(r["reader"], r["asset"], r["purpose"], r["columns"]) for r in new] == [
        ("features/sneaky", "raw/events", "analytics", "message_id"), ("features/sneaky", "raw/events", "analytics", "*")]
    assert all(r["partition"].startswith("date=") for r in new)


# --- static: every lake read goes through LakeStorage ------------------------------------------------

# Ways to read Parquet/lake files without LakeStorage. `filesystem()`/`full_path()` hand out the raw store.
_BYPASS_CALLS = {"read_table", "ParquetFile", "ParquetDataset", "dataset", "read_parquet", "parquet_scan", "open_input_file",
                 "open_input_stream", "filesystem", "full_path"}
_BYPASS_SQL = ("read_parquet(", "parquet_scan(")
# modules allowed to touch stores directly, and why
_ALLOWED = {
    "core/storage.py": "the lake API itself",
    "generator": "writes the demo landing zone (no lake access)",
    "cli.py": "hands the landing zone's filesystem to the generator",
    "features/person_ranges.py": "reads back the range files it wrote itself in DuckDB's temp directory, like DuckDB's "
                                 "own spill (the lake tables behind them were read, and audited, through LakeStorage)",
}


def bypasses(path: Path) -> list[str]:
    """Calls in one module that read storage around the lake API (module-qualified pyarrow calls, raw store
    handles, SQL that scans Parquet files)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
            if name in ("read_table", "dataset") and owner not in ("pq", "ds", "pyarrow", "parquet"):
                continue  # lake.read_table / lake.dataset are the API
            if name in ("full_path", "filesystem") and owner and owner.endswith("landing"):
                continue  # the landing zone is not the lake (the collector writes it, ingestion reads it)
            if name in _BYPASS_CALLS:
                found.append(f"{path.name}:{node.lineno} {owner + '.' if owner else ''}{name}()")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and any(s in node.value.lower() for s in _BYPASS_SQL):
            found.append(f"{path.name}:{node.lineno} SQL scans Parquet files directly")
    return found


def test_no_module_reads_lake_files_around_the_lake_api():
    pkg = ROOT / "personalization_assets"
    offenders = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg).as_posix()
        if any(rel == a or rel.startswith(a + "/") for a in _ALLOWED):
            continue
        offenders += bypasses(path)
    assert not offenders, "read lake data through LakeStorage (it audits sensitive reads): " + "; ".join(offenders)


def test_the_scan_catches_a_planted_bypass(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import pyarrow.parquet as pq\n"
        "def leak(lake):\n"
        "    a = pq.read_table(lake.full_path('raw/events/data.parquet'), filesystem=lake.filesystem())\n"
        "    b = con.sql(\"select * from READ_PARQUET('/lake/raw/events/*/*.parquet')\")\n"
        "    return lake.read_table('raw', 'events')\n"
    )
    found = bypasses(planted)
    assert any("pq.read_table" in f for f in found)
    assert any("full_path" in f for f in found) and any("filesystem" in f for f in found)
    assert any("SQL" in f for f in found)
    assert not any(f.endswith(" read_table()") and "pq." not in f for f in found)  # the API call itself is fine


def test_the_unaudited_marker_read_refuses_anything_but_a_control_object(tmp_path):
    """`read_marker` (a log's head hint: no table data) is not audited, so it must not hand out data files."""
    import pyarrow as pa

    lake = LakeStorage(url=str(tmp_path / "lake"))
    lake.write_table("raw", "events", pa.table({"user_id": ["alice@example.com"]}), partition={"date": "2026-11-28", "hour": "13"})
    data = lake.data_file("raw", "events", {"date": "2026-11-28", "hour": "13"})
    for path in (data, "raw/events/_tmp-x", "privacy/consent_ledger/_writer.lease"):
        with pytest.raises(ValueError, match="control objects"):
            lake.read_marker(path)
    assert lake.read_marker("privacy/consent_ledger/_head.json") is None  # absent: None, not an error
