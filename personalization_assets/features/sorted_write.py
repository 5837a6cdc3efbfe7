"""Streaming a history-sized query into one Parquet file in its sort order, a range of persons at a time.

events_clean is written ordered by (person_id, timestamp, message_id): a person's rows are contiguous and in time
order, and the file's row groups carry tight person_id statistics. One ORDER BY over the whole history is the
simplest way to get there, and it is what small builds do. At 100M events that one sort spilled 25 GB and DuckDB
then failed ("failed to pin block") while streaming the result out.

For a large history the rows are cut into ranges of person_id instead:

1. the range boundaries are quantiles of the identity map's person ids (one small query);
2. the query runs once, unsorted, into local Parquet files, one folder per range (`COPY ... PARTITION_BY`);
3. each range is read back, sorted on its own (1/k of the rows) and streamed into the one output file, the ranges
   in person_id order.

The file holds the same rows in the same order as the single sort: every row of a person falls in one range, and
the ranges follow each other in person_id order (NULL, if any, sorts last in both). The range files live in the
DuckDB temp directory (local disk, also when the lake is S3) and are removed when the write ends; those of a
process killed mid-write are removed by the next write.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa

# a range holds about this many rows: its sort stays within DuckDB's memory limit (2 GB by default) or spills little
RANGE_ROWS = 4_000_000
_PREFIX = "sorted-ranges-"
_RANGE_COLUMN = "__range"


def range_count(rows: int, range_rows: int = RANGE_ROWS) -> int:
    """How many ranges a query of about `rows` rows is cut into (1: one ORDER BY, no range files)."""
    return max(1, math.ceil(rows / max(range_rows, 1)))


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def range_boundaries(con, keys_sql: str, key: str, ranges: int) -> list[str]:
    """Up to ranges-1 increasing, distinct boundaries of `key` over the rows of `keys_sql` (its quantiles)."""
    if ranges <= 1:
        return []
    fractions = ", ".join(str(i / ranges) for i in range(1, ranges))
    values = con.execute(f'select quantile_disc("{key}", [{fractions}]) from ({keys_sql}) where "{key}" is not null').fetchall()[0][0]
    return sorted(set(values or []))


def range_expression(key: str, boundaries: list[str]) -> str:
    """SQL: the range of a row; range i holds boundaries[i-1] <= key < boundaries[i]; NULL keys fall in the last."""
    if not boundaries:
        return "0"
    whens = " ".join(f'when "{key}" < {_literal(b)} then {i}' for i, b in enumerate(boundaries))
    return f"case {whens} else {len(boundaries)} end"


def _temp_base(con) -> Path:
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


def sweep_leftovers(base: Path) -> list[Path]:
    """Remove range folders whose writing process is gone (killed mid-write). Returns those removed."""
    removed = []
    if not base.is_dir():
        return removed
    for entry in base.iterdir():
        m = re.fullmatch(re.escape(_PREFIX) + r"(\d+)-.*", entry.name)
        if m and entry.is_dir() and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def write_sorted(con, source_sql: str, order_by: list[str], write: Callable[[pa.RecordBatchReader], object],
                 *, range_key: str, boundaries: list[str], project: Callable[[str], str], batch_rows: int):
    """Run `source_sql` and hand `write` one stream of its rows, ordered by `order_by` (whose first column is
    `range_key`), projected by `project(subquery)`. With no boundaries this is one ORDER BY; otherwise the rows
    go through range files (module docstring). Returns what `write` returns."""
    order = ", ".join(f'"{c}"' for c in order_by)
    if not boundaries:
        return write(con.sql(project(f"({source_sql} order by {order})")).to_arrow_reader(batch_rows))

    base = _temp_base(con)
    base.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(base)
    folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))
    try:
        con.execute(
            f"copy (select *, {range_expression(range_key, boundaries)} as {_RANGE_COLUMN} from ({source_sql})) "
            f"to '{folder}' (format parquet, partition_by ({_RANGE_COLUMN}), overwrite_or_ignore true)")
        present = sorted(int(p.name.split("=", 1)[1]) for p in folder.glob(f"{_RANGE_COLUMN}=*") if p.is_dir())
        if not present:  # no rows at all: the single query gives the empty stream with its schema
            return write(con.sql(project(f"({source_sql} order by {order})")).to_arrow_reader(batch_rows))

        def ordered(i: int) -> pa.RecordBatchReader:
            files = _literal(str(folder / f"{_RANGE_COLUMN}={i}" / "*.parquet"))
            rows = f"(select * exclude ({_RANGE_COLUMN}) from read_parquet({files}, hive_partitioning = true) order by {order})"
            return con.sql(project(rows)).to_arrow_reader(batch_rows)

        first = ordered(present[0])

        def batches() -> Iterator[pa.RecordBatch]:
            yield from first
            for i in present[1:]:
                reader = ordered(i)
                if reader.schema != first.schema:
                    reader = reader.cast(first.schema)
                yield from reader

        return write(pa.RecordBatchReader.from_batches(first.schema, batches()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
