"""Landing files of CDP spec messages -> validated raw rows + quarantine rows.

Pure functions over bytes and DuckDB; no Dagster here (the asset in `raw/assets.py` wires them).

Design (see docs/ARCHITECTURE.md, "Ingestion"):

* Every file is read into memory (decompressed), and its line boundaries are indexed with numpy, so
  the number of lines read is known independently of any parser.
* Fast path: DuckDB's vectorized, multi-threaded ``read_json`` with the tracking plan's structure
  (leaves typed ``JSON`` so a value's JSON type is preserved). It is taken only when the file is
  clean at the syntax level: it parses, and it yields exactly one record per line.
* Slow path, for files with any syntactic problem (blank, oversized, invalid UTF-8, malformed JSON,
  non-object, wrong nesting): each line is classified on its own, bad lines are quarantined with a
  reason and good lines go through the same structure with ``json_transform``. Both paths feed the
  same typed projection, so a record's raw row does not depend on which path read it.
* Semantic validation (missing ids, unknown types, type violations, timestamp horizon) runs the
  pandera tracking plan on the typed rows of the whole partition; duplicates of a messageId are kept
  once per partition (earliest receivedAt). Rejected rows are quarantined with their exact original
  bytes, fetched through the line index.

Invariant (tested, and enforced by an asset check): records read = raw rows + quarantined rows.
"""

from __future__ import annotations

import codecs
import copy
import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pda
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.raw import json_extract
from personalization_assets.core.schemas import arrow_schema
from personalization_assets.core.tracking_plan import Quarantine, RawEvent

BOM = b"\xef\xbb\xbf"
MAX_QUARANTINE_BYTES = 1 << 20  # a whole unreadable file is kept up to 1 MiB; the landing file itself stays

QUARANTINE_SCHEMA = arrow_schema(Quarantine)  # generated from the pandera model (core/schemas.py)


@dataclass
class Reject:
    line_no: int
    reason: str
    detail: str


@dataclass
class LandedFile:
    """A landing file's decompressed content and the byte span of each line (newline excluded)."""

    path: str
    data: bytes
    starts: np.ndarray
    ends: np.ndarray
    file_error: Reject | None = None

    @property
    def n_lines(self) -> int:
        return int(self.starts.shape[0])

    def line_bytes(self, line_no: int) -> bytes:
        i = line_no - 1
        return self.data[int(self.starts[i]) : int(self.ends[i])]


def decompress(path: str, raw: bytes) -> tuple[bytes, Reject | None]:
    """Gunzip `.gz` files (all members). A damaged stream keeps what decoded and reports the damage."""
    if not path.endswith(".gz"):
        return raw, None
    out, pos = [], 0
    while pos < len(raw):
        d = zlib.decompressobj(wbits=31)
        try:
            out.append(d.decompress(raw[pos:]))
            out.append(d.flush())
        except zlib.error as exc:
            return b"".join(out), Reject(0, "corrupt_gzip", f"gzip stream damaged after {sum(map(len, out))} bytes: {exc}")
        if not d.eof:
            return b"".join(out), Reject(0, "truncated_gzip", f"gzip stream ends early after {sum(map(len, out))} decompressed bytes")
        consumed = len(raw) - pos - len(d.unused_data)
        pos += consumed
        if consumed == 0:
            break
        # tolerate zero padding after the last member, as gzip(1) does
        if raw[pos:].strip(b"\x00") == b"":
            break
    return b"".join(out), None


def index_lines(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start/end offsets of each line. A trailing newline does not start a new line; CR before LF is dropped."""
    if not data:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10).astype(np.int64)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(data)]))
    if data.endswith(b"\n"):
        starts, ends = starts[:-1], ends[:-1]
    # strip one CR before LF (Windows line endings)
    nonempty = ends > starts
    has_cr = np.zeros_like(nonempty)
    idx = np.flatnonzero(nonempty)
    has_cr[idx] = buf[ends[idx] - 1] == 13
    ends = ends - has_cr.astype(np.int64)
    return starts, ends


def load_file(path: str, raw: bytes) -> LandedFile:
    data, err = decompress(path, raw)
    if data.startswith(BOM):
        # A UTF-8 byte-order mark is an encoding artefact of some exporters, not part of the record.
        data = data[len(BOM) :]
    starts, ends = index_lines(data)
    if err is not None and not data:
        err.detail += "; nothing could be decoded"
    return LandedFile(path=path, data=data, starts=starts, ends=ends, file_error=err)


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
        return ParsedFile(table=_empty_typed(con, model).append_column("source_file", pa.array([], pa.string())), rejects=rejects)
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


def _empty_typed(con, model=RawEvent) -> pa.Table:
    select, type_errors = json_extract.typed_projection(model, root=None)
    cols = json_extract.read_json_columns(model)
    # an empty relation with the right types: a zero-row VALUES cast through the same projection
    src = f"(select * from read_json('/dev/null', format='newline_delimited', columns={cols}) limit 0)"
    t = con.sql(f"select {', '.join(select)}, {type_errors} from {src}").arrow().read_all()
    return t.add_column(0, "line_no", pa.array([], pa.int64()))


# --------------------------------------------------------------------------------------------------
# Partition-level semantic validation


# RawEvent columns the per-row validation at ingestion leaves out: JSON text (its type and values are checked
# by the typed projection), values set by construction (timestamp_source is derived with `timestamp`: a
# message without any time must be quarantined as `missing_timestamp`, not under a second reason) and columns
# the ingestion adds after validation. The pandera asset check on the written table validates all columns.
NOT_VALIDATED_PER_ROW = ("properties", "traits", "group_traits", "integrations", "cdp_metadata", "consent_preferences",
                         "timestamp_source", "source_file", "cdp_source_id")


def with_ingestion_columns(table: pa.Table) -> pa.Table:
    """Columns of RawEvent the ingestion fills that are not read from the message: `cdp_source_id` (null here: the
    hour-batch function knows no layout; `raw/ingest.py` sets it from the object's layout)."""
    if "cdp_source_id" not in table.column_names:
        table = table.append_column("cdp_source_id", pa.nulls(table.num_rows, pa.string()))
    return table


def event_schema(horizon_days: int, max_future_minutes: int) -> pda.DataFrameSchema:
    """The tracking plan: the RawEvent model plus type and time-horizon rules (relative to each row's landing hour)."""
    horizon = pd.Timedelta(days=horizon_days)
    future = pd.Timedelta(minutes=max_future_minutes)
    checks = value_checks() + [
        pda.Check(
            lambda df: df["timestamp"].isna() | (df["timestamp"] >= df["landing_hour"] - horizon),
            name="timestamp_before_horizon",
            error=f"event time is before the ingestion horizon ({horizon_days} days before the landing hour)",
            ignore_na=False,
        ),
        pda.Check(
            lambda df: df["timestamp"].isna() | df["received_at"].isna() | (df["timestamp"] <= df["received_at"] + future),
            name="timestamp_in_future",
            error=f"event time is more than {max_future_minutes} minutes after receivedAt",
            ignore_na=False,
        ),
    ]
    base = RawEvent.to_schema()
    keep = [c for c in base.columns if c not in NOT_VALIDATED_PER_ROW]
    schema = base.select_columns(keep)
    # Column types are guaranteed by construction (the typed projection casts every value or reports a
    # type error): skip pandera's per-element dtype scan here and keep the value checks. The pandera check
    # on the written table (asset check) validates dtypes too.
    schema = schema.update_columns({c: {"dtype": None} for c in keep})
    schema = schema.add_columns({"_type_errors": pda.Column(object, nullable=False), "_type_reason": pda.Column(object, nullable=True)})
    schema = copy.deepcopy(schema)
    schema.checks = list(schema.checks) + checks
    return schema


VALUE_ERRORS = {
    "wrong_type": "a field's JSON type does not match the tracking plan",
    "non_finite_number": "a number is NaN, Infinity or overflows a double",
    "timestamp_without_offset": "a timestamp has no explicit UTC offset (or is a date only)",
    "timestamp_offset_out_of_range": "a timestamp's UTC offset is outside -12:00..+14:00",
    "duplicate_key": "a JSON object repeats a key",
}
assert tuple(VALUE_ERRORS) == json_extract.VALUE_REASONS


def value_checks() -> list:
    """One pandera check per value-level reason, read from `_type_reason` (set by the typed projection)."""
    return [
        pda.Check(lambda df, code=code: df["_type_reason"].ne(code), name=code, error=error, ignore_na=False)
        for code, error in VALUE_ERRORS.items()
    ]


def _reason_code(column: str, check: str) -> str:
    if check == "not_nullable":
        return f"missing_{column}"
    if check.startswith("dtype("):
        return f"wrong_type_{column}"
    return f"invalid_{column}"


def semantic_failures(frame: pd.DataFrame, schema: pda.DataFrameSchema) -> dict[int, Reject]:
    """Row position -> Reject whose reason is the first failed check's code and whose detail lists all.

    Dataframe-level checks are named after their reason code (e.g. ``missing_identity``); pandera reports
    them by their error text once per column, so they are mapped back to the name and de-duplicated.
    """
    try:
        schema.validate(frame, lazy=True, inplace=True)  # the frame is ours: no defensive copy
        return {}
    except pda.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    df_checks = {(c.error or c.name): c.name for c in schema.checks}
    df_checks.update({c.name: c.name for c in schema.checks})
    out: dict[int, dict[str, str]] = {}
    for row in cases.itertuples(index=False):
        idx = row.index
        if idx is None or (isinstance(idx, float) and np.isnan(idx)):
            # a schema-level failure (e.g. a column's dtype) has no row: never let it pass silently
            raise ValueError(f"tracking plan failed at schema level: {row.column} {row.check} {row.failure_case}")
        check = str(row.check)
        if row.schema_context == "DataFrameSchema":
            code = df_checks.get(check, check)
            if code in VALUE_ERRORS:
                detail = "; ".join(frame["_type_errors"].iloc[int(idx)])
            else:
                detail = check
        else:
            code = _reason_code(str(row.column), check)
            detail = f"{row.column}: {check} (value: {str(row.failure_case)[:200]})"
        out.setdefault(int(idx), {}).setdefault(code, detail)
    return {i: Reject(-1, next(iter(v)), "; ".join(v.values())) for i, v in out.items()}


@dataclass
class PartitionResult:
    raw: pa.Table
    quarantine: pa.Table
    records_read: int
    files: list[str]
    fast_path_files: int
    suppressed: int = 0


# raw columns that identify a subject, and how each is normalized before pseudonymization
SUBJECT_COLUMNS = {"user_id": "id", "anonymous_id": "id", "previous_id": "id", "trait_email": "email"}


def suppressed_mask(table: pa.Table, suppressed: set[str], pseudonymize) -> pa.Array:
    """Rows whose identifiers pseudonymize into the suppression list (`pseudonymize(values, kind)`)."""
    from personalization_assets.core.pseudonymize import rows_matching_pseudonyms

    return rows_matching_pseudonyms(table, SUBJECT_COLUMNS, suppressed, pseudonymize)[0]


def _validation_frame(table: pa.Table, schema: pda.DataFrameSchema) -> pd.DataFrame:
    cols = [c for c in schema.columns]
    sub = table.select(cols)
    frame = sub.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
    for c in cols:
        if pa.types.is_string(sub.schema.field(c).type) or pa.types.is_large_string(sub.schema.field(c).type):
            frame[c] = frame[c].astype(object)
    return frame


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


def validate_rows(table: pa.Table, schema: pda.DataFrameSchema, quarantine_rows: list) -> pa.Table:
    """Rows that pass the pandera schema; each failing row goes to `quarantine_rows` with its reason."""
    failures = semantic_failures(_validation_frame(table, schema), schema) if table.num_rows else {}
    if not failures:
        return table
    mask = np.ones(table.num_rows, dtype=bool)
    positions = np.fromiter(failures.keys(), dtype=np.int64)
    mask[positions] = False
    locations = table.select(["source_file", "line_no"]).take(pa.array(positions)).to_pylist()
    for pos, loc in zip(positions.tolist(), locations):
        r = failures[pos]
        quarantine_rows.append((loc["source_file"], Reject(int(loc["line_no"]), r.reason, r.detail)))
    return table.filter(pa.array(mask))


def _hour_array(start: datetime, n: int) -> pa.Array:
    start_us = int(pd.Timestamp(start).value // 1000)
    return pa.array(np.full(n, start_us, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC"))


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
    fast_tables, _retry = parse_clean_files(con, clean, max_line_bytes)
    fast_paths = set(fast_tables)
    for landed, local_path, start in items:
        if landed.path in fast_paths:
            table = fast_tables[landed.path]
        else:
            parsed = parse_file(con, landed, max_line_bytes, local_path)
            if parsed.fast_path:
                fast_paths.add(landed.path)
            table = parsed.table
            for r in parsed.rejects:
                quarantine_rows.append((landed.path, r))
        if table.num_rows:
            hours = _hour_array(start, table.num_rows)
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
        empty = _empty_typed(con).append_column("source_file", pa.array([], pa.string()))
        table = empty.append_column("landing_hour", _hour_array(items[0][2] if items else datetime.now(), 0))
    table = flag_duplicate_keys(table)
    # --- semantic validation with the pandera tracking plan
    valid = validate_rows(table, schema, quarantine_rows)
    return valid, quarantine_rows, records_read, fast_paths


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
    keyed = valid.select(["message_id", "received_at", "source_file", "line_no", "landing_hour"]).append_column(
        "_pos", pa.array(np.arange(valid.num_rows, dtype=np.int64))
    )
    con.register("_valid", keyed)
    try:
        dups = con.sql(
            """
            select _pos, line_no, source_file, message_id, kept from (
                select *,
                    row_number() over w as rn,
                    first_value(source_file || ':' || line_no) over w as kept
                from _valid
                window w as (partition by landing_hour, message_id order by received_at, source_file, line_no)
            ) where rn > 1
            """
        ).arrow().read_all()
    finally:
        con.unregister("_valid")
    if dups.num_rows:
        for d in dups.to_pylist():
            quarantine_rows.append(
                (d["source_file"], Reject(int(d["line_no"]), "duplicate_message_id", f"messageId {d['message_id']} already kept from {d['kept']}"))
            )
        keep = np.ones(valid.num_rows, dtype=bool)
        keep[dups["_pos"].to_numpy()] = False
        valid = valid.filter(pa.array(keep))
    raw_all = _order_like_model(with_ingestion_columns(valid.drop_columns(["_type_errors", "_type_reason"])))
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
    for i, (start, files) in enumerate(partitions):
        hour = _hour_array(start, 1)[0]
        h = hour.cast(pa.int64()).as_py()
        lo, hi = int(np.searchsorted(hours, h, "left")), int(np.searchsorted(hours, h, "right"))
        raw = raw_all.slice(lo, hi - lo)
        paths = {f.path for f, _ in files}
        q_rows = [(p, r) for p, r in quarantine_rows if p in paths]
        quarantine = build_quarantine("events", q_rows, by_path)
        n_suppressed = 0 if suppressed_rows is None else pc.sum(pc.cast(pc.equal(suppressed_rows["landing_hour"], hour), pa.int64())).as_py() or 0
        results.append(PartitionResult(raw=raw, quarantine=quarantine, records_read=records_read[i], files=sorted(paths),
                                       fast_path_files=fast_files[i], suppressed=n_suppressed))
    return results


def _order_like_model(table: pa.Table, model=RawEvent) -> pa.Table:
    order = [c for c in model.to_schema().columns if c in table.column_names]
    return table.select(order)


def build_quarantine(source: str, rows: list[tuple[str, Reject]], files: dict[str, LandedFile] | None = None, originals: dict | None = None) -> pa.Table:
    """Quarantine rows with the exact original bytes of each rejected record."""
    cols = {n: [] for n in QUARANTINE_SCHEMA.names}
    for path, r in sorted(rows, key=lambda x: (x[0], x[1].line_no)):
        original: bytes | None = None
        if originals is not None and (path, r.line_no) in originals:
            original = originals[(path, r.line_no)]
        elif files is not None and path in files:
            f = files[path]
            if r.line_no >= 1:
                original = f.line_bytes(r.line_no)
            else:
                original = f.data[:MAX_QUARANTINE_BYTES]
        cols["source"].append(source)
        cols["source_file"].append(path)
        cols["line_no"].append(r.line_no)
        cols["reason"].append(r.reason)
        cols["detail"].append(r.detail)
        cols["original_bytes"].append(original)
        cols["original_text"].append(None if original is None else original.decode("utf-8", "backslashreplace"))
    return pa.table(cols, schema=QUARANTINE_SCHEMA)
