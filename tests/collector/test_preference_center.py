"""Headless Chromium uses the preference center served by the collector: it arrives through the link the site's
backend signed for its logged-in user (a subject token), sees the visitor's current choices, withdraws
personalization with the keyboard, and sends `Sec-GPC: 1`. After the whole pipeline is materialized,
the visitor's later events are absent from the consented tier, the visitor drops out of the segments and the
advertising audience excludes them — while a control visitor with the same history and no change stays in.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime, timedelta, timezone

import duckdb
import pytest
from segment.analytics.client import Client as SegmentClient

from personalization_assets.collector.auth import issue_subject_token
from personalization_assets.core.tracking_plan import CONSENT_EVENT
from tests.collector.conftest import TOKEN_SECRET, WRITE_KEY, landing_messages
from tests.helpers import check_results, defs_for_env, materialize

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
SUBJECT, CONTROL = "pc-subject", "pc-control"
# personalization and sale/share granted; analytics and advertising not (so no other purpose keeps events)
INITIAL = {"personalization": True, "advertising": True, "data_sharing": True, "marketing": False, "analytics": False,
           "performance": False}


def _history(client: SegmentClient, user: str, start: datetime, n: int, tag: str) -> None:
    anon = f"{user}-anon"
    ctx = {"location": {"country": "US", "region": "US-CA"}}
    for i in range(n):
        ts = start + timedelta(seconds=20 * i)
        if i % 3 == 2:
            client.track(user_id=user, anonymous_id=anon, event="Order Completed", timestamp=ts, context=ctx,
                         properties={"content_id": f"c{i % 4}", "category": "sports", "price": 9.5, "currency": "USD"},
                         message_id=f"{user}-{tag}-{i}")
        else:
            client.track(user_id=user, anonymous_id=anon, event="Article Viewed", timestamp=ts, context=ctx,
                         properties={"content_id": f"c{i % 4}", "category": "sports", "dwell_ms": 30_000},
                         message_id=f"{user}-{tag}-{i}")


def test_withdrawal_and_gpc_from_the_preference_center_take_effect_through_the_pipeline(collector, landing, data_dir):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("PERSONALIZATION_REQUIRE_INFRA_TOOLS"):
            pytest.fail("chromium missing: run infra/scripts/install-system-deps.sh")
        pytest.skip("Debian chromium not installed")
    from playwright.sync_api import expect, sync_playwright

    client = SegmentClient(write_key=WRITE_KEY, host=collector.url, upload_size=100, upload_interval=0.05, max_retries=3)
    now = datetime.now(timezone.utc)
    for user in (SUBJECT, CONTROL):
        ctx = {"location": {"country": "US", "region": "US-CA"}}
        client.identify(user_id=user, anonymous_id=f"{user}-anon", traits={"plan": "free"}, context=ctx,
                        timestamp=now - timedelta(minutes=50), message_id=f"{user}-identify")
        client.track(user_id=user, anonymous_id=f"{user}-anon", event=CONSENT_EVENT, timestamp=now - timedelta(minutes=45),
                     context={**ctx, "consent": {"categoryPreferences": INITIAL}}, message_id=f"{user}-cmp")
        _history(client, user, now - timedelta(minutes=40), 12, "before")
    client.flush()

    # the site's backend, which knows who is logged in, links its user to the center with a signed subject token
    token = issue_subject_token(TOKEN_SECRET, SUBJECT, 600)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            context = browser.new_context()
            # analytics.js's cookies (JSON-encoded values, as it writes them): the anonymous id is this browser's;
            # the user id cookie is not believed (any script can write it), the token is
            context.add_cookies([{"name": "ajs_anonymous_id", "value": f'"{SUBJECT}-anon"', "url": collector.url},
                                 {"name": "ajs_user_id", "value": f'"{SUBJECT}"', "url": collector.url}])
            page = context.new_page()
            page.goto(collector.url + "/privacy/preferences?token=" + token)
            expect(page).to_have_url(collector.url + "/privacy/preferences")  # the token left the address bar
            [kept] = [c for c in context.cookies() if c["name"] == "pc_subject_token"]
            assert kept["httpOnly"] and kept["sameSite"] == "Lax" and kept["value"] == token
            assert page.evaluate("document.cookie").find("pc_subject_token") < 0  # out of reach of the page's scripts
            # the current choices, from the consent event the SDK sent
            expect(page.get_by_label("Personalization")).to_be_checked()
            expect(page.get_by_label("Sale share")).to_be_checked()
            expect(page.get_by_label("Analytics")).not_to_be_checked()
            expect(page.get_by_text("Tailor content and recommendations to the user.")).to_be_visible()
            # keyboard only: Tab to the checkbox, Space toggles it; the change is saved at once
            page.get_by_label("Personalization").focus()
            page.keyboard.press("Space")
            expect(page.get_by_role("status")).to_have_text("Saved.")
            expect(page.locator("#status-personalization")).to_have_text("Not allowed")
            expect(page.locator("#status-sale_share")).to_have_text("Allowed")
            # the browser now sends the Global Privacy Control signal
            context.set_extra_http_headers({"Sec-GPC": "1"})
            page.reload()
            expect(page.get_by_role("note")).to_contain_text("Global Privacy Control")
            expect(page.get_by_label("Sale share")).to_be_disabled()
            expect(page.locator("#status-sale_share")).to_have_text("Off (Global Privacy Control)")
            expect(page.get_by_label("Personalization")).not_to_be_checked()
        finally:
            browser.close()

    recorded = [m for m in landing_messages(landing) if m.get("event") == CONSENT_EVENT and m.get("userId") == SUBJECT
                and m["context"].get("library", {}).get("name") == "personalization-preference-center"]
    assert len(recorded) == 2
    withdrawal = next(m for m in recorded if "consent" in m["context"])
    assert withdrawal["context"]["consent"]["categoryPreferences"]["personalization"] is False
    assert withdrawal["anonymousId"] == f"{SUBJECT}-anon"
    assert any(m["context"].get("gpc") is True for m in recorded)
    withdrawn_at = datetime.fromisoformat(withdrawal["timestamp"].replace("Z", "+00:00"))

    later = datetime.now(timezone.utc) + timedelta(seconds=1)
    for user in (SUBJECT, CONTROL):
        _history(client, user, later, 6, "after")
    client.flush()
    client.shutdown()

    from personalization_assets.cli import landing_partition_keys

    defs = defs_for_env()
    keys = landing_partition_keys(defs, None)
    # everything the consented tier, the segments and the audience depend on (not the DP exports, catalog, …)
    # the features' cutoff is now: this test's events are minutes old (the default, the end of the last complete
    # landing hour, would leave out the current hour)
    as_of = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    result = materialize(defs, 'key:"consented/events" or +key:"segments/advertising_audience" or +key:"segments/segment_membership"',
                         (keys[0], keys[-1]), run_config={"ops": {"feature_tables": {"config": {"as_of": as_of}}}})
    checks = check_results(result)
    assert checks and all(checks.values()), {k: v for k, v in checks.items() if not v}

    pz = defs.resources["pseudonymizer"]
    subject, control = pz.pseudonymize_values([SUBJECT, CONTROL], "id")
    con = duckdb.connect()
    con.execute("set TimeZone='UTC'")
    defs.resources["lake"].register(con, "consented", "consented", "events")
    rows = con.execute("select user_pseudonym, timestamp, purposes from consented where user_pseudonym in (?, ?)", [subject, control]).fetchall()
    subject_rows = [r for r in rows if r[0] == subject]
    control_rows = [r for r in rows if r[0] == control]
    # earlier events consented for personalization stay (before the CMP grant, the US-CA defaults applied)
    before = [r for r in subject_rows if now - timedelta(minutes=45) <= r[1] < withdrawn_at]
    assert len(before) >= 12 and all("personalization" in r[2] for r in before)
    # the consent event itself (at withdrawn_at) may stay for sale/share, still granted at that instant; nothing after it
    assert [r for r in subject_rows if r[1] > withdrawn_at] == []
    assert [r for r in control_rows if r[1] >= later - timedelta(seconds=1)]  # the control's later events are there
    assert all("personalization" in r[2] for r in control_rows if r[1] >= now - timedelta(minutes=45))

    wh = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        segments = {r[0] for r in wh.execute("select person_id from segments.user_segments").fetchall()}
        members = {r[0] for r in wh.execute("select person_id from segments.segment_membership").fetchall()}
        audience = {r[0] for r in wh.execute("select person_id from segments.advertising_audience").fetchall()}
    finally:
        wh.close()
    assert control in segments and control in members and control in audience
    assert subject not in segments and subject not in members and subject not in audience


def _consent_events_of(landing, anon: str) -> list[dict]:
    return [m for m in landing_messages(landing) if m.get("event") == CONSENT_EVENT and m.get("anonymousId") == anon]


def test_without_javascript_the_form_post_records_the_choices_and_shows_them(shared_collector):
    import json

    import requests

    collector, landing = shared_collector
    session = requests.Session()
    session.get(collector.url + "/privacy/preferences", timeout=10)  # the first visit sets the anonymous id cookie
    anon = json.loads(session.cookies["ajs_anonymous_id"])
    r = session.post(collector.url + "/privacy/preferences", data={"purpose": ["analytics", "sale_share"]},
                     allow_redirects=False, timeout=10)
    # the visitor is in the cookie: the redirect names nobody (nothing to encode, nothing to forge)
    assert r.status_code == 303 and r.headers["location"] == "/privacy/preferences"
    [event] = _consent_events_of(landing, anon)
    prefs = event["context"]["consent"]["categoryPreferences"]
    assert prefs["analytics"] is True and prefs["personalization"] is False and prefs["data_sharing"] is True
    assert "gpc" not in event["context"]
    page = session.get(collector.url + r.headers["location"], timeout=10).text
    boxes = {m.group(1): " checked" in m.group(0).replace("\n", " ")
             for m in re.finditer(r'<input type="checkbox" id="purpose-(\w+)"[^>]*>', page)}
    assert boxes == {"personalization": False, "analytics": True, "advertising": False, "sale_share": True}


def test_the_preference_center_refuses_other_origins_and_unknown_purposes(shared_collector):
    import json

    import requests

    collector, landing = shared_collector
    session = requests.Session()
    session.get(collector.url + "/privacy/preferences", timeout=10)
    anon = json.loads(session.cookies["ajs_anonymous_id"])
    r = session.post(collector.url + "/privacy/preferences", json={"granted": []}, headers={"Origin": "https://evil.example"}, timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "cross_origin"
    # a browser that sends no Origin still says where the request comes from
    r = session.post(collector.url + "/privacy/preferences", data={"purpose": []}, headers={"Sec-Fetch-Site": "cross-site"}, timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "cross_origin"
    r = session.post(collector.url + "/privacy/preferences", json={"granted": ["mind_reading"]}, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "unknown_purpose"
    assert _consent_events_of(landing, anon) == []


def test_a_new_visitor_gets_an_anonymous_id_cookie_and_gpc_is_recorded_once(shared_collector):
    import json

    import requests

    collector, landing = shared_collector
    session = requests.Session()
    first = session.get(collector.url + "/privacy/preferences", headers={"Sec-GPC": "1"}, timeout=10)
    anon = json.loads(session.cookies["ajs_anonymous_id"])
    assert anon and "Global Privacy Control" in first.text
    session.get(collector.url + "/privacy/preferences", headers={"Sec-GPC": "1"}, timeout=10)
    [event] = _consent_events_of(landing, anon)  # the signal is recorded once per subject, not on every view
    assert event["context"]["gpc"] is True and "consent" not in event["context"]
