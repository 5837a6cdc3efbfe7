"""A hostile landing corpus: every kind of bad line a CDP pipeline has produced, next to good ones."""

from __future__ import annotations

import gzip
import json

PARTITION = "2026-11-28-13:00"
FOLDER = "events/date=2026-11-28/hour=13"


def msg(i: int, **overrides) -> dict:
    m = {
        "messageId": f"m-{i}",
        "type": "track",
        "event": "Content Viewed",
        "anonymousId": f"anon-{i}",
        "userId": f"user-{i}",
        "timestamp": "2026-11-28T13:05:00.000Z",
        "sentAt": "2026-11-28T13:05:01.000Z",
        "receivedAt": "2026-11-28T13:05:02.000Z",
        "context": {"ip": "203.0.113.7", "locale": "de-DE", "location": {"country": "DE"},
                    "page": {"url": "https://news.example/a?utm=1", "referrer": "https://search.example/"},
                    "consent": {"categoryPreferences": {"personalization": True}}, "gpc": False},
        "properties": {"content_id": "c-1", "category": "news", "price": 1.5, "currency": "EUR", "dwell_ms": 1200},
    }
    m.update(overrides)
    return m


def line(m) -> bytes:
    return json.dumps(m).encode() + b"\n"


# (name, bytes of a line incl. newline, expected outcome: "raw" or a quarantine reason)
CASES: list[tuple[str, bytes, str]] = [
    ("good", line(msg(1)), "raw"),
    ("good_identify", line(msg(2, type="identify", event=None, traits={"email": "A@x.example"})), "raw"),
    ("malformed_json", b'{"messageId": "m-3", "type": "track"\n', "malformed_json"),
    ("truncated_object", line(msg(4))[:40] + b"\n", "malformed_json"),
    ("invalid_utf8", line(msg(5)).replace(b"Content Viewed", b"Content \xff\xfe Viewed"), "invalid_utf8"),
    ("null_byte", line(msg(6)).replace(b"Content Viewed", b"Content\x00Viewed"), "malformed_json"),
    ("json_array", b"[1, 2, 3]\n", "not_an_object"),
    ("json_number", b"42\n", "not_an_object"),
    ("json_null", b"null\n", "not_an_object"),
    ("blank", b"\n", "empty_line"),
    ("whitespace", b"   \t\n", "empty_line"),
    ("missing_message_id", line({k: v for k, v in msg(7).items() if k != "messageId"}), "missing_message_id"),
    ("no_identity", line(msg(8, userId=None, anonymousId=None)), "missing_identity"),
    ("price_as_string", line(msg(9, properties={"price": "9.99"})), "wrong_type"),
    ("timestamp_as_number", line(msg(10, timestamp=1764335100)), "wrong_type"),
    ("message_id_as_object", line(msg(11, messageId={"$oid": "x"})), "wrong_type"),
    ("context_as_string", line(msg(12, context="garbage")), "wrong_structure"),
    ("unknown_type", line(msg(13, type="bogus")), "invalid_type"),
    ("unparseable_timestamp", line(msg(14, timestamp="yesterday-ish")), "wrong_type"),
    ("far_future", line(msg(15, timestamp="2027-06-01T00:00:00Z")), "timestamp_in_future"),
    ("before_horizon", line(msg(16, timestamp="2026-06-01T00:00:00Z")), "timestamp_before_horizon"),
    ("track_without_event", line(msg(17, event=None)), "track_without_event"),
    ("huge_line", line(msg(18, properties={"blob": "x" * (1 << 20)})), "line_too_large"),
    ("numbers_as_ids", line(msg(19, userId=12345)), "wrong_type"),
    ("duplicate", line(msg(1)), "duplicate_message_id"),
    # values a strict reader rejects (each path and more cases: tests/raw/test_strict_values.py)
    ("price_infinity", line(msg(21, properties={"price": float("inf")})), "non_finite_number"),
    ("price_overflow", line(msg(22, properties={"price": 1.5})).replace(b'"price": 1.5', b'"price": 1e400'), "non_finite_number"),
    ("duplicate_key", line(msg(23)).replace(b'"type": "track"', b'"type": "track", "type": "page"'), "duplicate_key"),
    ("offset_plus_24", line(msg(24, timestamp="2026-11-28T13:05:00+24:00")), "timestamp_offset_out_of_range"),
    ("no_offset", line(msg(25, timestamp="2026-11-28T13:05:00")), "timestamp_without_offset"),
    ("date_only", line(msg(26, receivedAt="2026-11-28")), "timestamp_without_offset"),
    ("good_2", line(msg(20)), "raw"),
]


def hostile_bytes() -> bytes:
    return b"".join(c[1] for c in CASES)


def write_hostile_landing(landing_dir) -> dict:
    """Write the corpus as a plain file, a BOM+CRLF file, a gzip with a truncated member and a stray file."""
    folder = landing_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a-hostile.jsonl").write_bytes(hostile_bytes())
    clean = b"".join(line(msg(100 + i)) for i in range(5))
    (folder / "b-bom-crlf.jsonl").write_bytes(b"\xef\xbb\xbf" + clean.replace(b"\n", b"\r\n"))
    good_gz = gzip.compress(b"".join(line(msg(200 + i)) for i in range(4)), mtime=0)
    (folder / "c-truncated.jsonl.gz").write_bytes(good_gz[:-12])
    (folder / "d-stray.txt").write_bytes(b"not a batch\n")
    return {"folder": folder}
