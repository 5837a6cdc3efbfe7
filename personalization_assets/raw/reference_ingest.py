"""Ingestion of the reference sources: CRM exports (CSV), content catalog and privacy requests (JSONL).

Same contract as events: every line read ends up in the raw table or in quarantine with a reason and
its original bytes; the pandera model of each table is the tracking plan that decides.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from personalization_assets.core.tracking_plan import RawCrmProfile
from personalization_assets.raw import json_extract
from personalization_assets.raw.dedup import drop_positions, duplicate_rows
from personalization_assets.raw.landing_files import LandedFile, Reject
from personalization_assets.raw.parsing import empty_typed, flag_duplicate_keys, parse_file
from personalization_assets.raw.quarantine import build_quarantine
from personalization_assets.raw.validation import order_like_model, validate_rows, validation_schema

CRM_COLUMNS = ["user_id", "email", "phone", "first_name", "last_name", "country", "birth_date", "signup_at", "plan", "updated_at"]
_CRM_TYPES = {"birth_date": "date", "signup_at": "timestamptz", "updated_at": "timestamptz"}


@dataclass
class SourceResult:
    raw: pa.Table
    quarantine: pa.Table
    records_read: int
    files: list[str]


def _validate(table: pa.Table, model, quarantine_rows: list, dedup_key: str | None, con) -> pa.Table:
    schema = validation_schema(model, exclude=("tags", "source_file"))
    # validated a chunk at a time: pandera works on pandas, which holds every string as a Python object
    parts = [validate_rows(table.slice(off, CHUNK_ROWS), schema, quarantine_rows) for off in range(0, table.num_rows, CHUNK_ROWS)]
    valid = pa.concat_tables(parts) if parts else table
    if dedup_key and valid.num_rows:
        dups = duplicate_rows(con, valid, [dedup_key], ["source_file", "line_no"])
        for d in dups.to_pylist():
            quarantine_rows.append((d["source_file"], Reject(int(d["line_no"]), f"duplicate_{dedup_key}", f"{dedup_key} {d[dedup_key]} already kept from {d['kept']}")))
        valid = drop_positions(valid, dups["_pos"])
    return order_like_model(valid.drop_columns(["_type_errors", "_type_reason"]), model)


def ingest_jsonl_source(
    con: duckdb.DuckDBPyConnection, source: str, files: list[tuple[LandedFile, str | None]], model, max_line_bytes: int, dedup_key: str | None = None
) -> SourceResult:
    tables, quarantine_rows, by_path, read = [], [], {}, 0
    for landed, local in files:
        by_path[landed.path] = landed
        read += landed.n_lines + (1 if landed.file_error else 0)
        parsed = parse_file(con, landed, max_line_bytes, local, model=model)
        tables.append(parsed.table)
        quarantine_rows.extend((landed.path, r) for r in parsed.rejects)
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive")
    else:
        table = empty_typed(con, model).append_column("source_file", pa.array([], pa.string()))
    table = flag_duplicate_keys(table, model)
    raw = _validate(table, model, quarantine_rows, dedup_key, con)
    return SourceResult(raw=raw, quarantine=build_quarantine(source, quarantine_rows, by_path), records_read=read, files=sorted(by_path))


CHUNK_ROWS = 250_000  # rows held as Python objects (parsing) or pandas (validation) at once


def _parse_csv_file(f: LandedFile, max_line_bytes: int, rejects: list[Reject]) -> Iterator[dict]:
    """The file's valid-looking data rows, one dict each; every rejected line goes to `rejects`."""
    if f.file_error:
        rejects.append(f.file_error)
    if f.n_lines == 0:
        return
    header_bytes = f.line_bytes(1)
    try:
        header = next(csv.reader([header_bytes.decode("utf-8")]))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        header = []
    header = [h.strip().lower() for h in header]
    if sorted(header) != sorted(CRM_COLUMNS):
        detail = f"header {header!r} does not match the CRM contract {CRM_COLUMNS!r}"
        rejects.append(Reject(1, "invalid_header", detail))
        for n in range(2, f.n_lines + 1):
            rejects.append(Reject(n, "invalid_header", "file header does not match the CRM contract"))
        return
    for n in range(2, f.n_lines + 1):
        b = f.line_bytes(n)
        if len(b) > max_line_bytes:
            rejects.append(Reject(n, "line_too_large", f"{len(b)} bytes > limit {max_line_bytes}"))
            continue
        if not b.strip():
            rejects.append(Reject(n, "empty_line", "blank line"))
            continue
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(Reject(n, "invalid_utf8", f"invalid UTF-8 at byte {exc.start}"))
            continue
        try:
            values = next(csv.reader([text]))
        except csv.Error as exc:
            rejects.append(Reject(n, "malformed_csv", str(exc)))
            continue
        if len(values) != len(header):
            rejects.append(Reject(n, "wrong_column_count", f"{len(values)} fields, expected {len(header)}"))
            continue
        row = {h: (v.strip() or None) for h, v in zip(header, values)}
        row["source_file"] = f.path
        row["line_no"] = n
        yield row


def _crm_strings(rows: list[dict]) -> pa.Table:
    cols = {c: pa.array([r.get(c) for r in rows], pa.string()) for c in CRM_COLUMNS}
    cols["source_file"] = pa.array([r["source_file"] for r in rows], pa.string())
    cols["line_no"] = pa.array([r["line_no"] for r in rows], pa.int64())
    return pa.table(cols)


def ingest_crm(con: duckdb.DuckDBPyConnection, files: list[tuple[LandedFile, str | None]], max_line_bytes: int) -> SourceResult:
    """CRM CSV exports. The header line of each file counts as read and is not a record.

    records_read counts data lines only (header excluded), so records_read = raw + quarantine.
    Fields with embedded newlines are not supported (such a row is quarantined as wrong_column_count).
    """
    chunks, pending, quarantine_rows, by_path, read = [], [], [], {}, 0
    for landed, _ in files:
        by_path[landed.path] = landed
        read += max(landed.n_lines - 1, 0) + (1 if landed.file_error else 0)
        rejects: list[Reject] = []
        for row in _parse_csv_file(landed, max_line_bytes, rejects):
            pending.append(row)
            if len(pending) >= CHUNK_ROWS:  # Arrow is compact; a list of dicts is not
                chunks.append(_crm_strings(pending))
                pending = []
        for r in rejects:
            if r.reason == "invalid_header" and r.line_no == 1:
                read += 1  # a bad header is itself quarantined, so it counts as read
            quarantine_rows.append((landed.path, r))
    chunks.append(_crm_strings(pending))
    strings = pa.concat_tables(chunks)
    del chunks, pending
    con.register("_crm", strings)
    try:
        select, errors = [], []
        for c in CRM_COLUMNS:
            if c in _CRM_TYPES:
                t = _CRM_TYPES[c]
                select.append(f"try_cast({c} as {t}) as {c}")
                errors.append(f"case when {c} is not null and try_cast({c} as {t}) is null then 'wrong_type: {c} is not a valid {t}' end")
                if t == "timestamptz":  # the same strict timestamp rules as the JSON sources
                    errors.append(f"case when {c} is not null then {json_extract.timestamp_problem(c, c)} end")
            else:
                select.append(c)
        typed = con.sql(
            f"""select {', '.join(select)}, source_file, line_no,
                   list_filter([{', '.join(errors)}], lambda x: x is not null) as _type_errors,
                   split_part(_type_errors[1], ': ', 1) as _type_reason
                from _crm"""
        ).arrow().read_all()
    finally:
        con.unregister("_crm")
    # the latest updated_at wins per user: flag it (superseded rows are history, not errors)
    typed = typed.append_column("is_current", pa.array(np.zeros(typed.num_rows, dtype=bool)))
    valid = _validate(typed, RawCrmProfile, quarantine_rows, None, con)
    if valid.num_rows:
        con.register("_crm_valid", valid.append_column("_pos", pa.array(np.arange(valid.num_rows))))
        try:
            current = con.sql(
                """select _pos from (select _pos, row_number() over (partition by user_id
                   order by updated_at desc, source_file desc, line_no desc) as rn from _crm_valid) where rn = 1"""
            ).arrow().read_all()
        finally:
            con.unregister("_crm_valid")
        flags = np.zeros(valid.num_rows, dtype=bool)
        flags[current["_pos"].to_numpy()] = True
        valid = valid.set_column(valid.column_names.index("is_current"), "is_current", pa.array(flags))
    return SourceResult(raw=valid, quarantine=build_quarantine("crm", quarantine_rows, by_path), records_read=read, files=sorted(by_path))
