"""events_clean streamed into its file in person order, a range of persons at a time when the history is large.

events_clean is written ordered by (person_id, timestamp, message_id): a person's rows are contiguous and in time
order, and the file's row groups carry tight person_id statistics. A small build runs one query with one ORDER BY
(features/sql.py build_events_clean_sql). At 100M events with DuckDB's 2 GB limit that query could not run:

- the join of the event stream with the identity map (4.6M identifiers -> person, two 67-character pseudonyms per
  row) did not fit in memory, so DuckDB partitioned the whole probe side, 100M wide rows, to disk: 20-46 GB of
  spill, then "failed to pin block";
- the one ORDER BY of the result spilled 25 GB and failed the same way (session 8).

A large build (more than `range_rows` eligible copies) instead:

1. numbers the persons 0.. in person_id order (`person_idx`) and keys the identity map by the 64-bit hash of each
   identifier (a number pair per identifier); if two identifiers of the map share a hash, it falls back to the
   one-query path, so the result is always exact;
2. streams the events once through that small join, unsorted, into local Parquet files, one folder per range of
   person numbers (`COPY ... PARTITION_BY`);
3. reads each range back, sorts it on its own (about 1/k of the rows), puts the person_id back from the range's
   slice of the numbering, and streams it into the one output file, the ranges in order.

Person numbers follow person_id order and a range holds every row of its persons, so the file holds the same rows
in the same order as the one query. The range files live in the DuckDB temp directory (local disk, also when the
lake is S3) and are removed when the write ends; those of a process killed mid-write are removed by the next one.

Once events_clean is written in person order, later stages cut the persons into person_id ranges of about
`range_rows` events (`person_range_bounds`, `range_predicates`): the per-person state (features/partials.py) and the
session coverage check (features/checks.py) read a range's row groups only and hold 1/k of the history at a time.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from personalization_assets.features.params import FeatureParams
from personalization_assets.features.sql import (
    IDENTITY_HASH,
    PERSON_INDEX,
    build_events_clean_keyed_sql,
    build_events_clean_sql,
    build_identity_hash_sql,
    build_person_index_sql,
    identity_hashes_unique,
    joins_as_written,
    select_output_sql,
    temp_table,
)
from personalization_assets.features.sql import _list as _quoted_list

log = logging.getLogger(__name__)


def _quoted(value: str) -> str:
    return _quoted_list([value])  # a SQL string literal, quotes doubled

# a range holds about this many rows: its sort stays within DuckDB's memory limit (2 GB by default) or spills little
RANGE_ROWS = 4_000_000
_PREFIX = "sorted-ranges-"
_OWNER_LOCK = "_owner.lock"  # in each range folder, flocked by the build writing it
_RANGE = "__range"

T = TypeVar("T")


def range_count(rows: int, range_rows: int = RANGE_ROWS) -> int:
    """How many person ranges a build of about `rows` eligible rows is cut into (1: one query, no range files)."""
    return max(1, math.ceil(rows / max(range_rows, 1)))


def write_events_clean(con, p: FeatureParams, events_view: str, rows_estimate: int,
                       write: Callable[[pa.RecordBatchReader], T], *, batch_rows: int,
                       range_rows: int = RANGE_ROWS) -> tuple[T, int]:
    """Hand `write` one stream of events_clean in (person_id, timestamp, message_id) order. Needs the identity
    stage's temp tables (features/sql.py build_identity). Returns what `write` returns and the number of person
    ranges used (1: the one-query path)."""
    with joins_as_written(con):
        return _write_events_clean(con, p, events_view, range_count(rows_estimate, range_rows), write, batch_rows)


def _write_events_clean(con, p: FeatureParams, events_view: str, ranges: int,
                        write: Callable[[pa.RecordBatchReader], T], batch_rows: int) -> tuple[T, int]:
    if ranges > 1:
        con.execute(f"create or replace temp table {PERSON_INDEX} as {build_person_index_sql(temp_table('identity_map'))}")
        con.execute(f"create or replace temp table {IDENTITY_HASH} as {build_identity_hash_sql(temp_table('identity_map'))}")
        try:
            persons = int(con.execute(f"select count(*) from {PERSON_INDEX}").fetchall()[0][0])
            if persons > 1 and identity_hashes_unique(con):
                return _write_ranges(con, p, events_view, math.ceil(persons / ranges), write, batch_rows)
            if persons > 1:
                log.warning("two identifiers of the identity map share a 64-bit hash: events_clean is sorted in one query")
        finally:
            con.execute(f"drop table if exists {IDENTITY_HASH}")
            con.execute(f"drop table if exists {PERSON_INDEX}")
    source = f"({build_events_clean_sql(p, events_view)})"
    return write(con.sql(select_output_sql("events_clean", source)).to_arrow_reader(batch_rows)), 1


def _write_ranges(con, p: FeatureParams, events_view: str, persons_per_range: int,
                  write: Callable[[pa.RecordBatchReader], T], batch_rows: int) -> tuple[T, int]:
    base = _temp_base(con)
    base.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(base)
    folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))
    # held while the folder is in use: the kernel releases it when this process dies (SIGKILL included), which is how
    # a later build knows the folder is a leftover (a PID can be reused: a run pod's PID is the same every time)
    owner = open(folder / _OWNER_LOCK, "a")  # noqa: SIM115 - closed in the finally below
    fcntl.flock(owner, fcntl.LOCK_EX)
    try:
        keyed = build_events_clean_keyed_sql(p, events_view)
        # the range files need no order (each range is sorted when read back), so DuckDB need not keep any
        preserve = con.execute("select current_setting('preserve_insertion_order')").fetchall()[0][0]
        con.execute("set preserve_insertion_order = false")
        try:
            con.execute(
                f"copy (select *, person_idx // {persons_per_range} as {_RANGE} from ({keyed})) "
                f"to '{folder}' (format parquet, partition_by ({_RANGE}), overwrite_or_ignore true)")
        finally:
            con.execute(f"set preserve_insertion_order = {str(bool(preserve)).lower()}")
        con.execute(f"drop table if exists {IDENTITY_HASH}")  # only the numbering is read from here on
        present = sorted(int(d.name.split("=", 1)[1]) for d in folder.glob(f"{_RANGE}=*") if d.is_dir())

        def ordered(i: int) -> pa.RecordBatchReader:
            files = _quoted(str(folder / f"{_RANGE}={i}" / "*.parquet"))
            lo, hi = i * persons_per_range, (i + 1) * persons_per_range
            rows = f"""(
                select e.* exclude (person_idx, {_RANGE}), x.person_id
                from read_parquet({files}, hive_partitioning = true) as e
                join (select * from {PERSON_INDEX} where person_idx >= {lo} and person_idx < {hi}) as x using (person_idx)
                order by e.person_idx, e.timestamp, e.message_id
            )"""
            return con.sql(select_output_sql("events_clean", rows)).to_arrow_reader(batch_rows)

        if not present:  # no eligible rows: the one query gives the empty stream with its schema
            empty = f"({build_events_clean_sql(p, events_view)})"
            return write(con.sql(select_output_sql("events_clean", empty)).to_arrow_reader(batch_rows)), 1
        first = ordered(present[0])

        def batches() -> Iterator[pa.RecordBatch]:
            yield from first
            for i in present[1:]:
                reader = ordered(i)
                yield from (reader if reader.schema == first.schema else reader.cast(first.schema))

        return write(pa.RecordBatchReader.from_batches(first.schema, batches())), len(present)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        owner.close()


def person_range_bounds(con, persons_sql: str, range_rows: int = RANGE_ROWS) -> list[str]:
    """Increasing person_id boundaries cutting the persons of `persons_sql` (person_id, events) into ranges of
    about `range_rows` events, in person_id order; [] when they fit in one range."""
    total = con.execute(f"select coalesce(sum(events), 0) from ({persons_sql})").fetchall()[0][0]
    if int(total) <= range_rows:
        return []
    rows = con.execute(f"""
        select min(person_id) as lower
        from (
            select person_id, (sum(events) over (order by person_id rows unbounded preceding) - events) // {int(range_rows)} as piece
            from ({persons_sql}) where person_id is not null
        )
        group by piece having piece > 0 order by lower
    """).fetchall()
    return [r[0] for r in rows]


def range_predicates(bounds: list[str]) -> list[str]:
    """SQL predicates on person_id, one per range of `bounds` in order; together they take every row once (a NULL
    person_id falls in the last)."""
    if not bounds:
        return ["true"]
    edges = [None, *bounds, None]
    out = []
    for lo, hi in pairwise(edges):
        parts = ([f"person_id >= {_quoted(lo)}"] if lo is not None else []) + ([f"person_id < {_quoted(hi)}"] if hi is not None else [])
        where = " and ".join(parts)
        out.append(f"({where} or person_id is null)" if hi is None else where)
    return out


def _temp_base(con) -> Path:
    """DuckDB's own spill directory (relative to the working directory, as DuckDB resolves it)."""
    configured = con.execute("select current_setting('temp_directory')").fetchall()[0][0]
    return Path(configured) if configured else Path(tempfile.gettempdir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_dead_range_folders(con) -> list[Path]:
    """`sweep_leftovers` in this connection's spill directory: every feature build starts with it, whatever its size
    (the folders hold events_clean rows, pseudonyms included; only a large build used to remove them)."""
    return sweep_leftovers(_temp_base(con))


def _writer_gone(folder: Path, pid: int) -> bool:
    """Whether the build that wrote `folder` is gone: its owner lock is free (taken here without waiting). A folder
    without one (made by an older version, or its writer killed before taking it) is judged by its writer's PID."""
    try:
        fh = open(folder / _OWNER_LOCK, "r")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return pid != os.getpid() and not _pid_alive(pid)
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live build holds it (this process's own included: another open file)
        return True


def sweep_leftovers(base: Path) -> list[Path]:
    """Remove range folders whose writing build is gone (killed mid-write). Returns those removed."""
    removed: list[Path] = []
    if not base.is_dir():
        return removed
    for entry in base.iterdir():
        m = re.fullmatch(re.escape(_PREFIX) + r"(\d+)-.*", entry.name)
        if m and entry.is_dir() and _writer_gone(entry, int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
