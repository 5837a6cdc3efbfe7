"""A clean zone (bad_fraction=0) follows the landing-zone contract exactly."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections import Counter

from tests.generator.zone import event_files, file_lines, generate

TYPES = {"track", "page", "screen", "identify", "alias"}
TRACK_EVENTS = {"Segment Consent Preference Updated", "Content Viewed", "Content Shared", "Product Added", "Order Completed",
                "Subscription Started"}
CONSENT_CATEGORIES = {"personalization", "functional", "analytics", "performance", "advertising", "marketing", "data_sharing"}
CATEGORIES = {"news", "sports", "tech", "culture", "finance", "travel", "food", "science", "health", "entertainment"}
ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def _t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


def check_message(m: dict) -> None:
    assert UUID.match(m["messageId"]), m
    assert m["type"] in TYPES
    for k in ("timestamp", "sentAt", "receivedAt"):
        assert ISO_MS.match(m[k]), (k, m[k])
    assert _t(m["timestamp"]) <= _t(m["sentAt"]) <= _t(m["receivedAt"])
    assert m.get("anonymousId") or m.get("userId")
    assert m["userId"] is None or isinstance(m["userId"], str)
    if m["type"] == "track":
        assert m["event"] in TRACK_EVENTS
    else:
        assert "event" not in m
    if m["type"] == "alias":
        assert m["previousId"] and m["userId"]
    if m["type"] == "identify":
        assert m["userId"] and "@" in m["traits"]["email"] and m["traits"]["phone"] and m["traits"]["name"]
    ctx = m["context"]
    assert IPV4.match(ctx["ip"]) or ":" in ctx["ip"]
    assert ctx["userAgent"] and re.match(r"^[a-z]{2}-[A-Z]{2}$", ctx["locale"])
    loc = ctx["location"]
    assert re.match(r"^[A-Z]{2}$", loc["country"])
    assert "region" not in loc or loc["region"].startswith(loc["country"] + "-")
    assert isinstance(ctx["gpc"], bool)
    if "consent" in ctx:
        prefs = ctx["consent"]["categoryPreferences"]
        assert prefs and set(prefs) <= CONSENT_CATEGORIES and all(isinstance(v, bool) for v in prefs.values())
    if m.get("event") == "Segment Consent Preference Updated":
        assert "consent" in ctx
    if m["type"] == "page":
        assert set(ctx["page"]) >= {"url", "referrer", "title"}
        assert m["properties"]["url"] == ctx["page"]["url"]
    props = m.get("properties", {})
    if "category" in props:
        assert props["category"] in CATEGORIES and props["content_id"]
    if "price" in props:
        assert isinstance(props["price"], (int, float)) and props["price"] >= 0 and re.match(r"^[A-Z]{3}$", props["currency"])
    if "dwell_ms" in props:
        assert isinstance(props["dwell_ms"], int) and props["dwell_ms"] >= 0
    if m.get("event") in ("Order Completed", "Subscription Started", "Product Added"):
        assert "price" in props and "currency" in props
    if m.get("event") == "Subscription Started":
        assert props["plan"]


def test_event_lines_follow_the_contract(clean_zone, clean_messages):
    _root, summary = clean_zone
    assert summary.events_written == 20_000 == len(clean_messages)
    assert summary.good_events == 20_000 and summary.duplicates == 0 and sum(summary.bad_lines.values()) == 0
    ids = Counter(m["messageId"] for m in clean_messages)
    assert len(ids) == len(clean_messages), "messageIds must be unique in a clean zone"
    for m in clean_messages:
        check_message(m)
        folder = re.search(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/", m["_file"])
        assert m["receivedAt"][:10] == folder.group(1) and m["receivedAt"][11:13] == folder.group(2), m["_file"]
    assert {m["type"] for m in clean_messages} == TYPES
    assert {m["event"] for m in clean_messages if m["type"] == "track"} == TRACK_EVENTS


def test_layout_and_files(clean_zone):
    root, summary = clean_zone
    files = event_files(root)
    assert len(files) == summary.event_files
    assert all(re.search(r"events/date=\d{4}-\d{2}-\d{2}/hour=\d{2}/[\w.-]+\.jsonl\.gz$", str(p)) for p in files)
    per_hour = Counter(p.parent for p in files)
    assert len(per_hour) == 3 * 24 and max(per_hour.values()) >= 2, "several files per hour"
    days = sorted({p.parent.parent.name for p in files})
    assert days == ["date=2024-05-05", "date=2024-05-06", "date=2024-05-07"]
    assert sum(len(file_lines(p)) for p in files) == 20_000


def test_realism(clean_messages):
    by_type = Counter(m.get("event") or m["type"] for m in clean_messages)
    assert by_type["Content Viewed"] > by_type["Order Completed"] > 0
    assert by_type["screen"] > 0 and by_type["alias"] > 0
    # anonymous browsing and logged-in browsing both exist, with consent echoed on some messages
    assert any(m["userId"] is None for m in clean_messages) and any(m["userId"] for m in clean_messages)
    assert sum("consent" in m["context"] for m in clean_messages) > by_type["Segment Consent Preference Updated"]
    # late arrivals: hours to 2 days, and a few 4-10 days; none beyond
    lateness = [(_t(m["receivedAt"]) - _t(m["timestamp"])).total_seconds() / 3600 for m in clean_messages]
    assert sum(1 <= h <= 48 for h in lateness) > 0
    assert sum(96 <= h <= 241 for h in lateness) > 0
    assert max(lateness) <= 241
    # jurisdictions: EU countries, California, other US states, elsewhere; IPv6 on some devices
    regions = Counter(m["context"]["location"].get("region") for m in clean_messages)
    assert regions["US-CA"] > 0 and any(r and r.startswith("US-") and r != "US-CA" for r in regions)
    countries = Counter(m["context"]["location"]["country"] for m in clean_messages)
    assert countries["DE"] > 0 and countries["FR"] > 0 and countries["GB"] + countries["JP"] + countries["BR"] > 0
    assert any(":" in m["context"]["ip"] for m in clean_messages)
    assert any(m["context"]["gpc"] for m in clean_messages)
    # power-law activity: the busiest 10% of identified users produce a large share of their messages
    per_user = sorted(Counter(m["userId"] for m in clean_messages if m["userId"]).values(), reverse=True)
    top = per_user[: max(1, len(per_user) // 10)]
    assert sum(top) > 0.3 * sum(per_user)
    # withdrawals: some users' consent flips personalization from true to false
    consent = [m for m in clean_messages if m.get("event") == "Segment Consent Preference Updated"]
    granted = sum(m["context"]["consent"]["categoryPreferences"]["personalization"] for m in consent)
    assert 0.6 < granted / len(consent) < 0.95


def test_crm_catalog_and_privacy_requests(clean_zone):
    root, summary = clean_zone
    crm_files = sorted((root / "crm").glob("*.csv"))
    assert len(crm_files) >= 2
    latest: dict[str, list[str]] = {}
    reappear = 0
    rows_total = 0
    for path in crm_files:
        rows = list(csv.reader(io.StringIO(path.read_text())))
        assert rows[0] == ["user_id", "email", "phone", "first_name", "last_name", "country", "birth_date", "signup_at", "plan", "updated_at"]
        for row in rows[1:]:
            rows_total += 1
            assert len(row) == 10 and "@" in row[1] and re.match(r"^[A-Z]{2}(-[A-Z]{2})?$", row[5])
            dt.date.fromisoformat(row[6])
            _t(row[7])
            if row[0] in latest:
                reappear += 1
                assert _t(row[9]) > _t(latest[row[0]][9]), "a later export carries a later updated_at"
            latest[row[0]] = row
    assert reappear > 0 and rows_total == summary.crm_rows
    assert any(r[5] == "US-CA" for r in latest.values())

    items = [json.loads(line) for p in (root / "catalog").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert 200 <= len(items) <= 2000
    assert {i["category"] for i in items} == {"news", "sports", "tech", "culture", "finance", "travel", "food", "science", "health",
                                              "entertainment"}
    for i in items:
        assert set(i) == {"content_id", "title", "category", "tags", "author", "published_at", "premium", "price"}
        assert isinstance(i["tags"], list) and isinstance(i["premium"], bool) and (i["price"] is None or i["price"] > 0)
    assert len(items) == summary.catalog_items

    requests = [json.loads(line) for p in (root / "privacy_requests").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(requests) == summary.privacy_requests
    for r in requests:
        assert r["type"] in {"erasure", "opt_out_sale", "opt_in_sale"} and r["request_id"] and r["jurisdiction"]
        assert r.get("user_id") or r.get("email")
        _t(r["received_at"])
    assert {r["type"] for r in requests} >= {"erasure", "opt_out_sale"}


def test_end_defaults_to_today(tmp_path):
    before = dt.datetime.now(dt.UTC).date()
    s = generate(tmp_path, users=20, events=1000, days=1, end=None)
    assert s.end in (before.isoformat(), dt.datetime.now(dt.UTC).date().isoformat())
    assert s.events_written == 1000 and (tmp_path / "events" / f"date={s.end}").is_dir()


def test_fixed_head_layout(clean_zone):
    """The bad-line corruptions rely on the fixed-width head: messageId, then timestamp at a fixed offset."""
    from personalization_assets.generator.events import HEAD_END, HEAD_TS

    root, _ = clean_zone
    for line in file_lines(event_files(root)[0])[:50]:
        m = json.loads(line)
        assert line[HEAD_TS] == b'"' + m["timestamp"].encode() + b'"'
        assert line[:HEAD_END] == b'{"messageId":"' + m["messageId"].encode() + b'",'
