"""The hash-chained logs' checkpoint costs what was appended, not the log's age (privacy/ledger_checkpoint.py).

The access audit log gains ~30 segments a run (~8,600 a day at a five-minute tick). The first checkpoint listed
every segment and rewrote a row per segment on every run: linear in the age of the deployment. Now a run lists the
newest checkpointed segment and what follows it, plus a window of at most `recheck_segments` older segments, and
rewrites only the checkpoint blocks its new segments fall in. Each test here breaks a naive version: one that lists
the whole log (the listing count), one that stops re-checking old segments (an edit or removal anywhere is found
within ceil(segments / window) runs), one that trusts the window alone (the newest segment is checked every run).
Both stores: a local directory and S3 (a moto server on loopback).
"""

from __future__ import annotations

import math
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from personalization_assets.core.audit import AUDIT_SCHEMA
from personalization_assets.core.hash_chain import HashChainedLog
from personalization_assets.core.storage import LakeStorage
from personalization_assets.privacy import ledger_checkpoint as lc

SEGMENTS = 23
WINDOW = 5
# where an old segment is damaged: the first, the middle, the last before the newest. Where it is does not depend on
# the store, so S3 (each segment an object on the moto server: ~6 s a case) takes the middle one only.
WHERE_IN_THE_WINDOW = [("local", 0), ("local", SEGMENTS // 2), ("local", SEGMENTS - 2), ("s3", SEGMENTS // 2)]


def _row(i: int) -> dict:
    from datetime import datetime, timezone

    return {"read_at": datetime(2026, 12, 6, tzinfo=timezone.utc), "run_id": f"run-{i}", "reader": "consented/events",
            "asset": "raw/events", "partition": f"date=2026-12-06/hour={i % 24:02d}", "columns": "*", "purpose": "data_minimization"}


@pytest.fixture(params=["local", "s3"])
def lake(request, tmp_path) -> LakeStorage:
    if request.param == "local":
        return LakeStorage(url=str(tmp_path / "lake"))
    import boto3

    endpoint = request.getfixturevalue("moto_server")
    bucket = f"ckpt-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket=bucket)
    return LakeStorage(url=f"s3://{bucket}/lake", s3_endpoint_url=endpoint, aws_region="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="x")


@pytest.fixture
def listed(monkeypatch) -> list[int]:
    """How many partitions each listing of a log returned (the range form), and -1 for each whole listing."""
    seen: list[int] = []
    real_after, real_all = LakeStorage.partition_fingerprints_after, LakeStorage.partition_fingerprints

    def after(self, layer, table, *args, **kwargs):
        out = real_after(self, layer, table, *args, **kwargs)
        if table == "access_audit_log":
            seen.append(len(out))
        return out

    def whole(self, layer, table, *args, **kwargs):
        if table == "access_audit_log":
            seen.append(-1)
        return real_all(self, layer, table, *args, **kwargs)

    monkeypatch.setattr(LakeStorage, "partition_fingerprints_after", after)
    monkeypatch.setattr(LakeStorage, "partition_fingerprints", whole)
    return seen


def _log(lake: LakeStorage) -> HashChainedLog:
    return HashChainedLog(lake=lake, name="access_audit_log", schema=AUDIT_SCHEMA)


def _grow(log: HashChainedLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        log.append([_row(i)])


def _run(log: HashChainedLog, lake: LakeStorage, **kw) -> lc.Verification:
    """One run: verify from the checkpoint and record it when the chain holds (what the assets do)."""
    v = lc.verify(log, lake, recheck_segments=WINDOW, **kw)
    if v.status.ok:
        lc.write_checkpoint(lake, log, v)
    return v


@pytest.fixture
def built(lake, monkeypatch):
    monkeypatch.setattr(lc, "BLOCK_SEQS", 4)  # several checkpoint blocks on a small log
    log = _log(lake)
    _grow(log, SEGMENTS)
    first = _run(log, lake)
    assert first.status.ok and first.mode == "full" and first.reason == "checkpoint_missing" and first.status.segments == SEGMENTS
    return log


def _rewrite(lake: LakeStorage, log: HashChainedLog, segment: str) -> None:
    """Edit one row of a segment in place (a new object on S3; locally the same path, its mtime put back)."""
    part = {"segment": segment}
    table = lake.read_table("privacy", log.name, part)
    edited = table.set_column(table.schema.get_field_index("purpose"), "purpose", pa.array(["analytics"] * table.num_rows))
    local = lake.local_path(lake.data_file("privacy", log.name, part))
    if local:
        st = os.stat(local)
        pq.write_table(edited, local)
        os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        lake.write_table("privacy", log.name, edited, part)


def test_a_steady_run_lists_what_was_appended_and_a_bounded_window_not_the_log(built, lake, listed):
    log = built
    listed.clear()
    v = _run(log, lake)
    assert v.status.ok and v.mode == "incremental" and v.segments_verified == 0
    assert -1 not in listed, "the whole log was listed"
    assert listed == [1, WINDOW], listed  # the newest segment (nothing after it), then the re-check window
    _grow(log, 3, SEGMENTS)
    listed.clear()
    v = _run(log, lake)
    assert v.status.ok and v.mode == "incremental" and v.segments_verified == 3 and v.status.segments == SEGMENTS + 3
    assert listed == [4, WINDOW] and v.segments_rechecked == WINDOW
    assert v.status.rows == log.verify().rows == SEGMENTS + 3


def test_the_window_goes_round_every_older_segment(built, lake):
    log = built
    older = SEGMENTS - 1  # all but the newest, which every run checks
    runs = math.ceil(older / WINDOW)
    seen = sum(_run(log, lake).segments_rechecked for _ in range(runs))
    assert seen == older
    assert _run(log, lake).segments_rechecked == WINDOW  # and starts again from the first


def test_a_steady_run_rewrites_only_the_checkpoint_block_of_its_new_segments(built, lake):
    log = built
    table = lc.segments_table(log.name)
    before = lake.partition_fingerprints("privacy", table)
    assert len(before) == math.ceil((SEGMENTS + 1) / lc.BLOCK_SEQS)  # seqs 1..23 in blocks of 4 seqs
    _grow(log, 1, SEGMENTS)  # seq 24: block 6, after the last one
    _run(log, lake)
    after = lake.partition_fingerprints("privacy", table)
    assert {p for p in after if after[p] != before.get(p)} == {"block=00000006"}


@pytest.mark.parametrize("lake,index", WHERE_IN_THE_WINDOW, indirect=["lake"])
def test_an_edited_old_segment_fails_within_the_bound(built, lake, index):
    log = built
    _rewrite(lake, log, log.segments()[index])
    for run in range(math.ceil((SEGMENTS - 1) / WINDOW) + 1):
        v = _run(log, lake)
        if not v.status.ok:
            break
        assert v.mode == "incremental"
    assert not v.status.ok and v.mode == "full" and v.reason == "segment_rewritten" and "edited" in v.status.problem, v
    assert not _run(log, lake).status.ok, "a failed check is not checkpointed away"


@pytest.mark.parametrize("lake,index", WHERE_IN_THE_WINDOW, indirect=["lake"])
def test_a_removed_old_segment_fails_within_the_bound(built, lake, index):
    log = built
    segment = log.segments()[index]
    lake.delete(lake.table_dir("privacy", log.name) + f"/segment={segment}")
    for _ in range(math.ceil((SEGMENTS - 1) / WINDOW) + 1):
        v = _run(log, lake)
        if not v.status.ok:
            break
    assert not v.status.ok and v.reason == "segment_missing" and segment in v.status.problem, v


def test_the_newest_segment_is_checked_on_every_run(built, lake):
    log = built
    newest = log.segments()[-1]
    _rewrite(lake, log, newest)
    v = _run(log, lake)
    assert not v.status.ok and v.reason == "segment_rewritten"
    lake.delete(lake.table_dir("privacy", log.name) + f"/segment={newest}")
    v = _run(log, lake)
    assert not v.status.ok and v.reason == "segment_missing" and newest in v.status.problem  # a shorter chain, still valid


def test_an_inserted_segment_means_a_full_verification(built, lake):
    log = built
    segs = log.segments()
    # a copy of an old segment under a name that sorts between two checkpointed ones
    copy = lake.read_table("privacy", log.name, {"segment": segs[3]})
    lake.write_table("privacy", log.name, copy, {"segment": segs[3] + "a"})
    for _ in range(math.ceil((SEGMENTS - 1) / WINDOW) + 1):
        v = _run(log, lake)
        if not v.status.ok:
            break
    assert not v.status.ok and v.mode == "full" and v.reason == "segment_inserted", v


def test_a_run_killed_between_the_blocks_and_the_head_leaves_a_checkpoint_that_still_holds(built, lake, monkeypatch):
    log = built
    _grow(log, 6, SEGMENTS)
    v = lc.verify(log, lake, recheck_segments=WINDOW)
    real = LakeStorage.write_table

    def killed(self, layer, table, *args, **kwargs):
        if table == lc.checkpoint_table(log.name):
            raise KeyboardInterrupt("killed before the head")
        return real(self, layer, table, *args, **kwargs)

    monkeypatch.setattr(LakeStorage, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        lc.write_checkpoint(lake, log, v)
    monkeypatch.setattr(LakeStorage, "write_table", real)
    _grow(log, 2, SEGMENTS + 6)
    again = _run(log, lake)  # the head still ends at seq 23: the six segments are verified again, then two more
    assert again.status.ok and again.mode == "incremental" and again.segments_verified == 8
    for _ in range(math.ceil((SEGMENTS + 7) / WINDOW) + 1):  # a whole round of the window agrees with the blocks
        assert _run(log, lake).status.ok


def test_the_first_format_is_verified_in_full_once(lake):
    log = _log(lake)
    _grow(log, 4)
    lake.write_table("privacy", lc.checkpoint_table(log.name), pa.table({"segment": ["000000000001"]}).replace_schema_metadata(
        {"personalization.format": "1"}))
    v = _run(log, lake)
    assert v.status.ok and v.mode == "full" and v.reason == "checkpoint_format_changed"
    assert _run(log, lake).mode == "incremental"


def test_the_audit_log_asset_rechecks_the_configured_window(data_dir, monkeypatch):
    """PERSONALIZATION_LOG_RECHECK_SEGMENTS reaches the verification of privacy/access_audit_log (Dagster run)."""
    from personalization_assets.core.audit import audit_log
    from tests.helpers import check_results, defs_for_env, materialize, materializations

    monkeypatch.setenv("PERSONALIZATION_LOG_RECHECK_SEGMENTS", "3")
    defs = defs_for_env()
    lake = defs.resources["lake"]
    _grow(audit_log(lake, None), 12)
    runs = []
    for _ in range(3):
        result = materialize(defs, "key:privacy/access_audit_log")
        assert check_results(result)["privacy/access_audit_log:hash_chain_intact"]
        runs.append(materializations(result)["privacy/access_audit_log"])
    assert runs[0]["verify_mode"] == "full"
    assert [r["verify_mode"] for r in runs[1:]] == ["incremental"] * 2
    assert [r["segments_rechecked"] for r in runs[1:]] == [3, 3]
