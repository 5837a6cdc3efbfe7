"""Duplicates, suppression and partition slicing of validated rows (raw ingestion, step 4).

`duplicate_rows` is the one statement of "keep the first copy of a key": the events (per landing hour and
messageId, earliest receivedAt first), the reference sources (per key, first file and line) and the incremental
hourly ingestion (`raw/ingest.py`) all use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# raw columns that identify a subject, and how each is normalized before pseudonymization
SUBJECT_COLUMNS = {"user_id": "id", "anonymous_id": "id", "previous_id": "id", "trait_email": "email"}


def suppressed_mask(table: pa.Table, suppressed: set[str], pseudonymize) -> pa.Array:
    """Rows whose identifiers pseudonymize into the suppression list (`pseudonymize(values, kind)`)."""
    from personalization_assets.core.pseudonymize import rows_matching_pseudonyms

    return rows_matching_pseudonyms(table, SUBJECT_COLUMNS, suppressed, pseudonymize)[0]



def duplicate_rows(con: duckdb.DuckDBPyConnection, table: pa.Table, partition_by: Sequence[str], order_by: Sequence[str]) -> pa.Table:
    """The rows of `table` that repeat an earlier row's `partition_by` key, earlier by `order_by`: columns `_pos`
    (row position in `table`), `source_file`, `line_no`, the key columns and `kept` (`file:line` of the copy
    that stays). `table` needs `source_file` and `line_no`."""
    columns = list(dict.fromkeys([*partition_by, *order_by, "source_file", "line_no"]))
    if len(partition_by) == 1 and pc.count_distinct(table[partition_by[0]], mode="all").as_py() == table.num_rows:
        # every key once (nulls count as one key, as in the window below): nothing repeats, no query
        fields = [pa.field("_pos", pa.int64()), table.schema.field("source_file"), table.schema.field("line_no"),
                  *(table.schema.field(c) for c in partition_by if c not in ("source_file", "line_no")), pa.field("kept", pa.string())]
        return pa.schema(fields).empty_table()
    keyed = table.select(columns).append_column("_pos", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    partition = ", ".join(f'"{c}"' for c in partition_by)
    order = ", ".join(f'"{c}"' for c in order_by)
    con.register("_dedup_rows", keyed)
    try:
        return con.sql(
            f"""
            select _pos, source_file, line_no, {partition}, kept from (
                select *,
                    row_number() over w as rn,
                    first_value(source_file || ':' || line_no) over w as kept
                from _dedup_rows
                window w as (partition by {partition} order by {order})
            ) where rn > 1
            """
        ).arrow().read_all()
    finally:
        con.unregister("_dedup_rows")


def drop_positions(table: pa.Table, positions: pa.Array | pa.ChunkedArray) -> pa.Table:
    """`table` without the rows at `positions` (the `_pos` column of `duplicate_rows`)."""
    if not len(positions):
        return table
    keep = np.ones(table.num_rows, dtype=bool)
    keep[positions.to_numpy()] = False
    return table.filter(pa.array(keep))


def hour_array(start: datetime, n: int) -> pa.Array:
    start_us = int(pd.Timestamp(start).value // 1000)
    return pa.array(np.full(n, start_us, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC"))



def partition_slices(hours: np.ndarray, starts: Sequence[datetime]) -> list[tuple[int, int]]:
    """(offset, length) of each partition hour in `hours` (int64 microseconds, sorted ascending)."""
    out = []
    for start in starts:
        h = hour_array(start, 1)[0].cast(pa.int64()).as_py()
        lo, hi = int(np.searchsorted(hours, h, "left")), int(np.searchsorted(hours, h, "right"))
        out.append((lo, hi - lo))
    return out
