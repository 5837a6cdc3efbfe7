"""Values a strict JSON/ISO reader rejects are quarantined, each with its own reason, through both the
vectorized (read_json) and the line-by-line (json_transform) parsing paths, with identical results.

Built to break the lenient reader this replaced: DuckDB parses `Infinity`/`NaN` and turns `1e400` into +inf,
keeps the first of two duplicate keys, and casts timestamps with any offset (+24:00, +14:30), with no
offset at all, or a bare date."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from personalization_assets.raw import events_ingest as ei
from personalization_assets.raw import reference_ingest as ri
from personalization_assets.core.tracking_plan import RawContent, RawEvent
from personalization_assets.raw import json_extract
from tests.raw.hostile import hostile_bytes, line, msg

pytestmark = pytest.mark.unit

WINDOW = datetime(2026, 11, 28, 13, tzinfo=timezone.utc)


def _replace(b: bytes, old: bytes, new: bytes) -> bytes:
    assert old in b, old
    return b.replace(old, new, 1)


BASE = line(msg(1))
# (name, line, expected reason or "raw")
STRICT_CASES: list[tuple[str, bytes, str]] = [
    ("price_infinity", line(msg(101, properties={"price": float("inf"), "currency": "EUR"})), "non_finite_number"),
    ("price_minus_infinity", line(msg(102, properties={"price": float("-inf")})), "non_finite_number"),
    ("price_nan", line(msg(103, properties={"price": float("nan")})), "non_finite_number"),
    ("price_overflow_1e400", _replace(line(msg(104, properties={"price": 1.5})), b'"price": 1.5', b'"price": 1e400'), "non_finite_number"),
    ("unread_property_nan", line(msg(105, properties={"content_id": "c-1", "score": float("nan")})), "non_finite_number"),
    ("nested_property_overflow", _replace(line(msg(106, properties={"content_id": "c-1", "x": {"y": 2.5}})), b'"y": 2.5', b'"y": -2e999'), "non_finite_number"),
    ("nan_inside_a_string_is_fine", line(msg(107, properties={"content_id": "c-1", "note": "NaN Infinity 1e400"})), "raw"),
    ("big_but_finite_number", _replace(line(msg(108, properties={"price": 1.5})), b'"price": 1.5', b'"price": 1.5e300'), "raw"),
    ("duplicate_top_level_key", _replace(line(msg(109)), b'"type": "track"', b'"type": "track", "type": "identify"'), "duplicate_key"),
    ("duplicate_key_in_context", _replace(line(msg(110)), b'"ip": "203.0.113.7"', b'"ip": "203.0.113.7", "ip": "198.51.100.1"'), "duplicate_key"),
    ("duplicate_consent_category", _replace(line(msg(111)), b'"personalization": true', b'"personalization": false, "personalization": true'), "duplicate_key"),
    ("duplicate_key_in_properties", _replace(line(msg(112)), b'"content_id": "c-1"', b'"content_id": "c-1", "content_id": "c-2"'), "duplicate_key"),
    ("duplicate_key_deep_in_properties", line(msg(113, properties={"content_id": "c-1", "items": [{"sku": "a"}]})).replace(b'{"sku": "a"}', b'{"sku": "a", "sku": "b"}'), "duplicate_key"),
    ("same_key_at_different_depths_is_fine", line(msg(114, properties={"content_id": "c-1", "items": [{"content_id": "c-9"}]})), "raw"),
    ("duplicate_of_an_unread_root_key_is_not_stored", _replace(line(msg(115)), b'"type": "track"', b'"type": "track", "zz": 1, "zz": 2'), "raw"),
    ("offset_plus_24", line(msg(116, timestamp="2026-11-28T13:05:00+24:00")), "timestamp_offset_out_of_range"),
    ("offset_plus_14_30", line(msg(117, timestamp="2026-11-28T13:05:00+14:30")), "timestamp_offset_out_of_range"),
    ("offset_minus_12_01", line(msg(118, receivedAt="2026-11-28T13:05:02-12:01")), "timestamp_offset_out_of_range"),
    ("offset_minutes_99", line(msg(119, sentAt="2026-11-28T13:05:01+01:99")), "timestamp_offset_out_of_range"),
    ("offset_plus_14_00_ok", line(msg(120, timestamp="2026-11-29T03:05:00+14:00")), "raw"),
    ("offset_minus_12_00_ok", line(msg(121, timestamp="2026-11-28T01:05:00-12:00")), "raw"),
    ("offset_plus_0530_ok", line(msg(122, timestamp="2026-11-28T18:35:00.250+0530")), "raw"),
    ("no_offset", line(msg(123, timestamp="2026-11-28T13:05:00")), "timestamp_without_offset"),
    ("date_only", line(msg(124, timestamp="2026-11-28")), "timestamp_without_offset"),
    ("named_zone_not_iso", line(msg(125, timestamp="2026-11-28 13:05:00 Europe/Berlin")), "timestamp_without_offset"),
    ("received_at_without_offset", line(msg(126, receivedAt="2026-11-28T13:05:02")), "timestamp_without_offset"),
    ("sent_at_date_only", line(msg(127, sentAt="2026-11-28")), "timestamp_without_offset"),
    ("good", line(msg(128)), "raw"),
]


def _ingest(con, data: bytes, name="s.jsonl"):
    f = ei.load_file(name, data)
    return ei.ingest_event_files(con, [(f, None)], WINDOW, horizon_days=30, max_future_minutes=1440, max_line_bytes=32768)


def _outcomes(result) -> dict[int, str]:
    out = {r["line_no"]: "raw" for r in result.raw.select(["line_no"]).to_pylist()}
    for r in result.quarantine.to_pylist():
        assert r["line_no"] not in out, "a line is in raw and quarantine"
        out[r["line_no"]] = r["reason"]
    return out


@pytest.mark.parametrize("i", range(len(STRICT_CASES)), ids=[c[0] for c in STRICT_CASES])
def test_each_strict_value_case_alone_in_the_fast_and_the_slow_path(con, i):
    name, data, expected = STRICT_CASES[i]
    clean = b"".join(line(msg(900 + k)) for k in range(3))
    # alone with clean lines: the vectorized path is tried first
    fast = _ingest(con, clean + data)
    # the same plus one malformed line: the file is parsed line by line
    slow = _ingest(con, clean + data + b"{broken\n")
    assert slow.fast_path_files == 0
    assert _outcomes(fast)[4] == expected, f"{name} (fast path)"
    assert _outcomes(slow)[4] == expected, f"{name} (slow path)"
    assert fast.raw.equals(slow.raw)
    fq = fast.quarantine.drop_columns(["original_text", "original_bytes"]).to_pylist()
    sq = [r for r in slow.quarantine.drop_columns(["original_text", "original_bytes"]).to_pylist() if r["line_no"] != 5]
    assert fq == sq
    if expected != "raw":
        q = [r for r in fast.quarantine.to_pylist() if r["line_no"] == 4][0]
        assert q["original_bytes"] == data.rstrip(b"\n") and q["detail"]


def test_whole_corpus_fast_and_slow_paths_agree(con):
    data = b"".join(c[1] for c in STRICT_CASES)
    fast, slow = _ingest(con, data), _ingest(con, data + b"[1]\n")
    expected = {i: c[2] for i, c in enumerate(STRICT_CASES, start=1)}
    assert {k: v for k, v in _outcomes(fast).items()} == expected
    assert {k: v for k, v in _outcomes(slow).items() if k <= len(STRICT_CASES)} == expected
    assert fast.raw.equals(slow.raw)
    assert fast.records_read == fast.raw.num_rows + fast.quarantine.num_rows


def test_no_infinite_or_nan_value_reaches_raw(con):
    data = b"".join(c[1] for c in STRICT_CASES)
    raw = _ingest(con, data).raw
    prices = [p for p in raw["price"].to_pylist() if p is not None]
    assert all(p == p and abs(p) != float("inf") for p in prices)
    for text in raw["properties"].to_pylist():
        if text:
            json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite {c} in raw.properties"))


def test_catalog_strict_values(con):
    rows = [
        {"content_id": "a", "title": "ok", "category": "news", "published_at": "2026-11-01T10:00:00Z", "price": 1.0},
        {"content_id": "b", "title": "inf", "category": "news", "price": float("inf")},
        {"content_id": "c", "title": "no offset", "category": "news", "published_at": "2026-11-01T10:00:00"},
        {"content_id": "d", "title": "bad offset", "category": "news", "published_at": "2026-11-01T10:00:00+15:00"},
    ]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    data += b'{"content_id": "e", "category": "news", "category": "sport"}\n'
    data += b'{"content_id": "f", "category": "news", "tags": [{"k": 1, "k": 2}]}\n'
    for extra in (b"", b"{broken\n"):
        res = ri.ingest_jsonl_source(con, "catalog", [(ei.load_file("c.jsonl", data + extra), None)], RawContent, 32768, dedup_key="content_id")
        reasons = {r["line_no"]: r["reason"] for r in res.quarantine.to_pylist()}
        assert res.raw["content_id"].to_pylist() == ["a"]
        assert [reasons[i] for i in range(2, 7)] == ["non_finite_number", "timestamp_without_offset", "timestamp_offset_out_of_range",
                                                      "duplicate_key", "duplicate_key"]


def test_crm_timestamps_need_an_offset_in_range(con):
    header = b"user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n"
    rows = [
        b"u1,a@x.example,,A,B,DE,1990-01-01,2020-01-01T00:00:00Z,free,2026-11-01T00:00:00+01:00\n",
        b"u2,b@x.example,,A,B,DE,1990-01-01,2020-01-01T00:00:00Z,free,2026-11-01T00:00:00\n",
        b"u3,c@x.example,,A,B,DE,1990-01-01,2020-01-01,free,2026-11-01T00:00:00Z\n",
        b"u4,d@x.example,,A,B,DE,1990-01-01,2020-01-01T00:00:00Z,free,2026-11-01T00:00:00+24:00\n",
    ]
    res = ri.ingest_crm(con, [(ei.load_file("crm.csv", header + b"".join(rows)), None)], 32768)
    reasons = {r["line_no"]: r["reason"] for r in res.quarantine.to_pylist()}
    assert res.raw["user_id"].to_pylist() == ["u1"]
    assert reasons == {3: "timestamp_without_offset", 4: "timestamp_without_offset", 5: "timestamp_offset_out_of_range"}


def _every_kind_in_every_column() -> list[bytes]:
    """For each JSON path the tracking plan reads, one message per JSON kind at that path: a string (plain, with
    escapes, an ISO timestamp, one without offset), integers (small, negative zero, beyond 64 bits), a double, an
    exponent, a boolean, null, an object (with a repeated key) and an array."""
    values = ['"plain"', '"esc\\"aped\\\\ \\u00e9 \\/"', '"2026-11-28T13:05:00+01:00"', '"2026-11-28T13:05:00"',
              "7", "-0", "18446744073709551616", "1.5", "1E2", "true", "false", "null",
              '{"a": 1, "b": "x"}', '{"a": 1, "a": 2}', '[1, "x"]']
    lines, n = [], 0
    for path in sorted({p for c in json_extract.json_columns(RawEvent) for p in c.paths}):
        for value in values:
            n += 1
            text = line(msg(2000 + n)).rstrip(b"\n").decode()
            m = json.loads(text)
            node = m
            for part in path[:-1]:
                node = node.setdefault(part, {}) if isinstance(node.get(part), dict) or part not in node else node[part]
            if not isinstance(node, dict):
                continue
            node[path[-1]] = "\0VALUE\0"
            lines.append(json.dumps(m).replace('"\\u0000VALUE\\u0000"', value).encode())
    return lines


def test_the_two_level_projection_equals_the_single_level_one(con):
    """The ingestion projection computes each JSON leaf's type, text and casts once per row (`typed_select`); it
    must give exactly the single-level projection's values and `_type_errors`, also on values of every JSON kind
    in every column the plan reads."""
    corpus = [c[1].rstrip(b"\n") for c in STRICT_CASES] + hostile_bytes().splitlines() + _every_kind_in_every_column()
    texts = []
    for b in corpus:
        try:
            texts.append(b.decode())
        except UnicodeDecodeError:
            continue
    con.register("_corpus", pa.table({"line": pa.array(texts, pa.string())}))
    structure = json_extract._sql_str(json_extract.json_transform_structure(RawEvent))
    src = (f"(select row_number() over () as n, unnest(json_transform(line, {structure})) from _corpus "
           f"where json_valid(line) and json_type(line) = 'OBJECT')")
    select, type_errors = json_extract.typed_projection(RawEvent, root=None)  # single level, every expression in place
    reference = con.sql(f"select n, {', '.join(select)}, {type_errors} from {src} order by n").arrow().read_all()
    two_level = con.sql(f"{json_extract.typed_select(RawEvent, src, keep=('n',))} order by n").arrow().read_all()
    assert reference.num_rows > 500
    assert sum(1 for e in reference["_type_errors"].to_pylist() if e) > 100  # the corpus exercises the checks
    assert two_level.schema == reference.schema
    # NaN (a quarantined price) compares unequal to itself: compare its repr
    def rows(t):
        return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in t.to_pylist()]

    assert rows(two_level) == rows(reference)
