"""Ingestion reads landing objects ahead (raw/ingest.py `_Prefetch`, PERSONALIZATION_LANDING_READ_CONCURRENCY):
reads overlap, at most the current and the next batch are in memory, the result is the one-at-a-time result, and a
failed read fails the run where that file is taken (the batches before it are durable) — locally and on S3 (moto)."""

from __future__ import annotations

import threading
import time

import pytest

from personalization_assets.core.storage import LandingZone
from personalization_assets.raw import ingest
from tests.raw.test_incremental_ingest import _lake, _m, _obj, _run, _tables

OBJECTS = 12


def _landing_objects(landing) -> list[str]:
    paths = []
    for k in range(OBJECTS):
        hour = 10 + k % 3
        rel = f"events/date=2026-11-28/hour={hour:02d}/part-{k:03d}.jsonl.gz"
        _obj(landing, rel, [_m(100 * k + i, hour, minute=i) for i in range(4)])
        paths.append(rel)
    return sorted(paths)  # the order of the batches


class _Reads:
    """Wraps LandingZone.read_bytes: the reads in flight at most, the order reads started, an optional failure."""

    def __init__(self, monkeypatch, delay: float = 0.05, fail: str | None = None):
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        self.started: list[str] = []
        self.fail = fail
        original = LandingZone.read_bytes
        reads = self

        def read_bytes(zone, relative):
            with reads.lock:
                reads.in_flight += 1
                reads.most = max(reads.most, reads.in_flight)
                reads.started.append(relative)
            try:
                time.sleep(delay)
                if reads.fail is not None and relative == reads.fail:
                    raise OSError(f"injected read failure: {relative}")
                return original(zone, relative)
            finally:
                with reads.lock:
                    reads.in_flight -= 1

        monkeypatch.setattr(LandingZone, "read_bytes", read_bytes)


def test_reads_overlap_two_batches_at_most_and_the_result_is_the_one_at_a_time_result(landing, data_dir, monkeypatch):
    paths = _landing_objects(landing)
    monkeypatch.setattr(ingest, "BATCH_BYTES", 1)  # one object per batch: 12 batches
    monkeypatch.setenv("PERSONALIZATION_LANDING_READ_CONCURRENCY", "1")
    one = _Reads(monkeypatch)
    first = _run()
    assert one.most == 1 and first.objects_read == OBJECTS
    sequential = _tables(_lake(data_dir))

    import shutil

    shutil.rmtree(_lake(data_dir))
    monkeypatch.setenv("PERSONALIZATION_LANDING_READ_CONCURRENCY", "8")
    taken: list[int] = []
    batch = ingest._ingest_batch

    def ingest_batch(con, objects, *args, **kwargs):
        # when a batch is taken, no object two batches ahead has been read (two batches in memory at most)
        taken.append(max(paths.index(p) for p in many.started))
        assert max(paths.index(p) for p in many.started) <= paths.index(objects[0].obj.path) + 1
        return batch(con, objects, *args, **kwargs)

    monkeypatch.setattr(ingest, "_ingest_batch", ingest_batch)
    many = _Reads(monkeypatch)
    second = _run()
    assert many.most == 2, "the current and the next batch's object are read at once"
    assert len(taken) == OBJECTS and second.objects_read == OBJECTS
    assert _tables(_lake(data_dir)) == sequential


def test_a_failed_read_fails_the_run_at_its_batch_and_the_next_run_completes(landing, data_dir, monkeypatch):
    paths = _landing_objects(landing)
    monkeypatch.setattr(ingest, "BATCH_BYTES", 1)
    monkeypatch.setenv("PERSONALIZATION_LANDING_READ_CONCURRENCY", "4")
    reads = _Reads(monkeypatch, delay=0.0, fail=paths[5])
    with pytest.raises(OSError, match="injected read failure"):
        _run()
    # the five batches before the failed read are durable: the manifest holds them, and the next run reads the rest
    from personalization_assets.raw.ingest import read_manifest
    from tests.helpers import defs_for_env

    recorded = set(read_manifest(defs_for_env().resources["lake"])["path"].to_pylist())
    assert recorded == set(paths[:5])
    reads.fail = None
    resumed = _run()
    assert resumed.objects_read == OBJECTS - 5 and not resumed.objects_unaccounted
    after_failure = _tables(_lake(data_dir))

    import shutil

    shutil.rmtree(_lake(data_dir))
    _run()
    assert _tables(_lake(data_dir)) == after_failure


@pytest.mark.integration
def test_on_s3_the_result_does_not_depend_on_the_concurrency(s3_env, data_dir, tmp_path, monkeypatch):
    """Many small objects on S3 (moto on loopback), read 1 and 16 at a time into two lakes: the same rows."""
    import gzip
    import json

    client, bucket = s3_env["client"], s3_env["bucket"]
    for k in range(40):
        hour = 10 + k % 4
        body = b"".join(json.dumps(_m(1000 * k + i, hour, minute=i)).encode() + b"\n" for i in range(3))
        if k % 7 == 0:
            body = body.rstrip(b"\n")  # an object without a final newline
        key = f"landing/events/date=2026-11-28/hour={hour:02d}/flush-{k:03d}.jsonl" + (".gz" if k % 2 else "")
        client.put_object(Bucket=bucket, Key=key, Body=gzip.compress(body) if k % 2 else body)
    results = {}
    for concurrency in (1, 16):
        out = _run_s3(s3_env, data_dir, f"lake-{concurrency}", concurrency)
        assert out.objects_read == 40 and out.unaccounted_records == 0 and not out.objects_unaccounted
        results[concurrency] = _s3_tables(client, bucket, f"lake-{concurrency}")
    assert results[1] == results[16] and sum(sum(c.values()) for c in results[1].values()) == 120


def _run_s3(env, data_dir, lake_prefix: str, concurrency: int) -> ingest.IngestOutcome:
    """The ingestion on the moto bucket, with the resources the settings would build (credentials given as values)."""
    import duckdb

    from personalization_assets.core.platform import PlatformConfig
    from personalization_assets.core.storage import LakeStorage

    s3 = {"s3_endpoint_url": env["endpoint"], "aws_region": "us-east-1", "aws_access_key_id": "testing",
          "aws_secret_access_key": "testing"}
    landing = LandingZone(url=f"s3://{env['bucket']}/landing", **s3)
    lake = LakeStorage(url=f"s3://{env['bucket']}/{lake_prefix}", lock_dir=str(data_dir / "locks"), **s3)
    platform = PlatformConfig(data_dir=str(data_dir), landing_read_concurrency=concurrency)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    try:
        return ingest.ingest_landing(con, landing, lake, platform, run_id=f"s3-{concurrency}")
    finally:
        con.close()


def _s3_tables(client, bucket, prefix):
    import io
    from collections import Counter

    import pyarrow.parquet as pq

    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/raw/events"):
        for item in page.get("Contents", ()):
            if item["Key"].endswith("data.parquet"):
                t = pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()))
                cols = [c for c in t.column_names if c != "original_bytes"]
                out[item["Key"][len(prefix):]] = Counter(tuple(map(repr, r.values())) for r in t.select(cols).to_pylist())
    return out
