"""The `reconciliation` check of raw/events covers the whole lake, not only what the current run read (#12).

With incremental ingestion a run reads only new objects, so a check that compares "lines read by this run" with
"rows this run wrote" would pass forever after a row of an earlier hour vanished (or appeared) in the lake. Here
the lake is tampered with between two runs, in an hour the second run has no reason to touch (the second run
only brings a new object of another hour): every landing line must still be accounted for (in raw XOR
quarantine, once), so the check must fail. The untampered control must pass.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import check_results
from tests.landing_layouts import hive_key, ndjson, page, write_tree

HOUR_10 = "date=2026-11-28/hour=10"


def _landing(landing: Path) -> None:
    write_tree(landing, {
        hive_key("2026-11-28T10:00:00Z", "a.jsonl"): ndjson([page(f"t-a-{i}", f"2026-11-28T10:{i:02d}:30Z", i, user_id=f"t-u{i}") for i in range(5)])
        + b"{broken json line\n",
        hive_key("2026-11-28T11:00:00Z", "b.jsonl"): ndjson([page(f"t-b-{i}", f"2026-11-28T11:{i:02d}:30Z", i, user_id=f"t-u{i}") for i in range(5)]),
    })


def _run():
    from dagster._core.storage.defs_state.base import _current_storage

    from personalization_assets.cli import open_instance, run_materialize

    instance = open_instance()
    try:
        return run_materialize(select="key:raw/events", instance=instance, echo=lambda *a, **k: None)
    finally:
        instance.dispose()
        _current_storage.set(None)


def _files(lake: Path, table: str, partition: str) -> list[Path]:
    return sorted(p for p in (lake / "raw" / table / partition).glob("*.parquet") if not p.name.startswith(("_", ".")))


def _rewrite_first_nonempty(files: list[Path], change) -> None:
    for f in files:
        t = pq.read_table(f)
        if t.num_rows:
            pq.write_table(change(t), f)
            return
    raise AssertionError(f"nothing to tamper with in {files}")


def _tamper(lake: Path, how: str) -> None:
    if how == "none":
        return
    if how == "quarantine_row_deleted":  # the broken line's quarantine row disappears
        _rewrite_first_nonempty(_files(lake, "events_quarantine", HOUR_10), lambda t: t.slice(1))
    elif how == "raw_row_deleted":
        _rewrite_first_nonempty(_files(lake, "events", HOUR_10), lambda t: t.slice(1))
    elif how == "raw_row_planted":  # a row no landing line holds (a copy of a row under a new messageId)
        def plant(t: pa.Table) -> pa.Table:
            extra = t.slice(0, 1).set_column(t.schema.get_field_index("message_id"), "message_id", pa.array(["t-planted"]))
            return pa.concat_tables([t, extra])
        _rewrite_first_nonempty(_files(lake, "events", HOUR_10), plant)
    elif how == "partition_deleted":  # every row of the hour gone
        files = _files(lake, "events", HOUR_10)
        assert files
        for f in files:
            f.unlink()
    else:
        raise ValueError(how)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["none", "quarantine_row_deleted", "raw_row_deleted", "raw_row_planted", "partition_deleted"])
def test_reconciliation_fails_when_the_lake_no_longer_accounts_for_every_landing_line(landing, how):
    _landing(landing)
    ok, text, result = _run()
    assert ok and check_results(result)["raw/events:reconciliation"] is True, text
    lake = landing.parent / "lake"
    _tamper(lake, how)
    # a new object in another hour: the run has work to do, none of it in the tampered hour
    write_tree(landing, {hive_key("2026-11-28T12:00:00Z", "c.jsonl"): ndjson([page("t-c-0", "2026-11-28T12:00:30Z", 9, user_id="t-u9")])})
    ok, text, result = _run()
    checks = check_results(result)
    assert "raw/events:reconciliation" in checks, f"raw/events did not run although a new object landed: {checks}"
    if how == "none":
        assert ok and checks["raw/events:reconciliation"] is True, text
    else:
        assert checks["raw/events:reconciliation"] is False, f"{how}: the lake no longer accounts for every landing line, yet reconciliation passed"
        assert not ok, "reconciliation is blocking: the run must report failure"
