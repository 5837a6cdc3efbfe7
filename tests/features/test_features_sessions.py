"""Sessionization edges: the 30-minute gap, midnight and partition boundaries, the 24-hour cap, order."""

import hashlib
import random
from datetime import timedelta

from tests.features.feature_fixtures import EPOCH, build, event, granted_all, pseudo, ts


def sessions_of(out):
    return [(r["session_start"], r["session_end"], r["events"]) for r in out["sessions"].to_pylist()]


def test_gap_of_exactly_30_minutes_starts_a_new_session_and_29_59_does_not():
    ev = [
        event(at="2026-01-05 23:50:00", user="u1"),
        event(at="2026-01-06 00:19:59", user="u1"),  # +29:59, across midnight (and a new landing partition)
        event(at="2026-01-06 00:49:59", user="u1"),  # +30:00 exactly -> new session
    ]
    out = build(ev, granted_all("u1"))
    assert sessions_of(out) == [
        (ts("2026-01-05 23:50:00"), ts("2026-01-06 00:19:59"), 2),
        (ts("2026-01-06 00:49:59"), ts("2026-01-06 00:49:59"), 1),
    ]
    # the events of the first session landed in different hour and date partitions
    landing = {r["landing_hour"] for r in out["events_clean"].to_pylist()}
    assert landing == {ts("2026-01-05 23:00"), ts("2026-01-06 00:00")}


def test_gap_parameter():
    ev = [event(at="2026-01-05 10:00", user="u1"), event(at="2026-01-05 10:40", user="u1")]
    assert len(sessions_of(build(ev, granted_all("u1")))) == 2
    assert len(sessions_of(build(ev, granted_all("u1"), session_gap_minutes=45))) == 1


def test_session_is_cut_at_24_hours():
    start = ts("2026-01-07 00:00")
    ev = [event(at=start + timedelta(minutes=20 * i), user="u1") for i in range(76)]  # 00:00 .. +25h, every 20 min
    out = build(ev, granted_all("u1"))
    assert sessions_of(out) == [
        (start, start + timedelta(hours=23, minutes=40), 72),
        (start + timedelta(hours=24), start + timedelta(hours=25), 4),
    ]
    shorter = build(ev, granted_all("u1"), max_session_hours=12)
    assert [s[2] for s in sessions_of(shorter)] == [36, 36, 4]


def test_out_of_order_input_gives_the_same_sessions():
    base = [
        event(at="2026-01-05 10:00", user="u1", message_id="e1", type="page", content_id=None, dwell_ms=10),
        event(at="2026-01-05 10:05", user="u1", message_id="e2", content_id="c-landing", dwell_ms=20),
        event(at="2026-01-05 10:05", user="u1", message_id="e3", content_id="c-tie-later-id"),
        event(at="2026-01-05 10:20", user="u1", message_id="e4", type="screen"),
        event(at="2026-01-05 10:25", user="u1", message_id="e5", name="Order Completed", price=3.0),
        event(at="2026-01-05 12:00", user="u1", message_id="e6", name="Subscription Started", price=1.0, content_id="c6"),
        event(at="2026-01-05 14:00", user="u1", message_id="e7", name="Product Added", content_id="c7"),
    ]
    shuffled = base[:]
    random.Random(7).shuffle(shuffled)
    # received in a different order than they happened
    for i, e in enumerate(shuffled):
        e["received_at"] = ts("2026-01-05 15:00") + timedelta(seconds=i)
        e["landing_hour"] = ts("2026-01-05 15:00")
    a = build(base, granted_all("u1"), as_of="2026-01-06 00:00")
    b = build(shuffled, granted_all("u1"), as_of="2026-01-06 00:00")
    assert a["sessions"].equals(b["sessions"])

    s = a["sessions"].to_pylist()
    assert [r["events"] for r in s] == [5, 1, 1]
    assert [r["pages"] for r in s] == [2, 0, 0]
    assert [r["dwell_ms"] for r in s] == [30, 0, 0]
    assert [r["landing_content_id"] for r in s] == ["c-landing", "c6", "c7"]
    assert [r["converted"] for r in s] == [True, True, False]
    person = pseudo("u1")
    start_us = int((ts("2026-01-05 10:00") - EPOCH) / timedelta(microseconds=1))
    assert s[0]["session_id"] == hashlib.md5(f"{person}|{start_us}".encode()).hexdigest()
    assert s[0]["person_id"] == person


def test_sessions_follow_the_stitched_person():
    ev = [
        event(at="2026-01-05 10:00", anon="a1"),  # before login, anonymous
        event(at="2026-01-05 10:10", anon="a1", user="u1"),
        event(at="2026-01-05 10:20", anon="a2", user="u1"),  # second device, same person
    ]
    out = build(ev, granted_all("u1", "a1"))
    assert sessions_of(out) == [(ts("2026-01-05 10:00"), ts("2026-01-05 10:20"), 3)]
