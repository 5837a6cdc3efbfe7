"""Parsing landed NDJSON files into typed rows (raw ingestion, step 2).

* Fast path: DuckDB's vectorized, multi-threaded ``read_json`` with the tracking plan's structure (leaves typed
  ``JSON`` so a value's JSON type is preserved). It is taken only when the file is clean at the syntax level: it
  parses, and it yields exactly one record per line.
* Slow path, for files with any syntactic problem (blank, oversized, invalid UTF-8, malformed JSON, non-object,
  wrong nesting): each line is classified on its own, bad lines are rejected with a reason and good lines go
  through the same structure with ``json_transform``. ``parse_slow_files`` does it for all such files of a
  batch at once (one registered table, a bounded number of queries, split back per file), with the result
  ``parse_file`` gives on each. Both paths feed the same typed projection
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
    return json_extract.typed_select(model, source)



def _fast_path(con: duckdb.DuckDBPyConnection, local_path: str, model, max_line_bytes: int = 1 << 20) -> pa.Table:
    cols = json_extract.read_json_columns(model)
    # only files whose lines are all <= max_line_bytes come here; DuckDB sizes its read buffer from this
    # (a huge value allocates a huge buffer per thread)
    max_object = max(4 * max_line_bytes, 1 << 20)
    src = (
        f"read_json({json_extract._sql_str(local_path)}, format='newline_delimited', columns={cols}, "
        f"compression='auto', maximum_object_size={max_object})"
    )
    return con.sql(_typed_sql(src, model)).arrow().read_all()



def _fast_path_many(con: duckdb.DuckDBPyConnection, local_paths: list[str], model, max_line_bytes: int,
                    with_file: bool = True) -> pa.Table:
    """One vectorized read over many clean files (per-query overhead paid once); rows keep file order. `with_file`:
    a column `__file` names each row's file."""
    cols = json_extract.read_json_columns(model)
    max_object = max(4 * max_line_bytes, 1 << 20)
    files = "[" + ", ".join(json_extract._sql_str(p) for p in local_paths) + "]"
    filename = ", filename='__file'" if with_file else ""
    src = (
        f"read_json({files}, format='newline_delimited', columns={cols}, compression='auto', "
        f"maximum_object_size={max_object}{filename})"
    )
    return con.sql(json_extract.typed_select(model, src, keep=("__file",) if with_file else ())).arrow().read_all()


def _located(part: pa.Table, path: str) -> pa.Table:
    """A file's typed rows with their `line_no` (1..n, file order) and `source_file`."""
    n = part.num_rows
    part = part.add_column(0, "line_no", pa.array(np.arange(1, n + 1, dtype=np.int64)))
    return part.append_column("source_file", pa.array([path] * n, pa.string()))



def is_clean(f: LandedFile, max_line_bytes: int) -> bool:
    """No blank or oversized line and the file decoded whole: a candidate for the vectorized path."""
    if f.file_error is not None or f.n_lines == 0:
        return False
    lengths = f.ends - f.starts
    return bool((lengths > 0).all() and (lengths <= max_line_bytes).all())



def parse_clean_files(con: duckdb.DuckDBPyConnection, files: list[tuple[LandedFile, str | None]], max_line_bytes: int, model=RawEvent
                      ) -> tuple[dict[str, pa.Table], list[tuple[LandedFile, str | None]]]:
    """Parse clean files together. Returns (path -> typed table, files that need the per-file path).

    Their decoded texts, one after the other (a newline added where one does not end in one), are one input of one
    vectorized read: DuckDB's cost per input file (≈ 2.5 ms: many small objects from a collector or a CDP cost more
    than their bytes) is paid once, and gzip is not decompressed a second time (`load_file` did it). DuckDB gives a
    line of such a file exactly one row — a record, or a row of nulls for `null` and `{}` — or no row (a line of
    whitespace only), or fails the read (tests/raw/test_parsing_joined.py); so when the rows are as many as the
    lines, row k is line k, and each file's rows are its run of lines. Otherwise the files are read again each
    under its own name (`_parse_named`), which tells the file whose count differs."""
    if not files:
        return {}, []
    tmpdir = tempfile.mkdtemp(prefix="landing-")
    try:
        joined = os.path.join(tmpdir, "batch.jsonl")
        with open(joined, "wb") as out:
            for f, _ in files:
                out.write(f.data)
                if not f.data.endswith(b"\n"):
                    out.write(b"\n")
        try:
            table = _fast_path_many(con, [joined], model, max_line_bytes, with_file=False)
        except (duckdb.Error, OSError, pa.ArrowException):  # errors may surface while streaming the result
            return {}, files  # some file is not clean after all: per file, then line by line
        if table.num_rows != sum(f.n_lines for f, _ in files):
            return _parse_named(con, files, tmpdir, max_line_bytes, model)
    finally:
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)
    counts = np.array([f.n_lines for f, _ in files], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return {f.path: _located(table.slice(offset, n), f.path)
            for (f, _), offset, n in zip(files, offsets.tolist(), counts.tolist())}, []


def _parse_named(con: duckdb.DuckDBPyConnection, files: list[tuple[LandedFile, str | None]], tmpdir: str, max_line_bytes: int,
                 model) -> tuple[dict[str, pa.Table], list[tuple[LandedFile, str | None]]]:
    """`parse_clean_files` with each file read under its own name (its own local path, or an exact decoded copy):
    the files whose row count is their line count, and the others to retry."""
    local = []
    for i, (f, path) in enumerate(files):
        if path is None:  # remote or BOM-prefixed: an exact uncompressed copy
            path = os.path.join(tmpdir, f"{i:06d}.jsonl")
            with open(path, "wb") as out:
                out.write(f.data)
        local.append(path)
    try:
        table = _fast_path_many(con, local, model, max_line_bytes)
    except (duckdb.Error, OSError, pa.ArrowException):
        return {}, files
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
        out[f.path] = _located(part.drop_columns(["__file"]), f.path)
    return out, retry



def _classification_sql(model) -> str:
    """The columns `reason` (why a line of column `line` is rejected before typing: malformed JSON, not an object,
    a nested object where the plan has a struct, a duplicate key the plan reads; NULL = keep) and `jtype`, for the
    per-file and the batched slow path alike."""
    parent_checks = " or ".join(
        f"coalesce(json_type(line, {json_extract._sql_str('$.' + '.'.join(json_extract._quote(p) for p in path))}) not in ('OBJECT', 'NULL'), false)"
        for path in json_extract.struct_parent_paths(model)
    ) or "false"
    return f"""case when not json_valid(line) then 'malformed_json'
                     when json_type(line) <> 'OBJECT' then 'not_an_object'
                     when {parent_checks} then 'wrong_structure'
                     when {json_extract.plan_key_duplicates_sql(model, 'line')} then 'duplicate_key'
                end as reason,
                case when json_valid(line) then json_type(line) end as jtype"""


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
        structure = json_extract.json_transform_structure(model)
        classified = con.sql(f"select line_no, line, {_classification_sql(model)} from _lines")
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
        table = con.sql(f"{json_extract.typed_select(model, src, keep=('line_no',))} order by line_no").arrow().read_all()
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
    """Parse one landed file. `local_path` may point at the same content on disk: plain, or a `.gz` object
    (`landing_files.direct_path`)."""
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
    cols = json_extract.read_json_columns(model)
    # an empty relation with the right types: a zero-row VALUES cast through the same projection
    src = f"(select * from read_json('/dev/null', format='newline_delimited', columns={cols}) limit 0)"
    t = con.sql(json_extract.typed_select(model, src)).arrow().read_all()
    return t.add_column(0, "line_no", pa.array([], pa.int64()))


_WHITESPACE = np.zeros(256, bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True  # what bytes.strip() removes


def _invalid_utf8_lines(f: LandedFile, skip: np.ndarray) -> dict[int, int]:
    """Line index -> offset of the first invalid byte in that line (what `codecs.utf_8_decode(line)` reports).

    Runs of lines are decoded at once (C speed; the whole file first); a failure is mapped to its line and
    decoding resumes at the next line with a short run that doubles while it succeeds, so each bad line costs
    a few lines' decoding. Lines are separated by ASCII bytes, so a line decodes from a fresh state and its
    first error is at the same offset as when the line is decoded alone. `skip`: lines already rejected
    (over-long, blank) whose errors are not reported."""
    out: dict[int, int] = {}
    mv, starts, ends, n = memoryview(f.data), f.starts, f.ends, f.n_lines
    i, run = 0, n
    while i < n:
        j = min(n, i + run)
        lo = int(starts[i])
        try:
            codecs.utf_8_decode(mv[lo : int(ends[j - 1])], "strict", True)
            i, run = j, run * 2
        except UnicodeDecodeError as exc:
            at = lo + exc.start
            bad = i + int(np.searchsorted(starts[i:j], at, side="right")) - 1
            if not skip[bad]:
                out[bad] = at - int(starts[bad])
            i, run = bad + 1, 16
    return out


def parse_slow_files(con: duckdb.DuckDBPyConnection, files: list[LandedFile], max_line_bytes: int, model=RawEvent,
                     stats: dict | None = None) -> list[ParsedFile]:
    """The slow path for many files at once, with the results of `parse_file` on each file's slow path
    (same typed rows, same rejects in the same order), in the order given.

    Every line of every file goes into ONE registered Arrow table (file index, line number, text): over-long,
    blank and invalid UTF-8 lines are found with numpy over the concatenated bytes, the rest is classified and
    json-transformed by two DuckDB queries whatever the number of files, then split back per file.
    `stats["queries"]` counts the DuckDB queries issued."""
    stats = stats if stats is not None else {}
    stats.setdefault("queries", 0)
    if not files:
        return []
    counts = np.array([f.n_lines for f in files], np.int64)
    total = int(counts.sum())
    sizes = np.array([len(f.data) for f in files], np.int64)
    bases = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    data = b"".join(f.data for f in files)
    starts = np.concatenate([f.starts.astype(np.int64) + b for f, b in zip(files, bases)]) if total else np.zeros(0, np.int64)
    ends = np.concatenate([f.ends.astype(np.int64) + b for f, b in zip(files, bases)]) if total else np.zeros(0, np.int64)
    file_idx = np.repeat(np.arange(len(files), dtype=np.int32), counts)
    first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    line_no = np.arange(total, dtype=np.int64) - np.repeat(first, counts) + 1
    lengths = ends - starts
    too_large = lengths > max_line_bytes
    # blank (what bytes.strip() empties): empty, or starting with whitespace and holding nothing else; only
    # lines starting with whitespace (rare) are looked at one by one
    buf = np.frombuffer(data, dtype=np.uint8)
    blank = lengths == 0
    starts_ws = np.flatnonzero(~blank & ~too_large)
    starts_ws = starts_ws[_WHITESPACE[buf[starts[starts_ws]]]]
    for gi in starts_ws.tolist():
        blank[gi] = not data[int(starts[gi]) : int(ends[gi])].strip()
    bad_utf8 = np.zeros(total, bool)
    utf8_at: dict[int, int] = {}  # global line index -> offset of the invalid byte
    for k, f in enumerate(files):
        if f.n_lines:
            lo = int(first[k])
            for i, at in _invalid_utf8_lines(f, (too_large | blank)[lo : lo + f.n_lines]).items():
                bad_utf8[lo + i] = True
                utf8_at[lo + i] = at
    good = ~(too_large | blank | bad_utf8)
    g = int(good.sum())
    if g:
        # the good lines as one string array without a Python loop: a binary array whose offsets alternate
        # line start / line end (every other value is a separator), then every other value taken
        offsets = np.column_stack((starts[good], ends[good])).ravel()
        spans = pa.LargeBinaryArray.from_buffers(pa.large_binary(), 2 * g - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        text = spans.take(pa.array(np.arange(0, 2 * g - 1, 2, dtype=np.int64))).cast(pa.large_string())
    else:
        text = pa.array([], pa.large_string())
    lines = pa.table({"__f": pa.array(file_idx[good]), "line_no": pa.array(line_no[good]), "line": text})
    structure = json_extract.json_transform_structure(model)
    con.register("_slow_lines", lines)
    try:
        classified = con.sql(f"select __f, line_no, line, {_classification_sql(model)} from _slow_lines").arrow().read_all()
        stats["queries"] += 1
        con.register("_slow_classified", classified)
        src = f"(select __f, line_no, unnest(json_transform(line, {json_extract._sql_str(structure)})) from _slow_classified where reason is null)"
        typed = con.sql(
            f"{json_extract.typed_select(model, src, keep=('line_no', '__f'))} order by __f, line_no"
        ).arrow().read_all()
        stats["queries"] += 1
    finally:
        con.unregister("_slow_lines")
        try:
            con.unregister("_slow_classified")
        except Exception:
            pass
    # --- rejects, per file in the order `_slow_path` gives them: byte-level ones by line, then the classified ones
    per_file: list[list[Reject]] = [[] for _ in files]
    for gi in np.flatnonzero(~good).tolist():
        k, no = int(file_idx[gi]), int(line_no[gi])
        if too_large[gi]:
            per_file[k].append(Reject(no, "line_too_large", f"{int(lengths[gi])} bytes > limit {max_line_bytes}"))
        elif blank[gi]:
            per_file[k].append(Reject(no, "empty_line", "blank line"))
        else:
            per_file[k].append(Reject(no, "invalid_utf8", f"invalid UTF-8 at byte {utf8_at[gi]}"))
    bad = classified.filter(pc.is_valid(classified["reason"])).select(["__f", "line_no", "reason", "jtype"])
    bad = bad.sort_by([("__f", "ascending"), ("line_no", "ascending")])
    for k, no, reason, jtype in zip(*(bad[c].to_pylist() for c in bad.column_names)):
        per_file[k].append(Reject(int(no), reason, _SLOW_DETAIL[reason].format(jtype=str(jtype).lower())))
    # --- typed rows: sorted by file, so each file's rows are one slice
    n_rows = np.bincount(typed["__f"].to_numpy() if typed.num_rows else np.zeros(0, np.int32), minlength=len(files))
    row_first = np.concatenate(([0], np.cumsum(n_rows)[:-1]))
    typed = typed.drop_columns(["__f"])
    empty = None
    out = []
    for k, f in enumerate(files):
        rejects = ([f.file_error] if f.file_error is not None else []) + per_file[k]
        if f.n_lines == 0:
            if empty is None:
                empty = empty_typed(con, model)
                stats["queries"] += 1
            table = empty
        else:
            table = typed.slice(int(row_first[k]), int(n_rows[k]))
        table = table.append_column("source_file", pa.array([f.path] * table.num_rows, pa.string()))
        # an empty file counts as read by the fast path, as `parse_file` reports it
        out.append(ParsedFile(table=table, rejects=rejects, fast_path=f.n_lines == 0))
    return out


_SLOW_DETAIL = {
    "malformed_json": "not valid JSON",
    "not_an_object": "a JSON {jtype}, not an object",
    "wrong_structure": "a nested field (e.g. context, properties) is not an object",
    "duplicate_key": "an object repeats a key the tracking plan reads (which value counts is ambiguous)",
}
