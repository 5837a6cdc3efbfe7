"""Parsing landed NDJSON files into typed rows (raw ingestion, step 2).

* Fast path: DuckDB's vectorized, multi-threaded ``read_json`` with the tracking plan's structure (leaves typed
  ``JSON`` so a value's JSON type is preserved). It is taken only when the file is clean at the syntax level: it
  parses, and it yields exactly one record per line.
* Slow path, for files with any syntactic problem (blank, oversized, invalid UTF-8, malformed JSON, non-object,
  wrong nesting): each line is classified on its own, bad lines are rejected with a reason and good lines go
  through the same structure with ``json_transform``. Both paths feed the same typed projection
  (`raw/json_extract.py`), so a record's raw row does not depend on which path read it.
"""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.core.tracking_plan import RawEvent
from personalization_assets.raw import json_extract
from personalization_assets.raw.landing_files import LandedFile, Reject


@dataclass
class ParsedFile:
    table: pa.Table  # typed columns + _type_errors + source_file + line_no
    rejects: list[Reject] = field(default_factory=list)
    fast_path: bool = True



def _typed_sql(source: str, model) -> str:
    select, type_errors = json_extract.typed_projection(model, root=None)
    return f"select {', '.join(select)}, {type_errors} from {source}"



def _fast_path(con: duckdb.DuckDBPyConnection, local_path: str, model, max_line_bytes: int = 1 << 20) -> pa.Table:
    cols = json_extract.read_json_columns(model)
    # only files whose lines are all <= max_line_bytes come here; DuckDB sizes its read buffer from this
    # (a huge value allocates a huge buffer per thread)
    max_object = max(4 * max_line_bytes, 1 << 20)
    src = (
        f"read_json({json_extract._sql_str(local_path)}, format='newline_delimited', columns={cols}, "
        f"compression='none', maximum_object_size={max_object})"
    )
    return con.sql(_typed_sql(src, model)).arrow().read_all()



def _fast_path_many(con: duckdb.DuckDBPyConnection, local_paths: list[str], model, max_line_bytes: int) -> pa.Table:
    """One vectorized read over many clean files (per-query overhead paid once); rows keep file order."""
    cols = json_extract.read_json_columns(model)
    max_object = max(4 * max_line_bytes, 1 << 20)
    files = "[" + ", ".join(json_extract._sql_str(p) for p in local_paths) + "]"
    src = (
        f"read_json({files}, format='newline_delimited', columns={cols}, compression='none', "
        f"maximum_object_size={max_object}, filename='__file')"
    )
    select, type_errors = json_extract.typed_projection(model, root=None)
    return con.sql(f"select __file, {', '.join(select)}, {type_errors} from {src}").arrow().read_all()



def is_clean(f: LandedFile, max_line_bytes: int) -> bool:
    """No blank or oversized line and the file decoded whole: a candidate for the vectorized path."""
    if f.file_error is not None or f.n_lines == 0:
        return False
    lengths = f.ends - f.starts
    return bool((lengths > 0).all() and (lengths <= max_line_bytes).all())



def parse_clean_files(con: duckdb.DuckDBPyConnection, files: list[tuple[LandedFile, str | None]], max_line_bytes: int, model=RawEvent
                      ) -> tuple[dict[str, pa.Table], list[tuple[LandedFile, str | None]]]:
    """Parse clean files together. Returns (path -> typed table, files that need the per-file path)."""
    if not files:
        return {}, []
    tmpdir = tempfile.mkdtemp(prefix="landing-")
    try:
        local = []
        for i, (f, path) in enumerate(files):
            if path is None:  # compressed, remote or BOM-prefixed: an exact uncompressed copy
                path = os.path.join(tmpdir, f"{i:06d}.jsonl")
                with open(path, "wb") as out:
                    out.write(f.data)
            local.append(path)
        try:
            table = _fast_path_many(con, local, model, max_line_bytes)
        except (duckdb.Error, OSError, pa.ArrowException):  # errors may surface while streaming the result
            return {}, files  # some file is not clean after all: per file, then line by line
    finally:
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)
    # rows come in file order: run lengths of the file name column give each file's slice
    names = table["__file"].combine_chunks() if table.num_rows else pa.array([], pa.string())
    runs = pc.run_end_encode(names) if table.num_rows else None
    run_values = runs.values.to_pylist() if runs is not None else []
    run_ends = runs.run_ends.to_numpy() if runs is not None else np.zeros(0, np.int64)
    if len(run_values) != len(set(run_values)):  # a file's rows are not contiguous: do not trust the split
        return {}, files
    spans = {}
    start = 0
    for v, end in zip(run_values, run_ends.tolist()):
        spans[v] = (start, end - start)
        start = end
    out, retry = {}, []
    for (f, path), name in zip(files, local):
        offset, n = spans.get(name, (0, 0))
        part = table.slice(offset, n)
        if n != f.n_lines:
            retry.append((f, path))
            continue
        part = part.drop_columns(["__file"]).add_column(0, "line_no", pa.array(np.arange(1, n + 1, dtype=np.int64)))
        out[f.path] = part.append_column("source_file", pa.array([f.path] * n, pa.string()))
    return out, retry



def _slow_path(con: duckdb.DuckDBPyConnection, f: LandedFile, max_line_bytes: int, model) -> tuple[pa.Table, list[Reject]]:
    rejects: list[Reject] = []
    lengths = f.ends - f.starts
    good_nos: list[int] = []
    good_lines: list[str] = []
    for i in range(f.n_lines):
        line_no = i + 1
        n = int(lengths[i])
        if n > max_line_bytes:
            rejects.append(Reject(line_no, "line_too_large", f"{n} bytes > limit {max_line_bytes}"))
            continue
        chunk = f.data[int(f.starts[i]) : int(f.ends[i])]
        if not chunk.strip():
            rejects.append(Reject(line_no, "empty_line", "blank line"))
            continue
        try:
            text, _ = codecs.utf_8_decode(chunk, "strict", True)
        except UnicodeDecodeError as exc:
            rejects.append(Reject(line_no, "invalid_utf8", f"invalid UTF-8 at byte {exc.start}"))
            continue
        good_nos.append(line_no)
        good_lines.append(text)
    lines = pa.table({"line_no": pa.array(good_nos, pa.int64()), "line": pa.array(good_lines, pa.string())})
    con.register("_lines", lines)
    try:
        parent_checks = " or ".join(
            f"coalesce(json_type(line, {json_extract._sql_str('$.' + '.'.join(json_extract._quote(p) for p in path))}) not in ('OBJECT', 'NULL'), false)"
            for path in json_extract.struct_parent_paths(model)
        ) or "false"
        structure = json_extract.json_transform_structure(model)
        classified = con.sql(
            f"""
            select line_no, line,
                case when not json_valid(line) then 'malformed_json'
                     when json_type(line) <> 'OBJECT' then 'not_an_object'
                     when {parent_checks} then 'wrong_structure'
                     when {json_extract.plan_key_duplicates_sql(model, 'line')} then 'duplicate_key'
                end as reason,
                case when json_valid(line) then json_type(line) end as jtype
            from _lines
            """
        )
        con.register("_classified", classified.arrow().read_all())
        bad = con.sql("select line_no, reason, jtype from _classified where reason is not null").fetchall()
        for line_no, reason, jtype in bad:
            detail = {
                "malformed_json": "not valid JSON",
                "not_an_object": f"a JSON {str(jtype).lower()}, not an object",
                "wrong_structure": "a nested field (e.g. context, properties) is not an object",
                "duplicate_key": "an object repeats a key the tracking plan reads (which value counts is ambiguous)",
            }[reason]
            rejects.append(Reject(int(line_no), reason, detail))
        src = f"(select line_no, unnest(json_transform(line, {json_extract._sql_str(structure)})) from _classified where reason is null)"
        select, type_errors = json_extract.typed_projection(model, root=None)
        table = con.sql(f"select line_no, {', '.join(select)}, {type_errors} from {src} order by line_no").arrow().read_all()
    finally:
        con.unregister("_lines")
        try:
            con.unregister("_classified")
        except Exception:
            pass
    return table, rejects



def parse_file(
    con: duckdb.DuckDBPyConnection, f: LandedFile, max_line_bytes: int, local_path: str | None = None, model=RawEvent
) -> ParsedFile:
    """Parse one landed file. `local_path` may point at an identical uncompressed copy on disk."""
    rejects: list[Reject] = []
    if f.file_error is not None:
        rejects.append(f.file_error)
    if f.n_lines == 0:
        return ParsedFile(table=empty_typed(con, model).append_column("source_file", pa.array([], pa.string())), rejects=rejects)
    lengths = f.ends - f.starts
    clean = bool((lengths > 0).all() and (lengths <= max_line_bytes).all())
    table = None
    if clean:
        tmp = None
        try:
            if local_path is None:
                fd, tmp = tempfile.mkstemp(suffix=".jsonl", prefix="landing-")
                with os.fdopen(fd, "wb") as out:
                    out.write(f.data)
                local_path = tmp
            candidate = _fast_path(con, local_path, model, max_line_bytes)
            if candidate.num_rows == f.n_lines:
                table = candidate.add_column(0, "line_no", pa.array(np.arange(1, f.n_lines + 1, dtype=np.int64)))
        except (duckdb.Error, OSError, pa.ArrowException):  # errors may surface while streaming the result
            table = None  # any syntax problem: classify line by line
        finally:
            if tmp is not None:
                os.unlink(tmp)
    fast = table is not None
    if table is None:
        table, line_rejects = _slow_path(con, f, max_line_bytes, model)
        rejects.extend(line_rejects)
    table = table.append_column("source_file", pa.array([f.path] * table.num_rows, pa.string()))
    return ParsedFile(table=table, rejects=rejects, fast_path=fast)



def _has_duplicate_key(text: str) -> bool:
    def hook(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise _DuplicateKey
        return None

    try:
        json.loads(text, object_pairs_hook=hook)
    except _DuplicateKey:
        return True
    except ValueError:
        return False
    return False



class _DuplicateKey(Exception):
    pass



def flag_duplicate_keys(table: pa.Table, model=RawEvent) -> pa.Table:
    """Mark rows whose objects kept as JSON text (properties, traits, catalog tags) repeat a key BELOW their
    top level as `duplicate_key` (the top level is checked in SQL by the typed projection).

    Only texts holding a nested object (a second '{') can hide such a duplicate; one vectorized substring
    count finds them, and only those few are checked exactly in Python. It runs after either parsing path, so
    both give the same quarantine."""
    cols = [c for c in json_extract.json_columns(model) if c.kind in ("object", "array") and c.name in table.column_names]
    if not cols or not table.num_rows:
        return table
    unflagged = pc.is_null(table["_type_reason"])
    hits: dict[int, str] = {}
    for c in cols:
        text = table[c.name]
        nested = pc.greater(pc.count_substring(text, "{"), 0 if c.kind == "array" else 1)
        cand = pc.and_(pc.fill_null(nested, False), unflagged)
        idx = pc.indices_nonzero(cand.combine_chunks() if isinstance(cand, pa.ChunkedArray) else cand).to_pylist()
        if not idx:
            continue
        for i, value in zip(idx, text.take(pa.array(idx)).to_pylist()):
            if i not in hits and _has_duplicate_key(value):
                label = " / ".join(".".join(p) for p in c.paths)  # the stored text may come from the fallback path
                hits[i] = f"duplicate_key: {label} repeats a key"
    if not hits:
        return table
    errors, reasons = table["_type_errors"].to_pylist(), table["_type_reason"].to_pylist()
    for i, detail in hits.items():
        errors[i] = list(errors[i] or []) + [detail]
        reasons[i] = "duplicate_key"
    table = table.set_column(table.column_names.index("_type_errors"), "_type_errors", pa.array(errors, table.schema.field("_type_errors").type))
    return table.set_column(table.column_names.index("_type_reason"), "_type_reason", pa.array(reasons, pa.string()))



def empty_typed(con, model=RawEvent) -> pa.Table:
    select, type_errors = json_extract.typed_projection(model, root=None)
    cols = json_extract.read_json_columns(model)
    # an empty relation with the right types: a zero-row VALUES cast through the same projection
    src = f"(select * from read_json('/dev/null', format='newline_delimited', columns={cols}) limit 0)"
    t = con.sql(f"select {', '.join(select)}, {type_errors} from {src}").arrow().read_all()
    return t.add_column(0, "line_no", pa.array([], pa.int64()))
