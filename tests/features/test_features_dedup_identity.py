"""events_clean deduplication and late bound; identity stitching, components and the junk guard."""

from tests.features.feature_fixtures import build, event, granted_all, pseudo, rows


def by_message(table):
    return {r["message_id"]: r for r in table.to_pylist()}


def test_dedup_keeps_earliest_received_copy_and_counts_dropped():
    ev = [
        # copy landed first but received later
        event(at="2026-01-05 09:58", user="u1", message_id="m1", received="2026-01-05 10:05", landing="2026-01-05 10:00", content_id="first-landed"),
        event(at="2026-01-05 09:58", user="u1", message_id="m1", received="2026-01-05 09:59", landing="2026-01-05 11:00", content_id="earliest-received"),
        event(at="2026-01-05 09:58", user="u1", message_id="m1", received="2026-01-05 12:00", landing="2026-01-05 12:00", content_id="third"),
        # same received_at: earliest landing hour wins
        event(at="2026-01-05 10:30", user="u1", message_id="m2", received="2026-01-05 10:31", landing="2026-01-05 11:00", content_id="later-landing"),
        event(at="2026-01-05 10:30", user="u1", message_id="m2", received="2026-01-05 10:31", landing="2026-01-05 10:00", content_id="earlier-landing"),
        event(at="2026-01-05 10:40", user="u1", message_id="m3"),
    ]
    out = build(ev, granted_all("u1"))
    kept = by_message(out["events_clean"])
    assert sorted(kept) == ["m1", "m2", "m3"]
    assert kept["m1"]["content_id"] == "earliest-received"
    assert kept["m2"]["content_id"] == "earlier-landing"
    assert out["_stats"]["duplicates_dropped"] == 3
    assert out["_stats"]["late_rejected"] == 0


def test_late_events_beyond_bound_are_rejected_and_counted():
    ev = [
        # landing 2026-01-04 01:00 - 3 days = 2026-01-01 01:00
        event(at="2026-01-01 00:59", user="u1", message_id="late", landing="2026-01-04 01:00", received="2026-01-04 01:10"),
        event(at="2026-01-01 01:00", user="u1", message_id="at-bound", landing="2026-01-04 01:00", received="2026-01-04 01:10"),
        event(at="2026-01-03 12:00", user="u1", message_id="fresh"),
        # a late event's identity link is not used either
        event(at="2025-12-01 00:00", anon="a-late", user="u1", message_id="late-link", landing="2026-01-04 01:00", received="2026-01-04 01:10"),
    ]
    out = build(ev, granted_all("u1", "a-late"))
    assert sorted(by_message(out["events_clean"])) == ["at-bound", "fresh"]
    assert out["_stats"]["late_rejected"] == 2
    assert pseudo("a-late") not in out["identity_map"]["identifier"].to_pylist()

    wider = build(ev, granted_all("u1", "a-late"), late_bound_days=40)
    assert sorted(by_message(wider["events_clean"])) == ["at-bound", "fresh", "late", "late-link"]
    assert wider["_stats"]["late_rejected"] == 0


def test_late_check_applies_to_the_kept_copy():
    ev = [
        event(at="2026-01-01 00:00", user="u1", message_id="m", received="2026-01-01 00:01", landing="2026-01-01 00:00"),
        event(at="2026-01-01 00:00", user="u1", message_id="m", received="2026-01-09 00:00", landing="2026-01-09 00:00"),
    ]
    out = build(ev, granted_all("u1"))
    assert out["events_clean"].num_rows == 1
    assert out["_stats"]["duplicates_dropped"] == 1
    assert out["_stats"]["late_rejected"] == 0


def test_events_clean_columns_and_order():
    ev = [
        event(at="2026-01-05 10:00", user="u2", message_id="b"),
        event(at="2026-01-05 09:00", user="u2", message_id="a"),
        event(at="2026-01-05 09:00", user="u1", message_id="c", type="page", page_url="https://www.example.com/x", dwell_ms=5),
    ]
    out = build(ev, granted_all("u1", "u2"))
    t = out["events_clean"]
    assert t.column_names == ["message_id", "person_id", "consent_subject", "type", "event", "timestamp", "received_at",
                              "landing_hour", "content_id", "category", "price", "currency", "dwell_ms", "page_url", "as_of"]
    keys = [(r["person_id"], r["timestamp"], r["message_id"]) for r in t.to_pylist()]
    assert keys == sorted(keys)


def component_of(identity_map):
    return {r["identifier"]: (r["person_id"], r["component_size"], r["is_junk"], r["identifier_kind"]) for r in identity_map.to_pylist()}


def test_stitching_anonymous_user_and_alias():
    ev = [
        event(at="2026-01-05 10:00", anon="a1"),
        event(at="2026-01-05 10:01", anon="a1", user="u1"),
        event(at="2026-01-05 10:02", type="alias", previous="a2", user="u1"),
        event(at="2026-01-05 10:03", anon="a2"),
        event(at="2026-01-05 10:04", anon="a3"),  # never linked
    ]
    out = build(ev, granted_all("u1", "a1", "a2", "a3"))
    comp = component_of(out["identity_map"])
    u1 = pseudo("u1")
    assert comp[pseudo("a1")] == (u1, 3, False, "anonymous")
    assert comp[pseudo("a2")] == (u1, 3, False, "anonymous")
    assert comp[u1] == (u1, 3, False, "user")
    assert comp[pseudo("a3")] == (pseudo("a3"), 1, False, "anonymous")
    persons = {r["message_id"]: r["person_id"] for r in out["events_clean"].to_pylist()}
    assert len({persons[m] for m in persons}) == 2
    assert out["_stats"]["identity_links"] == 2


def test_person_id_is_smallest_user_pseudonym_of_component():
    ev = [
        event(at="2026-01-05 10:00", anon="shared", user="u2", subject="shared"),
        event(at="2026-01-05 10:01", anon="shared", user="u3", subject="shared"),
    ]
    out = build(ev, granted_all("shared"))
    comp = component_of(out["identity_map"])
    expected = min(pseudo("u2"), pseudo("u3"))
    assert {v[0] for v in comp.values()} == {expected}
    assert all(v[1] == 3 for v in comp.values())


def test_long_chain_converges_to_one_component():
    # u0 - a0 - u1 - a1 - ... - u19: every identifier has at most 2 links
    ev = []
    for i in range(20):
        ev.append(event(at="2026-01-05 10:00", anon=f"a{i}", user=f"u{i}", subject="s"))
        ev.append(event(at="2026-01-05 10:00", anon=f"a{i}", user=f"u{i + 1}", subject="s"))
    out = build(ev, granted_all("s"))
    comp = component_of(out["identity_map"])
    expected = min(pseudo(f"u{i}") for i in range(21))
    assert len(comp) == 41
    assert {v[0] for v in comp.values()} == {expected}
    assert {v[1] for v in comp.values()} == {41}


def test_junk_identifier_is_not_merged_and_counted():
    ev = [event(at="2026-01-05 10:00", anon="kiosk", user=f"k{i}", subject=f"k{i}") for i in range(6)]
    ev += [event(at="2026-01-05 11:00", anon="kiosk", subject="kiosk")]  # anonymous activity of the kiosk itself
    ev += [event(at="2026-01-05 10:00", anon="home", user="k0", subject="k0")]
    consent = granted_all("kiosk", *[f"k{i}" for i in range(6)])
    out = build(ev, consent)  # max_links = 5: 6 users on one device is junk
    comp = component_of(out["identity_map"])
    assert comp[pseudo("kiosk")] == (pseudo("kiosk"), 1, True, "anonymous")
    for i in range(1, 6):
        assert comp[pseudo(f"k{i}")] == (pseudo(f"k{i}"), 1, False, "user")
    # k0 keeps its other (non-junk) link
    assert comp[pseudo("home")][0] == pseudo("k0") and comp[pseudo("k0")][1] == 2
    assert out["_stats"]["junk_identifiers"] == 1
    assert out["_stats"]["junk_anonymous"] == 1
    persons = {r["message_id"]: r["person_id"] for r in out["events_clean"].to_pylist()}
    assert sorted(set(persons.values())) == sorted({pseudo("kiosk"), *[pseudo(f"k{i}") for i in range(6)]})

    relaxed = build(ev, consent, max_links=6)
    comp = component_of(relaxed["identity_map"])
    assert relaxed["_stats"]["junk_identifiers"] == 0
    assert {v[1] for v in comp.values()} == {8}


def test_exactly_max_links_is_not_junk_and_user_side_is_guarded_too():
    ev = [event(at="2026-01-05 10:00", anon=f"d{i}", user="five") for i in range(5)]
    ev += [event(at="2026-01-05 10:00", anon=f"e{i}", user="six") for i in range(6)]
    out = build(ev, granted_all("five", "six"))
    comp = component_of(out["identity_map"])
    assert comp[pseudo("five")] == (pseudo("five"), 6, False, "user")
    assert comp[pseudo("six")] == (pseudo("six"), 1, True, "user")
    assert comp[pseudo("e0")] == (pseudo("e0"), 1, False, "anonymous")
    assert out["_stats"]["junk_user"] == 1
    assert rows(out["identity_map"], "is_junk").count({"is_junk": True}) == 1
