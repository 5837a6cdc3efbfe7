"""Incremental ingestion (raw/ingest.py) on the real lake: only new or changed objects are read, messages go
to their receivedAt hour, and any sequence of runs equals one full rebuild over the same objects — also
after a SIGKILL mid-run and with two runs at once."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import duckdb
import pytest

from personalization_assets.raw import ingest
from tests.helpers import defs_for_env
from tests.raw.hostile import line, msg


def _obj(landing, rel: str, messages: list[dict], gz: bool = True) -> None:
    path = landing / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(line(m) for m in messages)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)


def _m(i: int, hour: int, minute: int = 5, **kw) -> dict:
    return msg(i, receivedAt=f"2026-11-28T{hour:02d}:{minute:02d}:02.000Z", timestamp=f"2026-11-28T{hour:02d}:{minute:02d}:00.000Z", **kw)


def _run(full_refresh: bool = False, rebuild_hours=None) -> ingest.IngestOutcome:
    defs = defs_for_env()
    r = defs.resources
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    try:
        return ingest.ingest_landing(con, r["landing"], r["lake"], r["platform"], run_id="test", full_refresh=full_refresh,
                                     rebuild_hours=rebuild_hours)
    finally:
        con.close()


def _tables(lake_dir) -> dict[str, Counter]:
    """Every raw event and quarantine row per hour, as a multiset (order aside)."""
    import pyarrow.parquet as pq

    out = {}
    for table in ("events", "events_quarantine"):
        base = lake_dir / "raw" / table
        for f in sorted(base.rglob("data.parquet")) if base.exists() else []:
            t = pq.read_table(f)
            cols = [c for c in t.column_names if c not in ("original_bytes",)]
            out[f"{table}/{f.parent.parent.name}/{f.parent.name}"] = Counter(tuple(map(repr, r.values())) for r in t.select(cols).to_pylist())
    return out


def _lake(data_dir):
    return data_dir / "lake"


def test_runs_read_only_new_objects_and_file_messages_by_received_at(landing, data_dir):
    # a Segment-style object spanning two hours, dropped into the hive folder of the first
    _obj(landing, "events/date=2026-11-28/hour=13/a.jsonl.gz", [_m(0, 13), _m(1, 13, 59), _m(2, 14, 1)])
    first = _run()
    assert (first.objects_new, first.objects_read, first.records_read) == (1, 1, 3)
    assert sorted(first.hours) == ["2026-11-28-13:00", "2026-11-28-14:00"]
    assert first.unaccounted_records == 0 and not first.objects_unaccounted
    t = _tables(_lake(data_dir))
    assert sum(t["events/date=2026-11-28/hour=13"].values()) == 2 and sum(t["events/date=2026-11-28/hour=14"].values()) == 1
    # nothing new: nothing read, nothing rewritten
    again = _run()
    assert (again.objects_read, again.objects_unchanged, again.hours) == (0, 1, {})
    # a late object for an old hour: only that hour is rewritten
    _obj(landing, "events/date=2026-11-28/hour=02/late.jsonl.gz", [_m(10, 2)])
    late = _run()
    assert (late.objects_read, sorted(late.hours)) == (1, ["2026-11-28-02:00"])


def test_a_changed_ingestion_setting_reads_the_whole_landing_again_and_equals_a_full_refresh(landing, data_dir, monkeypatch):
    """The line size limit decides which lines are rows and which are quarantined. Changed between runs, the run after
    read only new objects (none): the stored hours kept what the old limit let through, for good, while a full
    refresh gave other tables. A reference source re-reads on such a change; the events now do too."""
    long_line = _m(1, 13, properties={"note": "x" * 3000})
    _obj(landing, "events/date=2026-11-28/hour=13/a.jsonl.gz", [_m(0, 13), long_line, _m(2, 13)])
    assert _run().records_read == 3 and len(_message_ids(data_dir, 13)) == 3
    assert _run().objects_read == 0  # same settings: nothing read
    monkeypatch.setenv("PERSONALIZATION_MAX_LINE_BYTES", "2048")
    changed = _run()
    assert changed.settings_changed and changed.full_refresh and changed.objects_read == 1
    assert _message_ids(data_dir, 13) == Counter({"m-0": 1, "m-2": 1})
    assert [r["reason"] for r in _quarantine(data_dir, 13)] == ["line_too_large"]
    incremental = _tables(_lake(data_dir))
    _run(full_refresh=True)
    assert _tables(_lake(data_dir)) == incremental
    again = _run()
    assert not again.settings_changed and again.objects_read == 0


def test_an_earlier_events_start_reads_the_landing_again_and_files_what_it_quarantined(landing, data_dir, monkeypatch):
    """PERSONALIZATION_EVENTS_START is the first event partition: a message received before it is quarantined. Moved
    earlier, the run after read only new objects (none), and those messages stayed quarantined for good, while a full
    refresh files them as rows. It is part of the ingestion basis now (through the real asset)."""
    import pyarrow.parquet as pq

    from tests.helpers import materialize

    _obj(landing, "events/date=2026-11-28/hour=13/a.jsonl.gz", [_m(0, 13), _m(1, 13)])
    monkeypatch.setenv("PERSONALIZATION_EVENTS_START", "2026-11-29")
    materialize(defs_for_env(), "key:raw/events")

    def quarantined() -> list[str]:
        files = (_lake(data_dir) / "raw" / "events_quarantine").rglob("data.parquet")
        return [r for f in files for r in pq.read_table(f)["reason"].to_pylist()]

    assert quarantined() == ["received_at_outside_partitions"] * 2
    monkeypatch.setenv("PERSONALIZATION_EVENTS_START", "2026-11-28")
    materialize(defs_for_env(), "key:raw/events")
    assert _message_ids(data_dir, 13) == Counter({"m-0": 1, "m-1": 1})
    assert quarantined() == []


def test_a_manifest_without_a_recorded_basis_adopts_the_current_one(landing, data_dir):
    """A manifest written before the basis was recorded: the next run reads nothing again (a one-off full re-read of
    every deployment's landing on upgrade would cost hours at scale) and records the basis."""
    import pyarrow.parquet as pq

    _obj(landing, "events/date=2026-11-28/hour=13/a.jsonl.gz", [_m(0, 13)])
    _run()
    path = _lake(data_dir) / "raw" / ingest.MANIFEST_TABLE / "data.parquet"
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({}), path)
    out = _run()
    assert (out.objects_read, out.settings_changed) == (0, False)
    assert ingest.BASIS_META in pq.read_schema(path).metadata


def test_redelivered_replaced_and_copied_objects(landing, data_dir):
    _obj(landing, "events/date=2026-11-28/hour=13/a.jsonl.gz", [_m(0, 13), _m(1, 13)])
    _run()
    before = _tables(_lake(data_dir))
    # the same bytes delivered again under the same key (a new mtime): read again, and nothing changes
    p = landing / "events/date=2026-11-28/hour=13/a.jsonl.gz"
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10_000_000_000))
    redelivered = _run()
    assert redelivered.objects_changed == 1 and redelivered.unaccounted_records == 0
    assert _tables(_lake(data_dir)) == before
    # replaced with other bytes: its earlier rows are replaced, not added to
    _obj(landing, "events/date=2026-11-28/hour=13/a.jsonl.gz", [_m(0, 13), _m(5, 13)])
    _run()
    ids = _message_ids(data_dir, 13)
    assert ids == Counter({"m-0": 1, "m-5": 1}), ids
    # the same bytes under another key: every message is a duplicate, quarantined once each
    _obj(landing, "events/date=2026-11-28/hour=13/copy.jsonl.gz", [_m(0, 13), _m(5, 13)])
    _run()
    assert _message_ids(data_dir, 13) == Counter({"m-0": 1, "m-5": 1})
    q = _quarantine(data_dir, 13)
    assert sorted((r["source_file"].rsplit("/", 1)[-1], r["reason"]) for r in q) == [("copy.jsonl.gz", "duplicate_message_id")] * 2


def test_an_earlier_copy_arriving_later_displaces_the_stored_one(landing, data_dir):
    late_copy = _m(0, 13, 30)
    _obj(landing, "events/date=2026-11-28/hour=13/b.jsonl.gz", [late_copy])
    _run()
    # the CDP retried: a copy with an EARLIER receivedAt lands afterwards; it is the one kept
    _obj(landing, "events/date=2026-11-28/hour=13/a.jsonl.gz", [_m(0, 13, 10)])
    _run()
    import pyarrow.parquet as pq

    raw = pq.read_table(_lake(data_dir) / "raw/events/date=2026-11-28/hour=13/data.parquet")
    assert raw.num_rows == 1 and raw["source_file"][0].as_py().endswith("a.jsonl.gz")
    q = _quarantine(data_dir, 13)
    assert [(r["source_file"].rsplit("/", 1)[-1], r["reason"]) for r in q] == [("b.jsonl.gz", "duplicate_message_id")]
    assert q[0]["original_bytes"] == line(late_copy).rstrip(b"\n")  # the displaced row keeps its exact bytes
    # and a full rebuild says the same
    incremental = _tables(_lake(data_dir))
    _run(full_refresh=True)
    assert _tables(_lake(data_dir)) == incremental


def test_objects_outside_the_layout_are_quarantined_once(landing, data_dir):
    _obj(landing, "events/stray.jsonl", [_m(0, 13)], gz=False)
    _obj(landing, "events/date=2026-11-28/hour=13/notes.txt", [_m(1, 13)], gz=False)
    first = _run()
    assert first.objects_quarantined == 2 and not first.objects_unaccounted
    import pyarrow.parquet as pq

    # an object outside every layout is filed under the hour of its mtime; a hive-looking one under its folder hour
    reasons = Counter(r["reason"] for f in (_lake(data_dir) / "raw/events_quarantine").rglob("data.parquet") for r in pq.read_table(f).to_pylist())
    assert reasons["unsupported_file"] == 1 and reasons["outside_layout"] == 1
    second = _run()
    assert second.objects_quarantined == 0 and second.objects_unchanged == 2  # not quarantined again


def test_rebuilding_hours_rereads_only_their_objects(landing, data_dir):
    _obj(landing, "events/date=2026-11-28/hour=13/a.jsonl.gz", [_m(0, 13)])
    _obj(landing, "events/date=2026-11-28/hour=15/b.jsonl.gz", [_m(1, 15)])
    _run()
    out = _run(rebuild_hours={"2026-11-28-15:00"})
    assert (out.objects_rebuilt, out.objects_read, sorted(out.hours)) == (1, 1, ["2026-11-28-15:00"])


def test_a_rebuild_of_hours_that_fails_midway_is_finished_by_the_next_plain_run(landing, data_dir, monkeypatch):
    """Rebuilding hours re-reads objects the manifest has unchanged; the first hour rewritten drops the stored rows of
    every object still to be re-read. If the run dies there, those objects stay marked in the manifest, so the next
    plain run re-reads them instead of taking them as unchanged (which would lose their rows)."""
    _many_objects(landing, n_objects=8)  # hours 0-7, one object each; each also repeats two messages of the one before
    _obj(landing, "events/date=2026-11-28/hour=02/late.jsonl.gz", [_m(70_000 + i, 3) for i in range(5)])  # rows in hour 3
    _run()
    clean = _tables(_lake(data_dir))
    monkeypatch.setattr(ingest, "BATCH_BYTES", 1)  # one object per batch
    real, calls = ingest._merge_hour, []

    def dies_in_the_second_batch(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1 and args[1] != calls[0]:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "_merge_hour", dies_in_the_second_batch)
    with pytest.raises(RuntimeError, match="killed"):
        _run(rebuild_hours={"2026-11-28-02:00", "2026-11-28-03:00"})
    monkeypatch.setattr(ingest, "_merge_hour", real)
    assert _manifest_marks(data_dir)["reread-pending"] >= 1
    finish = _run()
    assert finish.objects_rebuilt >= 1 and finish.unaccounted_records == 0
    assert _manifest_marks(data_dir) == Counter({"plain": 9})
    assert _tables(_lake(data_dir)) == clean


def _message_ids(data_dir, hour: int) -> Counter:
    import pyarrow.parquet as pq

    return Counter(pq.read_table(_lake(data_dir) / f"raw/events/date=2026-11-28/hour={hour:02d}/data.parquet")["message_id"].to_pylist())


def _quarantine(data_dir, hour: int, missing_ok: bool = False) -> list[dict]:
    import pyarrow.parquet as pq

    f = _lake(data_dir) / f"raw/events_quarantine/date=2026-11-28/hour={hour:02d}/data.parquet"
    if missing_ok and not f.exists():
        return []
    return pq.read_table(f).to_pylist()


# ------------------------------------------------------------------ crash and concurrency, real processes

RUNNER = """
import sys, duckdb
from personalization_assets.raw import ingest
from personalization_assets.raw.assets import ingestion_lock
from tests.helpers import defs_for_env
ingest.BATCH_BYTES = int(sys.argv[1])
r = defs_for_env().resources
con = duckdb.connect(); con.execute("SET TimeZone = 'UTC'")
with ingestion_lock(r["lake"]):
    out = ingest.ingest_landing(con, r["landing"], r["lake"], r["platform"], run_id=sys.argv[2], full_refresh="full" in sys.argv[3:],
                                log=lambda m: print(m, flush=True))
print("UNACCOUNTED", out.unaccounted_records, len(out.objects_unaccounted))
"""


def _many_objects(landing, n_objects: int = 40, per: int = 400):
    for k in range(n_objects):
        hour = k % 12
        # every object also repeats two messages of the previous object (CDP retries across objects)
        msgs = [_m(k * per + i, hour, i % 60) for i in range(per)] + [_m(max(k - 1, 0) * per + i, hour, 59) for i in range(2)]
        _obj(landing, f"events/date=2026-11-28/hour={hour:02d}/o{k:03d}.jsonl.gz", msgs)


def _spawn(batch_bytes: int, tag: str, *options: str):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(batch_bytes), tag, *options], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _clean_build(data_dir) -> dict:
    """The raw tables one incremental run over the landing zone writes into an empty lake (the lake is replaced)."""
    import shutil

    shutil.rmtree(_lake(data_dir) / "raw", ignore_errors=True)
    _run()
    return _tables(_lake(data_dir))


def _manifest_marks(data_dir) -> Counter:
    import pyarrow.parquet as pq

    return Counter(fp.split(":", 1)[0] if fp.startswith(("refresh-pending:", "reread-pending:")) else "plain"
                   for fp in pq.read_table(_lake(data_dir) / "raw/landing_manifest/data.parquet")["fingerprint"].to_pylist())


def test_a_full_refresh_rewrites_hours_in_place_and_drops_what_the_landing_zone_no_longer_holds(landing, data_dir, monkeypatch):
    """Readers of raw/events during a full refresh see every hour (as it was, until a batch rewrites it): the
    refresh never empties the lake first. What no landing object accounts for goes: the rows of an object deleted
    from the landing zone, and a partition no manifest row names."""
    import shutil

    _many_objects(landing, n_objects=24)
    _run()
    hours_before = {k for k in _tables(_lake(data_dir)) if k.startswith("events/")}
    assert len(hours_before) == 12
    # gone from the landing zone: the only object of hour 11 holding its two messages, and an orphan partition
    _obj(landing, "events/date=2026-11-28/hour=11/solo.jsonl.gz", [_m(90_000, 11), _m(90_001, 11)])
    _run()
    (landing / "events/date=2026-11-28/hour=11/solo.jsonl.gz").unlink()
    orphan = _lake(data_dir) / "raw/events/date=2026-11-27/hour=05"
    shutil.copytree(_lake(data_dir) / "raw/events/date=2026-11-28/hour=03", orphan)
    monkeypatch.setattr(ingest, "BATCH_BYTES", 100_000)  # one or two objects per batch
    seen: list[set[str]] = []

    def on_hour(pk, rows):
        seen.append({k for k in _tables(_lake(data_dir)) if k.startswith("events/")})

    defs = defs_for_env()
    r = defs.resources
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    batches = []
    out = ingest.ingest_landing(con, r["landing"], r["lake"], r["platform"], run_id="refresh", full_refresh=True, on_hour=on_hour,
                                log=batches.append)
    con.close()
    assert len([b for b in batches if b.startswith("batch:")]) > 10
    # when the first hour was written, every other hour was still there (the orphan, removed by the first batch, aside)
    assert seen[0] >= hours_before
    assert out.full_refresh and out.unaccounted_records == 0 and not out.objects_unaccounted and out.objects_rebuilt == 24
    refreshed = _tables(_lake(data_dir))
    assert not (orphan / "data.parquet").exists()
    assert "m-90000" not in str(refreshed)
    assert _manifest_marks(data_dir) == Counter({"plain": 24})
    assert refreshed == _clean_build(data_dir)


@pytest.mark.parametrize("kill_after", [2.0])
def test_sigkill_mid_run_then_rerun_equals_a_clean_build(landing, data_dir, kill_after):
    _many_objects(landing)
    proc = _spawn(200_000, "killed")  # many small batches: the kill lands between and inside batch writes
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = _spawn(200_000, "rerun")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    assert b"UNACCOUNTED 0 0" in out
    after_crash = _tables(_lake(data_dir))
    _run(full_refresh=True)
    assert _tables(_lake(data_dir)) == after_crash


def test_sigkill_mid_full_refresh_then_an_incremental_run_finishes_it(landing, data_dir):
    """A full refresh killed after a few batches leaves its intent in the manifest (marked fingerprints): the next
    plain run re-reads exactly the objects it had not reached and removes what the landing zone no longer holds, so
    the lake equals a clean build. Unmarked, the objects not yet reached would count as unchanged while the hours
    already rewritten had dropped their rows."""
    _many_objects(landing, n_objects=30)
    _obj(landing, "events/date=2026-11-28/hour=11/solo.jsonl.gz", [_m(90_000, 11)])
    _run()
    (landing / "events/date=2026-11-28/hour=11/solo.jsonl.gz").unlink()
    proc = _spawn(100_000, "killed", "full")
    batches = 0
    for raw_line in proc.stdout:  # killed once three batches are durable
        batches += raw_line.startswith(b"batch:")
        if batches == 3:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert batches == 3, proc.stderr.read().decode()[-2000:]
    marks = _manifest_marks(data_dir)
    assert marks["refresh-pending"] > 1 and marks["plain"] >= 3, marks  # some objects re-read, some not yet, the gone one marked
    rerun = _spawn(100_000, "rerun")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    assert b"resuming an interrupted full refresh" in out and b"UNACCOUNTED 0 0" in out
    after = _tables(_lake(data_dir))
    assert _manifest_marks(data_dir) == Counter({"plain": 30})
    assert "m-90000" not in str(after)
    assert after == _clean_build(data_dir)


class _Killed(Exception):
    pass


def _run_dying_after(monkeypatch, merges: int, **kw) -> None:
    """A run that dies after `merges` hour merges (what a kill -9 between two hour writes leaves on disk)."""
    real, done = ingest._merge_hour, []

    def merge(*args, **kwargs):
        if len(done) == merges:
            raise _Killed()
        done.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "_merge_hour", merge)
    try:
        with pytest.raises(_Killed):
            _run(**kw)
    finally:
        monkeypatch.setattr(ingest, "_merge_hour", real)


def _displacing_landing(landing) -> None:
    # hour 13: b holds an EARLIER copy of m-0 than a, so a's copy is quarantined as a duplicate
    _obj(landing, "events/date=2026-11-28/hour=13/a.jsonl.gz", [_m(0, 13, 30), _m(10, 13)])
    _obj(landing, "events/date=2026-11-28/hour=13/b.jsonl.gz", [_m(0, 13, 10), _m(1, 13)])
    _obj(landing, "events/date=2026-11-28/hour=15/z.jsonl.gz", [_m(2, 15)])


@pytest.mark.parametrize("change", ["delete", "rewrite"])
def test_an_interrupted_refresh_starts_over_when_an_object_it_read_changed(landing, data_dir, monkeypatch, change):
    """The interrupted refresh had re-read a and b (b's copy of m-0 kept, a's quarantined). b is then deleted, or
    rewritten without m-0: resuming would keep a's copy in quarantine and lose m-0; the next run starts over."""
    _displacing_landing(landing)
    _run()
    monkeypatch.setattr(ingest, "BATCH_BYTES", 1)  # one object per batch: a, b, then z
    _run_dying_after(monkeypatch, 2, full_refresh=True)
    b = landing / "events/date=2026-11-28/hour=13/b.jsonl.gz"
    b.unlink() if change == "delete" else _obj(landing, "events/date=2026-11-28/hour=13/b.jsonl.gz", [_m(1, 13)])
    logs: list[str] = []
    defs = defs_for_env()
    con = duckdb.connect()
    out = ingest.ingest_landing(con, defs.resources["landing"], defs.resources["lake"], defs.resources["platform"], run_id="next",
                                log=logs.append)
    con.close()
    assert any(m.startswith("restarting an interrupted full refresh") for m in logs), logs
    assert out.full_refresh and out.unaccounted_records == 0 and not out.objects_unaccounted
    after = _tables(_lake(data_dir))
    assert "'m-0'" in str(after["events/date=2026-11-28/hour=13"])
    assert after == _clean_build(data_dir)


def test_an_interrupted_refresh_starts_over_when_a_new_object_it_was_reading_is_gone(landing, data_dir, monkeypatch):
    """A new object was being read when the refresh died (its rows in one hour, the manifest without it), then it is
    deleted from the landing zone: its rows are in an hour other objects name, so only a look at what is stored finds
    them; the next run starts the refresh over."""
    _displacing_landing(landing)
    _run()
    _obj(landing, "events/date=2026-11-28/hour=13/c.jsonl.gz", [_m(0, 13, 1), _m(20, 15)])  # new: the earliest m-0
    monkeypatch.setattr(ingest, "BATCH_BYTES", 1)
    _run_dying_after(monkeypatch, 3, full_refresh=True)  # a, b, then c's hour 13 written: killed before its hour 15
    (landing / "events/date=2026-11-28/hour=13/c.jsonl.gz").unlink()
    out = _run()
    assert out.full_refresh and out.unaccounted_records == 0
    assert "c.jsonl.gz" not in str(_tables(_lake(data_dir)))
    assert _tables(_lake(data_dir)) == _clean_build(data_dir)


def test_a_full_refresh_deletes_stored_files_that_are_not_canonical_hours(landing, data_dir):
    """`hour=5` is not hour 05 (read as one, it was merged with the real hour and wiped it); folders that are no hour
    and unreadable files go, as they did when a refresh emptied the lake first."""
    import shutil

    _displacing_landing(landing)
    _obj(landing, "events/date=2026-11-28/hour=05/e.jsonl.gz", [_m(30, 5), _m(31, 5)])
    _run()
    events = _lake(data_dir) / "raw/events"
    real = events / "date=2026-11-28/hour=05"
    junk = [events / "date=2026-11-28/hour=5", events / "date=2026-11-28/hour=xx", events / "date=2026-11-28/x=1"]
    for folder in junk:
        shutil.copytree(real, folder)
    (events / "data.parquet").write_bytes((real / "data.parquet").read_bytes())
    (_lake(data_dir) / "raw/events/date=2026-11-28/hour=15/data.parquet").write_bytes(b"not parquet")  # an accounted hour
    out = _run(full_refresh=True)
    assert out.unaccounted_records == 0
    assert not any((f / "data.parquet").exists() for f in junk) and not (events / "data.parquet").exists()
    after = _tables(_lake(data_dir))
    assert sum(after["events/date=2026-11-28/hour=05"].values()) == 2 and sum(after["events/date=2026-11-28/hour=15"].values()) == 1
    assert after == _clean_build(data_dir)


def test_two_runs_at_once_equal_one(landing, data_dir):
    _many_objects(landing, n_objects=20)
    a, b = _spawn(300_000, "a"), _spawn(300_000, "b")
    for p in (a, b):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
        assert b"UNACCOUNTED 0 0" in out
    both = _tables(_lake(data_dir))
    _run(full_refresh=True)
    assert _tables(_lake(data_dir)) == both
    total = sum(sum(c.values()) for k, c in both.items() if k.startswith("events/"))
    # every message once per hour: the repeats of the previous object sit in another hour (dedup is per hour,
    # the features keep one copy per messageId overall)
    assert total == 20 * 400 + 19 * 2


def test_reconciliation_fails_when_a_record_or_object_goes_missing(landing, data_dir, monkeypatch):
    """The checks are computed from the tables actually written: a bug that loses one quarantine row, or an
    object the manifest never records, is reported (and the blocking check fails the step)."""
    from tests.helpers import check_results, materialize

    _obj(landing, "events/date=2026-11-28/hour=13/a.jsonl.gz", [_m(0, 13), _m(1, 13)])
    (landing / "events/date=2026-11-28/hour=13/b.jsonl").write_bytes(b'{"not json\n' + line(_m(2, 13)))
    real = ingest._quarantine_table

    def lossy(rows):
        return real(rows[1:])  # drops one rejected line on the floor

    monkeypatch.setattr(ingest, "_quarantine_table", lossy)
    result = materialize(defs_for_env(), "key:raw/events", raise_on_error=False)
    assert check_results(result)["raw/events:reconciliation"] is False
    assert not result.success  # blocking

    monkeypatch.setattr(ingest, "_quarantine_table", real)
    real_write = ingest._write_manifest

    def forgetful(lake, rows, basis):
        real_write(lake, {p: r for p, r in rows.items() if not p.endswith("c.jsonl")}, basis)

    (landing / "events/date=2026-11-28/hour=14").mkdir()
    (landing / "events/date=2026-11-28/hour=14/c.jsonl").write_bytes(line(_m(3, 14)))

    monkeypatch.setattr(ingest, "_write_manifest", forgetful)
    result = materialize(defs_for_env(), "key:raw/events", raise_on_error=False)
    checks = check_results(result)
    assert checks["raw/landing_manifest:objects_accounted"] is False
