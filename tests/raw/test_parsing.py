"""Pure tests of parsing and validation on a hostile corpus: every line lands in raw XOR quarantine."""

from __future__ import annotations

import gzip
from datetime import datetime, timezone

import pytest

from personalization_assets.raw import events_ingest as ei
from tests.raw.hostile import CASES, hostile_bytes, line, msg

pytestmark = pytest.mark.unit

WINDOW = datetime(2026, 11, 28, 13, tzinfo=timezone.utc)


def ingest(con, files):
    return ei.ingest_event_files(con, files, WINDOW, horizon_days=30, max_future_minutes=1440, max_line_bytes=32768)


def locations(table):
    return {(r["source_file"], r["line_no"]) for r in table.select(["source_file", "line_no"]).to_pylist()}


def test_each_hostile_line_lands_in_raw_xor_quarantine_with_expected_reason(con):
    f = ei.load_file("h.jsonl", hostile_bytes())
    result = ingest(con, [(f, None)])
    raw, q = locations(result.raw), locations(result.quarantine)
    every = {("h.jsonl", i) for i in range(1, len(CASES) + 1)}
    assert raw | q == every, "a line was lost"
    assert not raw & q, "a line is in both raw and quarantine"
    assert result.records_read == result.raw.num_rows + result.quarantine.num_rows == len(CASES)
    reasons = {r["line_no"]: r["reason"] for r in result.quarantine.to_pylist()}
    for i, (name, _, expected) in enumerate(CASES, start=1):
        if expected == "raw":
            assert ("h.jsonl", i) in raw, name
        else:
            assert reasons.get(i) == expected, f"{name}: got {reasons.get(i)}"


def test_quarantine_keeps_the_exact_original_bytes(con):
    data = hostile_bytes()
    result = ingest(con, [(ei.load_file("h.jsonl", data), None)])
    original_lines = data.split(b"\n")
    for r in result.quarantine.to_pylist():
        assert r["original_bytes"] == original_lines[r["line_no"] - 1], r["reason"]
        assert r["original_text"] is not None and r["detail"]


def test_invalid_utf8_text_is_escaped_not_lost(con):
    result = ingest(con, [(ei.load_file("h.jsonl", hostile_bytes()), None)])
    bad = [r for r in result.quarantine.to_pylist() if r["reason"] == "invalid_utf8"][0]
    assert b"\xff\xfe" in bad["original_bytes"] and "\\xff\\xfe" in bad["original_text"]


def test_bom_and_crlf_are_tolerated(con):
    clean = b"".join(line(msg(i)) for i in range(3))
    f = ei.load_file("b.jsonl", b"\xef\xbb\xbf" + clean.replace(b"\n", b"\r\n"))
    result = ingest(con, [(f, None)])
    assert result.raw.num_rows == 3 and result.quarantine.num_rows == 0


def test_truncated_gzip_member_keeps_what_decoded_and_quarantines_the_rest(con):
    payload = b"".join(line(msg(i)) for i in range(50))
    complete = gzip.compress(payload, mtime=0)
    second = gzip.compress(b"".join(line(msg(100 + i)) for i in range(50)), mtime=0)
    f = ei.load_file("t.jsonl.gz", complete + second[: len(second) // 2])
    result = ingest(con, [(f, None)])
    assert f.file_error is not None and f.file_error.reason == "truncated_gzip"
    reasons = [r["reason"] for r in result.quarantine.to_pylist()]
    assert "truncated_gzip" in reasons
    assert result.raw.num_rows >= 50  # the complete first member is fully ingested
    assert result.records_read == result.raw.num_rows + result.quarantine.num_rows


def test_corrupt_gzip_is_one_quarantine_record(con):
    f = ei.load_file("x.jsonl.gz", b"this is not gzip at all")
    result = ingest(con, [(f, None)])
    assert result.raw.num_rows == 0
    assert [r["reason"] for r in result.quarantine.to_pylist()] == ["corrupt_gzip"]
    assert result.records_read == 1


def test_fast_and_slow_paths_produce_identical_rows(con):
    """A clean file takes the vectorized read_json path; one bad line forces line-by-line parsing.
    The good records must come out identical either way."""
    good = b"".join(line(msg(i, userId=None if i % 3 else f"u{i}")) for i in range(40))
    fast = ingest(con, [(ei.load_file("f.jsonl", good), None)])
    slow = ingest(con, [(ei.load_file("f.jsonl", good + b"{broken\n"), None)])
    assert fast.fast_path_files == 1 and slow.fast_path_files == 0
    assert slow.quarantine.num_rows == 1
    assert fast.raw.equals(slow.raw)


def test_fast_path_reads_local_file_directly(con, tmp_path):
    good = b"".join(line(msg(i)) for i in range(10))
    p = tmp_path / "g.jsonl"
    p.write_bytes(good)
    result = ingest(con, [(ei.load_file("g.jsonl", good), str(p))])
    assert result.fast_path_files == 1 and result.raw.num_rows == 10


def test_duplicates_keep_earliest_received_at_across_files(con):
    early = line(msg(1, receivedAt="2026-11-28T13:05:00.000Z"))
    late = line(msg(1, receivedAt="2026-11-28T13:45:00.000Z", event="Content Shared"))
    result = ingest(con, [(ei.load_file("a.jsonl", late), None), (ei.load_file("b.jsonl", early), None)])
    assert result.raw.num_rows == 1
    assert result.raw["source_file"][0].as_py() == "b.jsonl"
    q = result.quarantine.to_pylist()
    assert q[0]["reason"] == "duplicate_message_id" and q[0]["source_file"] == "a.jsonl"


def test_numbers_as_strings_are_not_coerced(con):
    result = ingest(con, [(ei.load_file("n.jsonl", line(msg(1, properties={"dwell_ms": "1200"}))), None)])
    assert result.raw.num_rows == 0
    assert "properties.dwell_ms must be integer" in result.quarantine["detail"][0].as_py()


def test_index_lines_handles_missing_final_newline_and_crlf():
    starts, ends = ei.index_lines(b"a\r\nbb\n\nccc")
    assert list(starts) == [0, 3, 6, 7] and list(ends) == [1, 5, 6, 10]


def test_batch_with_clean_and_dirty_files_parses_each_correctly(con):
    """Files that look clean by their line index but fail to parse (invalid UTF-8, an array on a line)
    must not break the batch's vectorized read: each falls back on its own, nothing is lost."""
    good = b"".join(line(msg(i)) for i in range(5))
    bad_utf8 = b"".join(line(msg(100 + i)) for i in range(3)) + line(msg(200)).replace(b"Content Viewed", b"Con\xfftent")
    array_line = line(msg(300)) + b"[" + line(msg(301)).rstrip(b"\n") + b"]\n"
    files = [(ei.load_file(name, data), None) for name, data in (("a.jsonl", good), ("b.jsonl", bad_utf8), ("c.jsonl", array_line))]
    result = ingest(con, files)
    assert result.raw.num_rows == 5 + 3 + 1
    reasons = sorted(r["reason"] for r in result.quarantine.to_pylist())
    assert reasons == ["invalid_utf8", "not_an_object"]
    assert result.records_read == result.raw.num_rows + result.quarantine.num_rows


def test_local_gzip_objects_give_the_rows_of_their_decoded_text(con, tmp_path):
    """A local `.gz` object, handed to the parser with its own path or as decoded text only: the same rows and
    quarantine either way — several gzip members, zero padding after the last member (which DuckDB refuses when it
    reads the file itself), a bad line in a member, a byte-order mark."""
    from personalization_assets.raw.landing_files import direct_path

    good = [line(msg(i)) for i in range(12)]
    objects = {
        "members.jsonl.gz": gzip.compress(b"".join(good[:5])) + gzip.compress(b"".join(good[5:])),
        "padded.jsonl.gz": gzip.compress(b"".join(good)) + b"\0" * 16,
        "bad_line.jsonl.gz": gzip.compress(b"".join(good[:3])) + gzip.compress(b"{broken\n" + b"".join(good[3:6])),
        "bom.jsonl.gz": gzip.compress(b"\xef\xbb\xbf" + b"".join(good[:4])),
        "plain.jsonl": b"".join(good[6:]),
    }
    in_place, copied = [], []
    for name, data in objects.items():
        path = tmp_path / name
        path.write_bytes(data)
        landed = ei.load_file(name, data)
        in_place.append((landed, direct_path(landed, str(path))))
        copied.append((ei.load_file(name, data), None))
    assert [p is not None for _, p in in_place] == [True, True, True, True, True]
    a, b = ingest(con, in_place), ingest(con, copied)
    assert a.raw.num_rows + a.quarantine.num_rows == a.records_read  # every line accounted for
    assert a.raw.sort_by([("source_file", "ascending"), ("line_no", "ascending")]).equals(
        b.raw.sort_by([("source_file", "ascending"), ("line_no", "ascending")]))
    assert a.quarantine.sort_by([("source_file", "ascending"), ("line_no", "ascending")]).equals(
        b.quarantine.sort_by([("source_file", "ascending"), ("line_no", "ascending")]))
    assert {r["reason"] for r in a.quarantine.to_pylist()} >= {"malformed_json"}
    assert a.records_read == b.records_read == sum(f.n_lines for f, _ in copied)
    # the batch's vectorized read takes the decoded texts (tests/raw/test_parsing_joined.py), so the padded file is on the
    # fast path either way; the one with a bad line is parsed line by line
    assert (a.fast_path_files, b.fast_path_files) == (4, 4)
