"""The batched slow path (`parsing.parse_slow_files`): every non-clean file of a batch parsed line by line in one
pass gives exactly what the per-file slow path gives (typed rows, rejects with reason, detail and original bytes,
per-file accounting), with a number of DuckDB queries that does not grow with the number of files."""

from __future__ import annotations

import gzip
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from personalization_assets.core.tracking_plan import RawEvent
from personalization_assets.generator import bad_lines
from personalization_assets.raw import events_ingest as ei
from personalization_assets.raw import parsing
from tests.raw.conftest import utc_connection
from tests.raw.hostile import CASES, line, msg
from tests.raw.test_strict_values import STRICT_CASES

pytestmark = pytest.mark.unit
# integration tier: the whole-ingestion comparisons (hundreds of files through both paths, ~10 s each) and the
# per-kind reader test (94 cases, each planning DuckDB's typed JSON extraction a few times: ~0.35 s a case)
HEAVY = pytest.mark.integration

WINDOW = datetime(2026, 11, 28, 13, tzinfo=timezone.utc)
MAX_LINE = 32768


def _generator_kinds() -> list[tuple[str, bytes]]:
    """Every corruption the data generator plants, applied to a well-formed message line (both variants)."""
    base = line(msg(500)).rstrip(b"\n").replace(b": ", b":").replace(b", ", b",")
    base = base.replace(b'"properties":{', b'"properties":{"userAgent":"UA",', 1)
    out = []
    for kind in bad_lines.CORRUPTIONS:
        for variant in (0, 1):
            out.append((f"gen_{kind}_{variant}", bad_lines.corrupt(kind, base, 1764335102000, variant) + b"\n"))
    return out


EXTRA = [
    ("bare_null", b"null\n"), ("json_string", b'"x"\n'), ("json_true", b"true\n"), ("two_objects", b'{"a":1}{"b":2}\n'),
    ("trailing_garbage", b'{"a":1} x\n'), ("context_array", line(msg(600, context=[1]))),
    ("page_as_string", line(msg(601, context={"page": "x"}))), ("surrogate", b'{"a":"\xed\xa0\x80"}\n'),
    ("overlong_utf8", b'{"a":"\xc0\xaf"}\n'), ("truncated_utf8_at_end", b'{"a":"x"}\xe2\x82\n'),
    ("truncated_utf8_before_crlf", b'{"a":"x"}\xe2\r\n'), ("lone_continuation", b'{"a":"\x80"}\n'),
    ("whitespace_only", b" \x0b\x0c\t\r\n"), ("leading_whitespace_json", b" \t" + line(msg(602))),
]
KINDS: list[tuple[str, bytes]] = [(n, d) for n, d, _ in CASES] + [(n, d) for n, d, _ in STRICT_CASES] + _generator_kinds() + EXTRA


def _good(i: int) -> bytes:
    return line(msg(10_000 + i, userId=None if i % 3 else f"u{i}"))


def _many_files(n_files: int = 48) -> list[ei.LandedFile]:
    """Files of a few good lines with a few bad lines of every kind spread over them (each kind lands in
    several files), plus the odd ones: empty, truncated gzip, only bad lines, BOM + CRLF, all clean."""
    files = []
    for k in range(n_files):
        body = [_good(100 * k + j) for j in range(4)]
        for j in range(4):
            name, data = KINDS[(4 * k + j) % len(KINDS)]
            body.insert(1 + 2 * j, data)
        files.append(ei.load_file(f"f{k:03d}.jsonl", b"".join(body)))
    files.append(ei.load_file("empty.jsonl", b""))
    gz = gzip.compress(b"".join(_good(90_000 + j) for j in range(3)) + b"{broken\n", mtime=0)
    files.append(ei.load_file("trunc.jsonl.gz", gz[:-12]))
    files.append(ei.load_file("only_bad.jsonl", b"{x\n\n[1]\n"))
    files.append(ei.load_file("bom_crlf.jsonl", b"\xef\xbb\xbf" + (_good(91_000) + b"\xff{\n" + _good(91_001)).replace(b"\n", b"\r\n")))
    # many invalid UTF-8 lines among good ones (Latin-1 text): each is found, at its own byte offset
    latin1 = [(_good(94_000 + j) if j % 3 else line(msg(94_000 + j, event="Caf\u00e9 " * (j % 5 + 1))).replace(b"\\u00e9", b"\xe9"))
              for j in range(60)]
    files.append(ei.load_file("latin1.jsonl", b"".join(latin1)))
    files.append(ei.load_file("clean.jsonl", b"".join(_good(92_000 + j) for j in range(5))))
    files.append(ei.load_file("clean_but_null.jsonl", b"".join(_good(93_000 + j) for j in range(3)) + b"null\n"))
    return files


def _per_file_slow(con, f: ei.LandedFile):
    """What `parse_file` does on its slow path for one file (the reference)."""
    rejects = [f.file_error] if f.file_error is not None else []
    if f.n_lines == 0:
        table = parsing.empty_typed(con)
    else:
        table, line_rejects = parsing._slow_path(con, f, MAX_LINE, RawEvent)
        rejects += line_rejects
    return table.append_column("source_file", pa.array([f.path] * table.num_rows, pa.string())), rejects


def _rows(table: pa.Table) -> str:
    return repr(table.to_pylist())  # NaN-safe (a NaN never equals itself in Table.equals)


def _rejects(rejects) -> list[tuple]:
    return [(r.line_no, r.reason, r.detail) for r in rejects]


def test_the_corpus_holds_every_bad_line_kind():
    files = _many_files()
    reasons = {r.reason for p in parsing.parse_slow_files(__import__("duckdb").connect(), files, MAX_LINE) for r in p.rejects}
    assert reasons >= {"malformed_json", "invalid_utf8", "not_an_object", "empty_line", "line_too_large",
                       "wrong_structure", "duplicate_key", "truncated_gzip"}
    assert {n for n, _ in KINDS} >= {f"gen_{k}_0" for k in bad_lines.CORRUPTIONS}


@HEAVY
def test_batched_slow_path_equals_the_per_file_slow_path(con):
    files = _many_files()
    stats: dict = {}
    batched = parsing.parse_slow_files(con, files, MAX_LINE, stats=stats)
    assert [p.table.num_rows for p in batched] and len(batched) == len(files)
    for f, got in zip(files, batched):
        table, rejects = _per_file_slow(con, f)
        assert got.table.schema == table.schema, f.path
        assert _rows(got.table) == _rows(table), f.path
        assert _rejects(got.rejects) == _rejects(rejects), f.path
        assert got.fast_path == (f.n_lines == 0) == parsing.parse_file(con, f, MAX_LINE).fast_path if not ei.is_clean(f, MAX_LINE) else not got.fast_path
        # quarantine rows (with the original bytes) built from either are identical
        qa = ei.build_quarantine("events", [(f.path, r) for r in got.rejects], {f.path: f})
        qb = ei.build_quarantine("events", [(f.path, r) for r in rejects], {f.path: f})
        assert qa.equals(qb), f.path
        assert f.n_lines + (f.file_error is not None) == got.table.num_rows + len(got.rejects), f.path
    # the typed rows are not trivially empty and the rejects cover the kinds
    assert sum(p.table.num_rows for p in batched) > 4 * 48
    assert stats["queries"] <= 3


def _ingest(con, files):
    return ei.ingest_event_files(con, [(f, None) for f in files], WINDOW, horizon_days=30, max_future_minutes=1440,
                                 max_line_bytes=MAX_LINE)


def _per_file_parse(con, files, max_line_bytes, model=RawEvent, stats=None):
    return [parsing.parse_file(con, f, max_line_bytes, model=model) for f in files]  # the path this replaced


def _assert_same_result(a, b):
    assert a.raw.schema == b.raw.schema
    assert _rows(a.raw) == _rows(b.raw)
    assert a.quarantine.equals(b.quarantine)  # reasons, details, file, line number and the original bytes
    assert (a.records_read, a.files, a.fast_path_files) == (b.records_read, b.files, b.fast_path_files)


@HEAVY
def test_ingestion_with_the_batched_slow_path_equals_per_file_parsing(con, monkeypatch):
    files = _many_files()
    batched = _ingest(con, files)
    monkeypatch.setattr(ei, "parse_slow_files", _per_file_parse)
    per_file = _ingest(con, files)
    _assert_same_result(batched, per_file)
    # both paths are exercised: files whose bad lines are only semantic (and the clean, the bare-null and the
    # empty file) count as read by the fast path, as each alone would be; the others went line by line
    assert 3 < batched.fast_path_files < len(files) - 20
    assert batched.raw.num_rows > 0 and batched.quarantine.num_rows > 48
    assert batched.records_read == batched.raw.num_rows + batched.quarantine.num_rows


@HEAVY
def test_ingestion_of_a_generated_landing_equals_per_file_parsing(con, monkeypatch, tmp_path):
    """The generator's own landing (5% bad lines of every kind over many small files)."""
    from tests.helpers import generate

    generate(tmp_path / "landing", users=40, events=1500, bad_fraction=0.05, days=1)
    paths = sorted(p for p in (tmp_path / "landing").rglob("*.jsonl*") if "hour=" in str(p))
    assert len(paths) > 10
    files = [ei.load_file(str(p.relative_to(tmp_path)), p.read_bytes()) for p in paths]
    batched = _ingest(con, files)
    monkeypatch.setattr(ei, "parse_slow_files", _per_file_parse)
    _assert_same_result(batched, _ingest(con, files))
    assert batched.quarantine.num_rows > 0


class CountingConnection:
    """A real DuckDB connection that counts the queries issued through it."""

    def __init__(self, con):
        self._con, self.queries = con, 0

    def sql(self, *a, **k):
        self.queries += 1
        return self._con.sql(*a, **k)

    def execute(self, *a, **k):
        self.queries += 1
        return self._con.execute(*a, **k)

    query = sql

    def __getattr__(self, name):
        return getattr(self._con, name)


def _files_with_one_bad_line(n: int) -> list[ei.LandedFile]:
    rng = np.random.default_rng(n)
    files = []
    for k in range(n):
        body = [_good(1000 * k + j) for j in range(5)]
        name, data = KINDS[int(rng.integers(len(KINDS)))]
        body.insert(2, b"{broken\n" if k % 2 else data)
        files.append(ei.load_file(f"q{k:03d}.jsonl", b"".join(body)))
    return files


def test_parsing_issues_a_bounded_number_of_queries_whatever_the_number_of_files(con):
    counts = {}
    for n in (4, 40):
        c = CountingConnection(con)
        result = _ingest(c, _files_with_one_bad_line(n))
        assert result.records_read == 6 * n == result.raw.num_rows + result.quarantine.num_rows
        counts[n] = c.queries
    assert counts[40] == counts[4], counts  # per-file parsing issued ~4 queries per file
    stats: dict = {}
    parsing.parse_slow_files(con, _files_with_one_bad_line(40), MAX_LINE, stats=stats)
    assert stats["queries"] == 2


def _kind_file(i: int) -> ei.LandedFile:
    return ei.load_file(f"k{i:03d}.jsonl", _good(1) + KINDS[i][1] + _good(2))


@pytest.fixture(scope="module")
def slow_by_kind():
    """Each kind's file through the batched slow path, all in one batch (a file's result in a batch is its result
    alone: test_batched_slow_path_equals_the_per_file_slow_path)."""
    c = utc_connection()
    try:
        return parsing.parse_slow_files(c, [_kind_file(i) for i in range(len(KINDS))], MAX_LINE)
    finally:
        c.close()


@HEAVY
@pytest.mark.parametrize("i", range(len(KINDS)), ids=[n for n, _ in KINDS])
def test_the_vectorized_reader_refuses_a_file_exactly_when_the_slow_path_says_so(con, slow_by_kind, i):
    """`parse_validate` sends a file the batched read refused to the batched slow path and keeps that result
    when a line was rejected there; read alone, such a file must also fail the vectorized reader (else its
    accounting would differ from `parse_file`), except a bare `null`, which DuckDB reads as a record of nulls
    (that file is read again on the fast path)."""
    name = KINDS[i][0]
    f = _kind_file(i)
    slow = slow_by_kind[i]
    alone = parsing.parse_file(con, f, MAX_LINE)
    if not ei.is_clean(f, MAX_LINE):
        assert not alone.fast_path
    else:
        assert alone.fast_path == all(map(ei._read_json_takes, slow.rejects)), (name, _rejects(slow.rejects))
