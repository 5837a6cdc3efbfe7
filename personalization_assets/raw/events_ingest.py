"""Landing files of CDP spec messages -> validated raw rows + quarantine rows.

Pure functions over bytes and DuckDB; no Dagster here (the asset in `raw/assets.py` wires them).
This module runs the steps; each step is its own module (see docs/ARCHITECTURE.md, "Ingestion"):

1. `raw/landing_files.py` — decompression and line indexing: every file is read into memory (decompressed)
   and its line boundaries are indexed with numpy, so the number of lines read is known independently of
   any parser.
2. `raw/parsing.py` — the vectorized DuckDB fast path for syntactically clean files, the line-by-line slow
   path for the others (batched: all of them in one pass); both feed the same typed projection.
3. `raw/validation.py` — semantic validation (missing ids, unknown types, type violations, timestamp horizon):
   the pandera tracking plan on the typed rows of the whole partition.
4. `raw/dedup.py` — duplicates of a messageId are kept once per partition (earliest receivedAt); erased
   subjects are dropped (suppression); rows are sliced back per partition.
5. `raw/quarantine.py` — rejected rows are quarantined with their exact original bytes, fetched through the
   line index.

Invariant (tested, and enforced by an asset check): records read = raw rows + quarantined rows.
The names of the step modules are re-exported here (`events_ingest.load_file`, `.build_quarantine`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.core.tracking_plan import RawEvent
from personalization_assets.raw.dedup import (
    SUBJECT_COLUMNS,
    drop_positions,
    duplicate_rows,
    hour_array,
    partition_slices,
    suppressed_mask,
)
from personalization_assets.raw.landing_files import BOM, MAX_QUARANTINE_BYTES, LandedFile, Reject, decompress, index_lines, load_file
from personalization_assets.raw.parsing import ParsedFile, empty_typed, flag_duplicate_keys, is_clean, parse_clean_files, parse_file, parse_slow_files
from personalization_assets.raw.quarantine import QUARANTINE_SCHEMA, build_quarantine
from personalization_assets.raw.validation import (
    NOT_VALIDATED_PER_ROW,
    VALUE_ERRORS,
    event_schema,
    order_like_model,
    semantic_failures,
    validate_rows,
    validation_schema,
    value_checks,
)

__all__ = [
    "BOM", "MAX_QUARANTINE_BYTES", "NOT_VALIDATED_PER_ROW", "QUARANTINE_SCHEMA", "SUBJECT_COLUMNS", "VALUE_ERRORS",
    "LandedFile", "ParsedFile", "PartitionResult", "RawEvent", "Reject",
    "build_quarantine", "decompress", "drop_positions", "duplicate_rows", "empty_typed", "event_schema",
    "flag_duplicate_keys", "hour_array", "index_lines", "ingest_event_batch", "ingest_event_files", "is_clean",
    "load_file", "order_like_model", "parse_clean_files", "parse_file", "parse_slow_files", "parse_validate", "partition_slices",
    "semantic_failures", "suppressed_mask", "validate_rows", "validation_schema", "value_checks",
    "with_ingestion_columns",
]



def with_ingestion_columns(table: pa.Table) -> pa.Table:
    """Columns of RawEvent the ingestion fills that are not read from the message: `cdp_source_id` (null here: the
    hour-batch function knows no layout; `raw/ingest.py` sets it from the object's layout)."""
    if "cdp_source_id" not in table.column_names:
        table = table.append_column("cdp_source_id", pa.nulls(table.num_rows, pa.string()))
    return table



@dataclass
class PartitionResult:
    raw: pa.Table
    quarantine: pa.Table
    records_read: int
    files: list[str]
    fast_path_files: int
    suppressed: int = 0



def ingest_event_files(
    con: duckdb.DuckDBPyConnection,
    files: list[tuple[LandedFile, str | None]],
    window_start: datetime,
    horizon_days: int,
    max_future_minutes: int,
    max_line_bytes: int,
) -> PartitionResult:
    """Parse, validate and dedup all files of one partition."""
    return ingest_event_batch(con, [(window_start, files)], horizon_days, max_future_minutes, max_line_bytes)[0]



def parse_validate(
    con: duckdb.DuckDBPyConnection,
    items: list[tuple[LandedFile, str | None, datetime]],
    horizon_days: int,
    max_future_minutes: int,
    max_line_bytes: int,
    route_by_received_at: bool = False,
) -> tuple[pa.Table, list[tuple[str, Reject]], dict[str, int], set[str]]:
    """Parse and validate landed files: (valid typed rows with `landing_hour`, rejects as (path, Reject),
    records read per path, paths read by the fast path).

    Each item is (file, an identical local copy or None, hour). `landing_hour` of a row is that hour, or with
    `route_by_received_at` the hour of the row's own receivedAt (the item's hour when it has none: such a
    row fails the tracking plan anyway). The time horizon is checked against `landing_hour`."""
    quarantine_rows: list[tuple[str, Reject]] = []
    records_read: dict[str, int] = {}
    parsed_tables = []
    clean = []
    for landed, local_path, _hour in items:
        records_read[landed.path] = records_read.get(landed.path, 0) + landed.n_lines + (1 if landed.file_error is not None else 0)
        if is_clean(landed, max_line_bytes):
            clean.append((landed, local_path))
    fast_tables, retry = parse_clean_files(con, clean, max_line_bytes)
    fast_paths = set(fast_tables)
    parsed = _parse_rest(con, items, fast_paths, {f.path for f, _ in retry}, max_line_bytes)
    for k, (landed, local_path, start) in enumerate(items):
        if landed.path in fast_paths and k not in parsed:
            table = fast_tables[landed.path]
        else:
            p = parsed[k]
            if p.fast_path:
                fast_paths.add(landed.path)
            table = p.table
            for r in p.rejects:
                quarantine_rows.append((landed.path, r))
        if table.num_rows:
            hours = hour_array(start, table.num_rows)
            if route_by_received_at:
                received = table["received_at"].cast(pa.timestamp("us", tz="UTC"))
                hours = pc.coalesce(pc.floor_temporal(received, unit="hour"), hours)
            parsed_tables.append(table.append_column("landing_hour", hours))
    schema = event_schema(horizon_days, max_future_minutes)
    if parsed_tables:
        table = pa.concat_tables(parsed_tables, promote_options="permissive")
        # whatever the connection's TimeZone setting, timestamps leave ingestion as UTC
        table = table.cast(pa.schema([
            pa.field(f.name, pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f for f in table.schema
        ]))
    else:
        empty = empty_typed(con).append_column("source_file", pa.array([], pa.string()))
        table = empty.append_column("landing_hour", hour_array(items[0][2] if items else datetime.now(), 0))
    table = flag_duplicate_keys(table)
    # --- semantic validation with the pandera tracking plan
    valid = validate_rows(table, schema, quarantine_rows)
    return valid, quarantine_rows, records_read, fast_paths



def _parse_rest(
    con: duckdb.DuckDBPyConnection,
    items: list[tuple[LandedFile, str | None, datetime]],
    fast_paths: set[str],
    retry_paths: set[str],
    max_line_bytes: int,
) -> dict[int, ParsedFile]:
    """Every file the batched fast read did not take, by item index: one batched slow path over all their lines
    (`parse_slow_files`: a bounded number of queries whatever the number of files), with the same result as
    `parse_file` on each.

    `parse_file` would first try a clean file alone with the vectorized reader; a file whose lines the slow
    path all accepts at the syntax level is such a file (the batch failed because of another one), so those are
    read again together with the fast path, and, should that batch fail too, each alone as before. So is a file
    whose only rejected lines are a bare `null` (DuckDB's reader reads it as a record of nulls). Any other
    rejected line fails the vectorized reader (malformed, other non-objects, wrong nesting, repeated plan key,
    invalid UTF-8: tests/raw/test_batched_slow_path.py), so that file's slow-path result is what `parse_file`
    gives."""
    rest = [k for k, (landed, _, _) in enumerate(items) if landed.path not in fast_paths]
    if not rest:
        return {}
    parsed = dict(zip(rest, parse_slow_files(con, [items[k][0] for k in rest], max_line_bytes)))
    again = [k for k in rest if items[k][0].path in retry_paths and all(map(_read_json_takes, parsed[k].rejects))]
    if again:
        tables, _ = parse_clean_files(con, [(items[k][0], items[k][1]) for k in again], max_line_bytes)
        for k in again:
            landed, local_path, _ = items[k]
            if landed.path in tables:
                parsed[k] = ParsedFile(table=tables[landed.path], rejects=[], fast_path=True)
            else:
                parsed[k] = parse_file(con, landed, max_line_bytes, local_path)
    return parsed



def _read_json_takes(r: Reject) -> bool:
    return r.reason == "not_an_object" and r.detail == "a JSON null, not an object"



def ingest_event_batch(
    con: duckdb.DuckDBPyConnection,
    partitions: list[tuple[datetime, list[tuple[LandedFile, str | None]]]],
    horizon_days: int,
    max_future_minutes: int,
    max_line_bytes: int,
    suppressed: set[str] | None = None,
    pseudonymize=None,
) -> list[PartitionResult]:
    """Parse, validate and dedup several partitions at once (one validation pass amortizes fixed costs);
    results are split back per partition, in the order given. Every row of a partition's files gets that
    partition's hour (the hive layout, where the folder is the hour; `raw/ingest.py` routes rows by receivedAt)."""
    by_path: dict[str, LandedFile] = {}
    items = []
    for start, files in partitions:
        for landed, local_path in files:
            by_path[landed.path] = landed
            items.append((landed, local_path, start))
    valid, quarantine_rows, read_by_path, fast_paths = parse_validate(con, items, horizon_days, max_future_minutes, max_line_bytes)
    records_read = [sum(read_by_path.get(f.path, 0) for f, _ in files) for _, files in partitions]
    fast_files = [sum(1 for f, _ in files if f.path in fast_paths) for _, files in partitions]
    # --- exact duplicates of a messageId within a partition: keep the earliest receivedAt
    dups = duplicate_rows(con, valid, ["landing_hour", "message_id"], ["received_at", "source_file", "line_no"])
    for d in dups.to_pylist():
        quarantine_rows.append(
            (d["source_file"], Reject(int(d["line_no"]), "duplicate_message_id", f"messageId {d['message_id']} already kept from {d['kept']}"))
        )
    valid = drop_positions(valid, dups["_pos"])
    raw_all = order_like_model(with_ingestion_columns(valid.drop_columns(["_type_errors", "_type_reason"])))
    # --- erased subjects are dropped at ingestion (counted, never stored: storing them would defeat the erasure)
    suppressed_rows = None
    if suppressed and raw_all.num_rows:
        mask = suppressed_mask(raw_all, suppressed, pseudonymize)
        if pc.any(mask).as_py():
            suppressed_rows = raw_all.filter(mask).select(["landing_hour"])
            raw_all = raw_all.filter(pc.invert(mask))
    results = []
    # rows are in partition order (files were appended partition by partition): slice, do not filter
    hours = raw_all["landing_hour"].cast(pa.int64()).to_numpy() if raw_all.num_rows else np.zeros(0, np.int64)
    if hours.size and not bool((np.diff(hours) >= 0).all()):  # partitions given out of order: sort once
        raw_all = raw_all.sort_by([("landing_hour", "ascending"), ("source_file", "ascending"), ("line_no", "ascending")])
        hours = raw_all["landing_hour"].cast(pa.int64()).to_numpy()
    slices = partition_slices(hours, [start for start, _ in partitions])
    for i, (start, files) in enumerate(partitions):
        hour = hour_array(start, 1)[0]
        raw = raw_all.slice(*slices[i])
        paths = {f.path for f, _ in files}
        q_rows = [(p, r) for p, r in quarantine_rows if p in paths]
        quarantine = build_quarantine("events", q_rows, by_path)
        n_suppressed = 0 if suppressed_rows is None else pc.sum(pc.cast(pc.equal(suppressed_rows["landing_hour"], hour), pa.int64())).as_py() or 0
        results.append(PartitionResult(raw=raw, quarantine=quarantine, records_read=records_read[i], files=sorted(paths),
                                       fast_path_files=fast_files[i], suppressed=n_suppressed))
    return results
