"""Point-in-time correctness: a rebuild at the same cutoff is identical whatever arrived later."""

from datetime import timedelta

from tests.features.feature_fixtures import build, consent, event, granted_all, pseudo, ts

T1 = ts("2026-02-01 00:00")
T2 = ts("2026-02-10 00:00")


def history() -> list[dict]:
    ev = []
    for d in range(20):
        day = T1 - timedelta(days=20 - d)
        ev.append(event(at=day + timedelta(hours=9), anon="a1", type="page", category="news", dwell_ms=1000 + d, message_id=f"h{d}a"))
        ev.append(event(at=day + timedelta(hours=9, minutes=5), anon="a1", user="u1", category="sports", message_id=f"h{d}b"))
        if d % 5 == 0:
            ev.append(event(at=day + timedelta(hours=9, minutes=10), user="u1", name="Order Completed", price=3.0 + d, message_id=f"h{d}c"))
        ev.append(event(at=day + timedelta(hours=20), user="u2", type="screen", category="tech", message_id=f"h{d}d"))
    return ev


def later_arrivals() -> list[dict]:
    return [
        # after T1
        event(at=T1 + timedelta(hours=1), user="u1", name="Order Completed", price=100.0, message_id="n1"),
        event(at=T1 + timedelta(days=2), anon="a9", user="u9", category="food", message_id="n2"),
        event(at=T1 + timedelta(days=2), anon="a1", user="u3", category="food", message_id="n3"),  # links a1 to u3
        # happened before T1 but received after it (late arrival)
        event(at=T1 - timedelta(hours=2), user="u2", type="screen", category="food", message_id="n4",
              received=T1 + timedelta(hours=3)),
        # a re-delivered copy of an old message
        event(at=T1 - timedelta(days=1, hours=-9), anon="a1", type="page", category="news", message_id="h19a",
              received=T1 + timedelta(hours=5)),
    ]


def consent_rows():
    return [*granted_all("u1", "u2", "u3", "u9", "a1", "a9"), consent("nobody", "advertising", "denied")]


def test_rebuild_at_same_cutoff_is_identical_and_later_cutoff_sees_new_events():
    first = build(history(), consent_rows(), as_of=T1)
    again = build(history() + later_arrivals(), consent_rows(), as_of=T1)
    for table in first:
        if table == "_stats":
            continue
        assert first[table].equals(again[table]), table
    assert first["events_clean"].num_rows > 0 and first["content_affinity"].num_rows > 0

    later = build(history() + later_arrivals(), consent_rows(), as_of=T2)
    ids = set(later["events_clean"]["message_id"].to_pylist())
    assert {"n1", "n2", "n3", "n4"} <= ids
    assert not {"n1", "n2", "n3", "n4"} & set(first["events_clean"]["message_id"].to_pylist())
    assert later["_stats"]["duplicates_dropped"] == 1
    persons = set(later["user_rfm"]["person_id"].to_pylist())
    assert pseudo("u9") in persons
    # n3 links a1 to u3: u1 and u3 become one person (named by the smaller user pseudonym)
    merged = {r["identifier"]: r["person_id"] for r in later["identity_map"].to_pylist()}
    assert merged[pseudo("u1")] == merged[pseudo("u3")] == min(pseudo("u1"), pseudo("u3"))
    assert {r["identifier"]: r["person_id"] for r in first["identity_map"].to_pylist()}[pseudo("u1")] == pseudo("u1")
    assert max(later["user_rfm"]["as_of"].to_pylist()) == T2
