"""The as-of consent join, property-tested: an event is kept for a purpose iff consent was in force
at the event's time (latest decision at or before it; before any decision, the policy default)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personalization_assets.privacy import consent as c
from personalization_assets.privacy.identity import IDENTITY_SCHEMA
from personalization_assets.core.policies import get_policy

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
SUBJECT = "v1:" + "a" * 64
OTHER = "v1:" + "b" * 64


def ledger_table(decisions):
    rows = []
    for seq, (minute, decision, source) in enumerate(decisions, start=1):
        rows.append({"seq": seq, "decision_id": f"d{seq}", "identifier_pseudonym": SUBJECT, "identifier_kind": "user",
                     "purpose": "personalization", "decision": decision, "effective_at": T0 + timedelta(minutes=minute),
                     "recorded_at": T0, "source": source, "source_ref": f"m{seq}", "policy_version": "t",
                     "jurisdiction": "EU", "jurisdiction_source": "event_location", "prev_hash": "0" * 64, "row_hash": "0" * 64})
    return pa.Table.from_pylist(rows, schema=c.LEDGER_SCHEMA)


def identity_table(jurisdiction="EU", source="event_location"):
    return pa.Table.from_pylist([{"identifier": SUBJECT, "identifier_kind": "user", "consent_subject": SUBJECT, "linked_users": 0,
                                  "jurisdiction": jurisdiction, "jurisdiction_source": source, "last_seen_at": T0}], schema=IDENTITY_SCHEMA)


def kept(decisions, event_minutes, jurisdiction="EU"):
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("ledger", ledger_table(decisions))
    con.register("identity", identity_table(jurisdiction))
    state = c.build_consent_state(con, get_policy())
    con.register("consent_state", state)
    events = pa.table({"__row": list(range(len(event_minutes))), "consent_subject": [SUBJECT] * len(event_minutes),
                       "timestamp": pa.array([T0 + timedelta(minutes=m) for m in event_minutes], pa.timestamp("us", tz="UTC"))})
    con.register("ev", events)
    rows = con.sql(c.ASOF_PURPOSES_SQL.format(events="ev")).fetchall()
    result = {r: ("personalization" in (p or [])) for r, p in rows}
    return [result[i] for i in range(len(event_minutes))], state


def expected(decisions, minute):
    """The latest instant at or before `minute` decides; decisions at one instant have no order: any denial wins."""
    at = [m for m, _, _ in decisions if m <= minute]
    if not at:
        return False  # no decision yet: EU personalization is opt-in, no record = deny
    return all(d == "granted" for m, d, _ in decisions if m == max(at))


decision_st = st.tuples(st.integers(0, 500), st.sampled_from(["granted", "denied", "withdrawn"]), st.just("cmp_event"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(decision_st, max_size=8), st.lists(st.integers(-50, 600), min_size=1, max_size=30))
def test_event_kept_iff_consent_in_force_at_event_time(decisions, event_minutes):
    got, state = kept(decisions, event_minutes)
    assert got == [expected(decisions, m) for m in event_minutes]
    # the state covers all time without overlap: exactly one interval per instant
    iv = sorted((r["valid_from"], r["valid_to"]) for r in state.to_pylist() if r["purpose"] == "personalization")
    for (f1, t1), (f2, _) in zip(iv, iv[1:]):
        assert t1 == f2


# per subject and purpose: contiguous intervals from the epoch, each (minutes after T0 where it ends, status)
_intervals = st.lists(st.tuples(st.integers(0, 300), st.sampled_from(["granted", "denied"])), max_size=4)
_subject_state = st.dictionaries(st.sampled_from(["personalization", "analytics", "advertising"]), _intervals, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_subject_state, min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 4), st.integers(-20, 320)), min_size=1, max_size=25))
def test_the_per_subject_lookup_gives_the_as_of_join(states, events):
    """The consented step's batches use SUBJECT_GRANTED_SQL + ASOF_PURPOSES_LOOKUP_SQL instead of joining every
    interval row: per event the same granted purposes, and a row only where there is one. Subject 4 has no state;
    interval ends land exactly on event times (end exclusive, start inclusive)."""
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    rows = []
    for i, per_purpose in enumerate(states):
        for purpose, cuts in per_purpose.items():
            start = epoch
            ends = sorted({m for m, _ in cuts})
            statuses = [st_ for _, st_ in cuts][:len(ends)] + ["granted"]
            for j, end in enumerate(ends + [None]):
                stop = None if end is None else T0 + timedelta(minutes=end)
                if stop is not None and stop <= start:
                    continue
                rows.append({"consent_subject": f"s{i}", "purpose": purpose, "status": statuses[j], "valid_from": start,
                             "valid_to": stop, "basis": "decision", "jurisdiction": "EU", "jurisdiction_source": "unknown",
                             "source": "cmp_event"})
                start = stop
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("consent_state", pa.Table.from_pylist(rows, schema=c.STATE_SCHEMA))
    con.register("ev", pa.table({"__row": list(range(len(events))), "consent_subject": [f"s{s}" for s, _ in events],
                                 "timestamp": pa.array([T0 + timedelta(minutes=m) for _, m in events], pa.timestamp("us", tz="UTC"))}))
    con.execute(f"create temp table lookup as {c.SUBJECT_GRANTED_SQL}")
    joined = {r: p for r, p in con.sql(c.ASOF_PURPOSES_SQL.format(events="ev")).fetchall() if p}
    looked_up = dict(con.sql(c.ASOF_PURPOSES_LOOKUP_SQL.format(events="ev", lookup="lookup")).fetchall())
    assert looked_up == joined


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(decision_st, min_size=2, max_size=8), st.randoms(use_true_random=False))
def test_decisions_at_one_instant_give_one_state_in_any_append_order(decisions, rnd):
    """Decisions of a subject and purpose in the same millisecond (a user and their device; a CMP event and a privacy
    request) have no order in time. The state took the later ledger seq, i.e. the arrival order or, within one
    build, the random message id: two deployments fed the same events disagreed. A denial among them wins."""
    decisions = [(m % 3, d, src) for m, d, src in decisions]  # crowd them onto three instants
    shuffled = decisions[:]
    rnd.shuffle(shuffled)
    _, state = kept(decisions, [0])
    _, again = kept(shuffled, [0])
    key = lambda r: (r["purpose"], r["valid_from"])  # noqa: E731
    assert sorted(state.to_pylist(), key=key) == sorted(again.to_pylist(), key=key)


def test_a_denial_wins_over_a_grant_at_the_same_instant():
    for order in ([(10, "granted", "cmp_event"), (10, "denied", "cmp_event")], [(10, "denied", "cmp_event"), (10, "granted", "cmp_event")]):
        got, state = kept(order, [9, 10, 11])
        assert got == [False, False, False], order
        assert [r["status"] for r in state.to_pylist() if r["purpose"] == "personalization" and r["basis"] == "decision"] == ["denied"]


def test_withdrawal_applies_from_its_time_and_earlier_events_stay():
    got, _ = kept([(10, "granted", "cmp_event"), (100, "withdrawn", "cmp_event")], [5, 10, 50, 99, 100, 150])
    assert got == [False, True, True, True, False, False]


def test_no_record_is_denied_everywhere_for_personalization():
    for jurisdiction in ("EU", "US-CA", "default", "unknown"):
        got, state = kept([], [0, 100], jurisdiction)
        assert got == [False, False]
        assert {r["basis"] for r in state.to_pylist()} == {"policy_default"}


def test_opt_out_purpose_is_allowed_without_record_in_california():
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("ledger", ledger_table([]))
    con.register("identity", identity_table("US-CA"))
    state = c.build_consent_state(con, get_policy()).to_pylist()
    status = {r["purpose"]: r["status"] for r in state}
    assert status == {"personalization": "denied", "analytics": "granted", "advertising": "granted", "sale_share": "granted"}


def test_gpc_denial_is_sticky_for_sale_share():
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    rows = ledger_table([(10, "granted", "cmp_event"), (20, "denied", "gpc_signal"), (30, "granted", "cmp_event")]).to_pylist()
    for r in rows:
        r["purpose"] = "sale_share"
    con.register("ledger", pa.Table.from_pylist(rows, schema=c.LEDGER_SCHEMA))
    con.register("identity", identity_table("US-CA"))
    state = [r for r in c.build_consent_state(con, get_policy()).to_pylist() if r["purpose"] == "sale_share"]
    after_gpc = [r["status"] for r in state if r["valid_from"] >= T0 + timedelta(minutes=20)]
    assert after_gpc == ["denied", "denied"]


def test_preferences_map_categories_to_purposes():
    policy = get_policy()
    assert c.purposes_from_preferences('{"Personalization": true, "analytics": false}', policy) == {
        "personalization": "granted", "analytics": "denied"}
    # fail-closed: one false category of a purpose denies it
    assert c.purposes_from_preferences('{"advertising": false, "data_sharing": true}', policy) == {
        "advertising": "denied", "sale_share": "denied"}
    assert c.purposes_from_preferences('{"functional": true, "personalization": false}', policy) == {"personalization": "denied"}
    assert c.purposes_from_preferences("not json", policy) == {}
    assert c.purposes_from_preferences('{"personalization": "yes"}', policy) == {}


def test_denied_after_grant_is_recorded_as_withdrawn_and_duplicates_are_skipped():
    base = {"identifier_pseudonym": SUBJECT, "identifier_kind": "user", "purpose": "personalization", "recorded_at": T0,
            "source": "cmp_event", "policy_version": "t", "jurisdiction": "EU"}
    cands = [
        {**base, "decision": "granted", "effective_at": T0, "source_ref": "a", "decision_id": "1"},
        {**base, "decision": "denied", "effective_at": T0 + timedelta(hours=1), "source_ref": "b", "decision_id": "2"},
        {**base, "decision": "denied", "effective_at": T0 - timedelta(hours=1), "source_ref": "c", "decision_id": "3"},
    ]
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    # the same decision twice (e.g. a message duplicated across two landing hours) is one candidate
    con.register("__cands", pa.Table.from_pylist(cands + [cands[1]], schema=c.CANDIDATE_SCHEMA))
    con.execute("create temp table cands as select *, 0 as __ord from __cands")
    def new_rows(existing, candidates):
        c.new_ledger_rows(con, existing, candidates, "fresh")
        return con.sql(c.LEDGER_ORDER_SQL.format(table="fresh")).to_arrow_table().to_pylist()

    fresh = new_rows(c.LEDGER_SCHEMA.empty_table(), "cands")
    assert [(r["source_ref"], r["decision"]) for r in fresh] == [("c", "denied"), ("a", "granted"), ("b", "withdrawn")]
    again = new_rows(pa.Table.from_pylist([{**r, "seq": i, "prev_hash": "", "row_hash": ""} for i, r in enumerate(fresh, 1)], schema=c.LEDGER_SCHEMA), "cands")
    assert again == []
    # a denial after a grant that is already in the ledger is a withdrawal too
    later = {**base, "decision": "denied", "effective_at": T0 + timedelta(hours=2), "source_ref": "d", "decision_id": "4"}
    con.register("__later", pa.Table.from_pylist([later], schema=c.CANDIDATE_SCHEMA))
    con.execute("create temp table later as select *, 0 as __ord from __later")
    ledger = pa.Table.from_pylist([{**r, "seq": i, "prev_hash": "", "row_hash": ""} for i, r in enumerate(fresh, 1)], schema=c.LEDGER_SCHEMA)
    assert [r["decision"] for r in new_rows(ledger, "later")] == ["withdrawn"]
    # the ledger step passes the stored rows as a DuckDB table (they stay within DuckDB's memory limit): same answers
    con.register("__ledger_rows", ledger)
    con.execute("create temp table stored as select * from __ledger_rows")
    assert [r["decision"] for r in new_rows("stored", "later")] == ["withdrawn"]
    assert new_rows("stored", "cands") == []


_CATEGORIES = sorted({cat for p in get_policy().purposes.values() for cat in p.categories} | {"functional", "other"})
_prefs_objects = st.dictionaries(
    st.sampled_from(_CATEGORIES), st.one_of(st.booleans(), st.integers(0, 1), st.sampled_from(["yes", "true"]), st.none()), max_size=6,
).flatmap(lambda d: st.tuples(st.just(d), st.lists(st.booleans(), min_size=len(d), max_size=len(d))).map(
    # random key case: the CMP's category names are matched case-insensitively
    lambda t: json.dumps({(k.upper() if up else k): v for (k, v), up in zip(t[0].items(), t[1])})))
_prefs = st.one_of(_prefs_objects, st.sampled_from(["not json", "[1, 2]", "", "{", "null", '"x"']), st.none())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_prefs, st.booleans(), st.booleans()), max_size=12))
def test_decisions_in_duckdb_follow_the_preference_rule(events):
    """candidate_decisions (SQL, spills) agrees with purposes_from_preferences (the rule stated for one
    object) and the decision_id idempotency key, for CMP events, GPC signals and privacy requests."""
    policy = get_policy()
    rows = [{"identifier_pseudonym": f"v1:{i % 3:064d}", "identifier_kind": "user" if i % 2 else "anonymous", "message_id": f"m{i}",
             "timestamp": T0 + timedelta(minutes=i), "consent_preferences": prefs, "gpc": gpc, "is_consent_event": is_cmp, "jurisdiction": "EU",
             "jurisdiction_source": "event_location"}
            for i, (prefs, gpc, is_cmp) in enumerate(events)]
    schema = pa.schema([("identifier_pseudonym", pa.string()), ("identifier_kind", pa.string()), ("message_id", pa.string()),
                        ("timestamp", pa.timestamp("us", tz="UTC")), ("consent_preferences", pa.string()), ("gpc", pa.bool_()),
                        ("is_consent_event", pa.bool_()), ("jurisdiction", pa.string()), ("jurisdiction_source", pa.string())])
    requests = pa.Table.from_pylist([
        {"identifier_pseudonym": SUBJECT, "identifier_kind": "email", "request_id": "r1", "type": "opt_out_sale", "received_at": T0, "jurisdiction": "US-CA",
         "jurisdiction_source": "request"},
        {"identifier_pseudonym": OTHER, "identifier_kind": "user", "request_id": "r2", "type": "erasure", "received_at": T0, "jurisdiction": "EU",
         "jurisdiction_source": "request"},
    ])
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("consent_inputs", pa.Table.from_pylist(rows, schema=schema))
    con.register("request_inputs", requests)
    n = c.candidate_decisions(con, policy, recorded_at=T0)
    got = {(r["source"], r["source_ref"], r["identifier_pseudonym"], r["purpose"], r["decision"], r["decision_id"])
           for r in con.sql("select * from __candidates").to_arrow_table().to_pylist()}
    # each decision carries the jurisdiction and its source from its input row
    for r in con.sql("select source, jurisdiction, jurisdiction_source from __candidates").fetchall():
        assert r == ("privacy_request", "US-CA", "request") if r[0] == "privacy_request" else r[1:] == ("EU", "event_location"), r
    expected = set()
    for r in rows:
        if r["is_consent_event"] and r["consent_preferences"] is not None:
            for purpose, decision in c.purposes_from_preferences(r["consent_preferences"], policy).items():
                expected.add(("cmp_event", r["message_id"], r["identifier_pseudonym"], purpose, decision,
                              c.decision_id("cmp_event", r["message_id"], purpose, r["identifier_kind"])))
    first_gpc = {}
    for r in rows:
        if r["gpc"]:
            first_gpc.setdefault((r["identifier_pseudonym"], r["identifier_kind"]), r)
    for (ident, kind), r in first_gpc.items():
        for p in policy.purposes.values():
            if p.gpc_denies:
                expected.add(("gpc_signal", r["message_id"], ident, p.name, "denied", c.decision_id("gpc_signal", r["message_id"], p.name, kind)))
    for req in requests.to_pylist():
        for p in policy.purposes.values():
            if req["type"] in p.privacy_request_types:
                expected.add(("privacy_request", req["request_id"], req["identifier_pseudonym"], p.name, p.privacy_request_types[req["type"]],
                              c.decision_id("privacy_request", req["request_id"], p.name, req["identifier_kind"])))
    assert got == expected and n == len(expected)


def test_a_decision_never_takes_effect_after_it_was_received(data_dir):
    """A CMP grant sent by a client whose clock runs 20 h ahead (the collector accepts up to +24 h), then a withdrawal
    an hour later: ordered by the client's timestamps, the grant took effect 19 h after the withdrawal and overrode it.
    A decision's effective time is its event time, but never later than its receivedAt (through the real assets)."""
    import gzip

    from personalization_assets.core.tracking_plan import CONSENT_EVENT
    from tests.helpers import defs_for_env, materialize
    from tests.raw.hostile import line, msg

    t = datetime(2026, 12, 1, 10, tzinfo=timezone.utc)

    def iso(d: datetime) -> str:
        return d.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def cmp(i: int, allowed: bool, timestamp: datetime, received: datetime) -> dict:
        return msg(i, event=CONSENT_EVENT, userId="user-skew", anonymousId="anon-skew", timestamp=iso(timestamp),
                   sentAt=iso(timestamp), receivedAt=iso(received),
                   context={"consent": {"categoryPreferences": {"personalization": allowed}}, "location": {"country": "DE"}})

    path = data_dir / "landing" / "events" / "date=2026-12-01" / "hour=10" / "cmp.jsonl.gz"
    path.parent.mkdir(parents=True)
    grant = cmp(1, True, t + timedelta(hours=20), t + timedelta(minutes=1))  # the client clock runs 20 h ahead
    withdrawal = cmp(2, False, t + timedelta(minutes=50), t + timedelta(minutes=50))
    path.write_bytes(gzip.compress(line(grant) + line(withdrawal), mtime=0))
    defs = defs_for_env()
    materialize(defs, " or ".join(f"key:{k}" for k in ("raw/events", "raw/crm_profiles", "raw/privacy_requests", "privacy/identity_links",
                                                      "privacy/consent_ledger", "privacy/consent_state")))
    lake, pz = defs.resources["lake"], defs.resources["pseudonymizer"]
    user = pz.pseudonymize_values(["user-skew"], "id")[0]
    state = [r for r in lake.read_table("privacy", "consent_state").to_pylist()
             if r["consent_subject"] == user and r["purpose"] == "personalization" and r["status"] == "granted"]
    assert [(r["valid_from"], r["valid_to"]) for r in state] == [(t + timedelta(minutes=1), t + timedelta(minutes=50))], state


def test_an_event_made_while_consent_was_denied_stays_out_whatever_the_client_clock(data_dir):
    """The consented tier looks consent up for an event at the same clock the ledger gives decisions: its timestamp, but
    never after its receivedAt. A client 20 h ahead denies, views a page, then grants: with the decisions clamped but
    the lookup at the event's own (ahead) timestamp, the page view made while consent was denied was looked up after
    the grant and kept (through the real assets)."""
    import gzip

    from personalization_assets.core.tracking_plan import CONSENT_EVENT
    from tests.helpers import defs_for_env, materialize
    from tests.raw.hostile import line, msg

    t, ahead = datetime(2026, 12, 1, 10, tzinfo=timezone.utc), timedelta(hours=20)

    def iso(d: datetime) -> str:
        return d.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def event(i: int, real: datetime, **kw) -> dict:
        return msg(i, userId="user-ahead", anonymousId="anon-ahead", timestamp=iso(real + ahead), sentAt=iso(real + ahead),
                   receivedAt=iso(real), **kw)

    def cmp(allowed: bool) -> dict:
        return {"event": CONSENT_EVENT, "context": {"consent": {"categoryPreferences": {"personalization": allowed}},
                                                    "location": {"country": "DE"}}}

    path = data_dir / "landing" / "events" / "date=2026-12-01" / "hour=10" / "ahead.jsonl.gz"
    path.parent.mkdir(parents=True)
    messages = [event(1, t + timedelta(minutes=5), **cmp(False)), event(2, t + timedelta(minutes=30)),
                event(3, t + timedelta(minutes=50), **cmp(True)), event(4, t + timedelta(minutes=55))]
    path.write_bytes(gzip.compress(b"".join(line(m) for m in messages), mtime=0))
    defs = defs_for_env()
    materialize(defs, " or ".join(f"key:{k}" for k in ("raw/events", "raw/crm_profiles", "raw/privacy_requests", "privacy/identity_links",
                                                      "privacy/consent_ledger", "privacy/consent_state", "privacy/suppression_list",
                                                      "consented/events_state")))
    kept = defs.resources["lake"].read_table("consented", "events", {"date": "2026-12-01", "hour": "10"})
    assert sorted(kept["message_id"].to_pylist()) == ["m-3", "m-4"], "an event made while consent was denied was kept"
