"""Per-person tables: RFM, content affinity, engagement, purpose eligibility and the consent rule."""

import math
from datetime import timedelta

import pytest

from tests.features.feature_fixtures import ALL_PURPOSES, build, consent, event, granted_all, pseudo, ts


def by_person(table, key="person_id"):
    return {r[key]: r for r in table.to_pylist()}


# --- RFM ----------------------------------------------------------------------------------------------


def test_rfm_values():
    ev = [
        event(at="2025-12-01 10:00", user="u1", name="Order Completed", price=10.0),  # before the window
        event(at="2026-01-01 00:00", user="u1", name="Order Completed", price=7.0),  # exactly as_of - 90 d: outside
        event(at="2026-02-01 10:00", user="u1", name="Order Completed", price=20.0),
        event(at="2026-03-30 12:00", user="u1", name="Subscription Started", price=5.5),
        event(at="2026-03-30 13:00", user="u1", name="Content Viewed"),
        event(at="2026-03-31 08:00", anon="a5", type="page"),
    ]
    out = build(ev, granted_all("u1", "a5"), as_of="2026-04-01 00:00")
    rfm = by_person(out["user_rfm"])
    u1 = rfm[pseudo("u1")]
    assert u1["recency_days"] == 1  # 1 d 11 h, floored
    assert u1["frequency"] == 3  # sessions starting after 2026-01-01 00:00: 02-01, 03-30 12:00, 03-30 13:00
    assert u1["monetary"] == pytest.approx(25.5)
    assert u1["orders"] == 2
    assert u1["first_seen_at"] == ts("2025-12-01 10:00")
    assert u1["last_seen_at"] == ts("2026-03-30 13:00")
    assert u1["is_known_user"] is True
    assert u1["as_of"] == ts("2026-04-01 00:00")
    a5 = rfm[pseudo("a5")]
    assert (a5["recency_days"], a5["frequency"], a5["monetary"], a5["orders"], a5["is_known_user"]) == (0, 1, 0.0, 0, False)

    wide = by_person(build(ev, granted_all("u1", "a5"), as_of="2026-04-01 00:00", rfm_window_days=365)["user_rfm"])
    assert wide[pseudo("u1")]["monetary"] == pytest.approx(42.5)
    assert wide[pseudo("u1")]["frequency"] == 5


# --- content affinity ---------------------------------------------------------------------------------


def test_affinity_decay_shares_and_ties():
    t = ts("2026-02-01 00:00")
    ev = [
        # u1: news 0.5 + 0.5 (14 days old), sports 1.0 (now): a tie broken by category name
        event(at=t - timedelta(days=14), user="u1", name="Content Viewed", category="news"),
        event(at=t - timedelta(days=14), user="u1", type="page", category="news"),
        event(at=t, user="u1", name="Content Shared", category="sports"),
        # not engagement: no category, or a message type/event that is not engagement
        event(at=t, user="u1", name="Content Viewed", category=None),
        event(at=t, user="u1", type="identify", category="tech"),
        event(at=t, user="u1", name="Segment Consent Preference Updated", category="tech"),
        # u2: tech 0.25 (28 days old), food 1.0
        event(at=t - timedelta(days=28), user="u2", name="Order Completed", category="tech", price=1.0),
        event(at=t, user="u2", type="screen", category="food"),
    ]
    out = build(ev, granted_all("u1", "u2"), as_of=t)
    rows = out["content_affinity"].to_pylist()
    u1 = {r["category"]: r for r in rows if r["person_id"] == pseudo("u1")}
    assert set(u1) == {"news", "sports"}
    assert u1["news"]["decayed_weight"] == pytest.approx(1.0)
    assert u1["news"]["events"] == 2
    assert u1["news"]["affinity"] == pytest.approx(0.5) and u1["sports"]["affinity"] == pytest.approx(0.5)
    assert (u1["news"]["is_top"], u1["sports"]["is_top"]) == (True, False)
    assert {r["top_category"] for r in u1.values()} == {"news"}

    u2 = {r["category"]: r for r in rows if r["person_id"] == pseudo("u2")}
    assert u2["tech"]["decayed_weight"] == pytest.approx(0.25)
    assert u2["tech"]["affinity"] == pytest.approx(0.2) and u2["food"]["affinity"] == pytest.approx(0.8)
    assert u2["food"]["is_top"] and u2["food"]["top_category"] == "food"

    for person in (pseudo("u1"), pseudo("u2")):
        assert math.fsum(r["affinity"] for r in rows if r["person_id"] == person) == pytest.approx(1.0, abs=1e-9)
        assert sum(r["is_top"] for r in rows if r["person_id"] == person) == 1

    slower = build(ev, granted_all("u1", "u2"), as_of=t, half_life_days=28)["content_affinity"].to_pylist()
    tech = next(r for r in slower if r["person_id"] == pseudo("u2") and r["category"] == "tech")
    assert tech["affinity"] == pytest.approx(1 / 3)


def test_affinity_shares_sum_to_one_for_many_events():
    t = ts("2026-02-01 00:00")
    cats = ["news", "sports", "tech", "food", "travel"]
    ev = [event(at=t - timedelta(hours=7 * i), user="u1", type="page", category=cats[i % 5]) for i in range(200)]
    rows = build(ev, granted_all("u1"), as_of=t)["content_affinity"].to_pylist()
    assert math.fsum(r["affinity"] for r in rows) == pytest.approx(1.0, abs=1e-9)
    assert [r["category"] for r in rows if r["is_top"]] == ["news"]  # the most recent events are news


# --- engagement ---------------------------------------------------------------------------------------


def test_engagement_values():
    ev = [
        event(at="2026-01-05 10:00", user="u1", dwell_ms=100),  # Monday
        event(at="2026-01-05 10:10", user="u1", dwell_ms=200),
        event(at="2026-01-06 10:30", user="u1"),  # Tuesday, no dwell
        event(at="2026-01-07 22:00", user="u1", dwell_ms=50),  # Wednesday
        event(at="2026-01-07 22:05", user="u1"),
        # u2: hour tie 03 vs 05 -> 3; seen 2 days before as_of -> weeks floor of 1
        event(at="2026-01-24 05:00", user="u2"),
        event(at="2026-01-24 03:00", user="u2"),
    ]
    out = build(ev, granted_all("u1", "u2"), as_of="2026-01-26 10:00")  # 3 weeks after u1's first event
    eng = by_person(out["engagement"])
    u1 = eng[pseudo("u1")]
    assert u1["active_days"] == 3
    assert u1["sessions"] == 3
    assert u1["sessions_per_week"] == pytest.approx(1.0)
    assert u1["avg_session_dwell_ms"] == pytest.approx(116.667)
    assert u1["preferred_hour"] == 10
    assert u1["preferred_dow"] == 0  # Monday and Wednesday tie at 2 events: smallest
    u2 = eng[pseudo("u2")]
    assert (u2["active_days"], u2["sessions"], u2["sessions_per_week"], u2["preferred_hour"], u2["preferred_dow"]) == (1, 2, 2.0, 3, 5)


# --- consent at as_of and purpose eligibility ---------------------------------------------------------


def test_withdrawn_at_as_of_means_no_features_at_all():
    ev = [
        event(at="2026-01-05 10:00", anon="w-device", user="withdrawn", category="news", name="Content Viewed"),
        event(at="2026-01-05 10:05", user="withdrawn", name="Order Completed", price=5.0),
        event(at="2026-01-05 10:00", user="stays", category="news", name="Content Viewed"),
    ]
    consent_rows = [
        consent("withdrawn", "personalization", "granted", end="2026-01-08 00:00"),
        consent("withdrawn", "personalization", "denied", start="2026-01-08 00:00"),
        *[consent("withdrawn", p, "granted") for p in ALL_PURPOSES if p != "personalization"],
        *granted_all("stays"),
    ]
    before = build(ev, consent_rows, as_of="2026-01-07 00:00")
    assert pseudo("withdrawn") in before["user_rfm"]["person_id"].to_pylist()

    after = build(ev, consent_rows, as_of="2026-01-10 00:00")
    for name, table in after.items():
        if name == "_stats":
            continue
        values = set()
        for column in ("person_id", "identifier", "consent_subject"):
            if column in table.column_names:
                values |= set(table[column].to_pylist())
        assert pseudo("withdrawn") not in values, name
        assert pseudo("w-device") not in values, name
    assert after["user_rfm"]["person_id"].to_pylist() == [pseudo("stays")]
    assert after["_stats"]["subject_not_granted_at_as_of"] == 2


def test_only_events_with_personalization_purpose_and_a_consent_record_are_used():
    ev = [
        event(at="2026-01-05 10:00", user="u1", message_id="analytics-only", purposes=["analytics"]),
        event(at="2026-01-05 10:01", user="u1", message_id="ok"),
        event(at="2026-01-05 10:00", user="no-record", message_id="no-record"),
    ]
    out = build(ev, granted_all("u1"))
    assert out["events_clean"]["message_id"].to_pylist() == ["ok"]
    assert out["_stats"]["without_personalization_purpose"] == 1
    assert out["_stats"]["subject_not_granted_at_as_of"] == 1


def test_purpose_eligibility_is_fail_closed_over_all_subjects():
    ev = [
        # a shared device linked to two users: its anonymous events are governed by its own subject
        event(at="2026-01-05 10:00", anon="shared", subject="shared"),
        event(at="2026-01-05 10:01", anon="shared", user="u7"),
        event(at="2026-01-05 10:02", anon="shared", user="u8"),
        event(at="2026-01-05 10:00", user="solo"),
    ]
    consent_rows = [
        *granted_all("shared", "u7", purposes=["personalization", "sale_share", "analytics"]),
        *granted_all("u8", purposes=["personalization", "analytics"]),
        consent("u8", "sale_share", "denied", start="2026-01-07 00:00"),
        consent("u8", "sale_share", "granted", end="2026-01-07 00:00"),
        *granted_all("solo", purposes=["personalization", "analytics", "sale_share"]),
        consent("solo", "sale_share", "denied", start="2026-01-09 00:00"),  # overlapping denied interval wins
        consent("other", "advertising", "granted"),  # only someone else has an advertising record
    ]
    out = build(ev, consent_rows, as_of="2026-01-10 00:00")
    elig = {(r["person_id"], r["purpose"]): (r["eligible"], r["consent_subjects"]) for r in out["purpose_eligibility"].to_pylist()}
    person = min(pseudo("u7"), pseudo("u8"))
    assert elig[(person, "personalization")] == (True, 3)
    assert elig[(person, "analytics")] == (True, 3)
    assert elig[(person, "sale_share")] == (False, 3)  # u8 opted out of sale: fails for the whole person
    assert elig[(person, "advertising")] == (False, 3)  # no record at all: not eligible
    assert elig[(pseudo("solo"), "sale_share")] == (False, 1)
    assert elig[(pseudo("solo"), "personalization")] == (True, 1)
    assert len(elig) == 2 * 4  # every purpose present in consent_state, per person

    earlier = build(ev, consent_rows, as_of="2026-01-06 00:00")
    elig = {(r["person_id"], r["purpose"]): r["eligible"] for r in earlier["purpose_eligibility"].to_pylist()}
    assert elig[(person, "sale_share")] is True
    assert elig[(pseudo("solo"), "sale_share")] is True
