"""bad_fraction > 0: every kind of bad line is present, classified independently, with the counts reported."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from collections import Counter

import pytest

from personalization_assets.generator.bad_lines import KINDS
from tests.generator.zone import event_files, file_lines, generate

TYPES = {"track", "page", "screen", "identify", "alias"}


def _t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


def classify(line: bytes, seen: set[str]) -> str | None:
    """The reason a line is bad (independent of the generator's code), or None for a good line."""
    if not line.strip():
        return "empty_line"
    if len(line) > 32 * 1024:
        return "line_too_large"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        m = json.loads(text)
    except json.JSONDecodeError:
        return "malformed_json"
    if not isinstance(m, dict):
        return "not_an_object"
    if "messageId" not in m:
        return "missing_message_id"
    if not m.get("anonymousId") and not m.get("userId"):
        return "missing_identity"
    if m["type"] not in TYPES:
        return "unknown_type"
    if not isinstance(m["timestamp"], str) or isinstance(m.get("properties", {}).get("price"), str):
        return "wrong_type"
    if not re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$", m["timestamp"]):
        return "unparseable_timestamp"
    ts, ra = _t(m["timestamp"]), _t(m["receivedAt"])
    if ts > ra + dt.timedelta(days=1):
        return "timestamp_in_future"
    if ts < ra - dt.timedelta(days=30):
        return "timestamp_before_horizon"
    if m["messageId"] in seen:
        return "duplicate_message_id"
    seen.add(m["messageId"])
    return None


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    root = tmp_path_factory.mktemp("dirty")
    return root, generate(root, bad_fraction=0.05, seed=5)


def test_bad_kinds_match_the_summary(dirty):
    root, summary = dirty
    found: Counter = Counter()
    lines = 0
    dup_across_files = 0
    for hour in sorted({p.parent for p in event_files(root)}):
        seen: set[str] = set()
        first_file: dict[str, str] = {}
        for path in sorted(hour.iterdir()):
            for line in file_lines(path):
                lines += 1
                kind = classify(line, seen)
                if kind:
                    found[kind] += 1
                if kind == "duplicate_message_id":
                    dup_across_files += first_file[json.loads(line)["messageId"]] != path.name
                elif kind is None:
                    first_file[json.loads(line)["messageId"]] = path.name
    assert lines == summary.events_written == 20_000
    assert dict(found) == {k: v for k, v in summary.bad_lines.items() if v}
    assert set(found) == set(KINDS), "every kind of bad line is present"
    assert summary.duplicates == found["duplicate_message_id"] and dup_across_files > 0
    assert abs(sum(found.values()) - 0.05 * 20_000) <= 0.05 * 20_000 * 0.1
    assert summary.good_events == lines - sum(found.values())
    manifest = json.loads((root / "_generator" / "manifest.json").read_text())
    assert manifest["bad_lines"] == summary.bad_lines


def test_bad_lines_are_spread_over_files(dirty):
    root, _ = dirty
    files_with_bad = 0
    for path in event_files(root):
        seen: set[str] = set()
        files_with_bad += any(classify(line, seen) not in (None, "duplicate_message_id") for line in file_lines(path))
    assert files_with_bad > len(event_files(root)) // 2


def test_bad_crm_rows_and_catalog_line(dirty):
    root, summary = dirty
    bad_rows = Counter()
    for path in (root / "crm").glob("*.csv"):
        for row in list(csv.reader(path.read_text().splitlines()))[1:]:
            if len(row) != 10:
                bad_rows["wrong_column_count"] += 1
            elif not re.match(r"^[^@\s]+@[^@\s]+$", row[1]):
                bad_rows["invalid_email"] += 1
            else:
                try:
                    dt.date.fromisoformat(row[6])
                except ValueError:
                    bad_rows["unparseable_date"] += 1
    assert dict(bad_rows) == summary.bad_crm_rows and all(v > 0 for v in bad_rows.values())
    bad_catalog = 0
    for path in (root / "catalog").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                json.loads(line)
            except json.JSONDecodeError:
                bad_catalog += 1
    assert bad_catalog == summary.bad_catalog_lines == 1


def test_zero_fraction_writes_no_bad_crm_or_catalog(clean_zone):
    _, summary = clean_zone
    assert sum(summary.bad_crm_rows.values()) == 0 and summary.bad_catalog_lines == 0
