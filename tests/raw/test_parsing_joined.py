"""The batch's vectorized read (raw/parsing.py `parse_clean_files`): the decoded texts of a batch's clean files are
one input of one DuckDB read, split back by line counts. What makes that split exact, and what happens when it
cannot be trusted."""

from __future__ import annotations

import duckdb
import pytest

from personalization_assets.raw import parsing
from personalization_assets.raw.events_ingest import load_file
from tests.raw.hostile import line, msg

pytestmark = pytest.mark.unit


def _clean(files):
    return [(f, None) for f in files if parsing.is_clean(f, 32768)]


def _named(con, files, tmp_path):
    out, retry = parsing._parse_named(con, files, str(tmp_path), 32768, parsing.RawEvent)
    return out, [f.path for f, _ in retry]


def _varied_files():
    """Files that end with and without a newline, with CRLF, a byte-order mark, lines DuckDB reads as a row of nulls
    (`null`, `{}`), a single line, and many small ones."""
    good = [line(msg(i)) for i in range(40)]
    raw = {
        "a.jsonl": b"".join(good[:5]),
        "no_trailing_newline.jsonl": b"".join(good[5:8]).rstrip(b"\n"),
        "crlf.jsonl": b"".join(good[8:12]).replace(b"\n", b"\r\n"),
        "bom.jsonl": b"\xef\xbb\xbf" + b"".join(good[12:14]),
        "nulls.jsonl": good[14] + b"null\n{}\n" + good[15],
        "one_line_no_newline.jsonl": good[16].rstrip(b"\n"),
        **{f"small-{i:03d}.jsonl": good[17 + i] for i in range(20)},
        "last.jsonl": b"".join(good[37:]),
    }
    return [load_file(name, data) for name, data in raw.items()]


def test_the_joined_read_gives_each_file_exactly_its_own_lines(con, tmp_path):
    files = _clean(_varied_files())
    assert len(files) == 27
    joined, retry = parsing.parse_clean_files(con, files, 32768)
    assert retry == [] and set(joined) == {f.path for f, _ in files}, "every clean file is taken by the one read"
    named, named_retry = _named(con, files, tmp_path)
    assert named_retry == []
    for f, _ in files:
        assert joined[f.path].num_rows == f.n_lines
        assert joined[f.path].equals(named[f.path]), f.path
        assert joined[f.path]["line_no"].to_pylist() == list(range(1, f.n_lines + 1))
        assert set(joined[f.path]["source_file"].to_pylist()) == {f.path}


def test_a_line_of_whitespace_gives_no_row_and_the_files_are_read_again_by_name(con, tmp_path):
    """A line of whitespace only is clean (not blank) but DuckDB gives it no row: the joined count falls short, so a
    split by line counts would shift every later file's rows by one. The files are read again each under its own
    name: the file with that line is retried alone, the others are taken."""
    good = [line(msg(i)) for i in range(6)]
    files = [load_file("first.jsonl", b"".join(good[:2])), load_file("spaces.jsonl", good[2] + b" \t \n" + good[3]),
             load_file("after.jsonl", b"".join(good[4:]))]
    files = _clean(files)
    assert len(files) == 3
    out, retry = parsing.parse_clean_files(con, files, 32768)
    assert [f.path for f, _ in retry] == ["spaces.jsonl"]
    assert set(out) == {"first.jsonl", "after.jsonl"}
    named, _ = _named(con, files, tmp_path)
    assert out["after.jsonl"].equals(named["after.jsonl"])
    assert out["after.jsonl"]["message_id"].to_pylist() == ["m-4", "m-5"]


@pytest.mark.parametrize("kind, text", [
    ("record", b'{"messageId": "m-x"}'),
    ("null", b"null"),
    ("empty object", b"{}"),
    ("whitespace", b" \t "),
    ("carriage return", b'{"messageId": "m-x"}\r'),
    ("two objects", b'{"messageId": "a"}{"messageId": "b"}'),
    ("two objects, spaced", b'{"messageId": "a"} {"messageId": "b"}'),
    ("array of objects", b'[{"messageId": "a"}, {"messageId": "b"}]'),
    ("number", b"5"),
    ("string", b'"text"'),
])
def test_duckdb_gives_a_line_one_row_no_row_or_an_error(con, tmp_path, kind, text):
    """The contract the split by line counts rests on: no line becomes two rows. Were a DuckDB upgrade to read two
    objects on one line as two records, a file with such a line and one with a whitespace line could keep the batch's
    count while shifting rows between files; this fails first."""
    path = tmp_path / "contract.jsonl"
    path.write_bytes(line(msg(1)) + text + b"\n" + line(msg(2)))
    try:
        rows = parsing._fast_path_many(con, [str(path)], parsing.RawEvent, 32768).num_rows
    except (duckdb.Error, Exception):
        return  # an error sends the batch to the per-file path
    assert rows in (2, 3), f"{kind}: {rows} rows from 3 lines"
