"""The whole Segment/RudderStack message spec reaches raw/events: real bodies of the Python SDKs of both CDPs
(captured from a loopback HTTP server), plus the fields the CDP SERVERS add, through `ingest_event_batch`.

Built to break the tracking plan this replaced: `group` calls were quarantined (`invalid_type`); RudderStack
puts identify traits in `context.traits`, which was never read (no email, no email identity link);
`originalTimestamp` was not kept, so a message without `timestamp` was quarantined instead of getting the
CDPs' clock-skew-corrected time; and the server fields (receivedAt aside) were silently not stored."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from personalization_assets.raw import events_ingest as ei
from tests.sdk_capture import sdk_client

pytestmark = pytest.mark.unit

WINDOW = datetime(2026, 11, 28, 13, tzinfo=UTC)
EVENT_TIME = WINDOW + timedelta(minutes=5)
RECEIVED = WINDOW + timedelta(minutes=5, seconds=2)
SEGMENT_KEY = "seg-write-key-3f9a1c"
RUDDER_KEY = "rud-write-key-77b2e0"
KINDS = ("identify", "track", "page", "screen", "group", "alias")
COMPANY_EMAIL = "billing@acme.example"


def user_email(prefix: str) -> str:
    return f"ann.{prefix}@example.com"


USER_EMAIL = user_email("rud")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _calls(client, prefix: str) -> list[str]:
    """One call of every kind; identify carries the user's email, group the COMPANY's email."""
    ids = []
    for i, kind in enumerate(KINDS):
        mid = f"{prefix}-{kind}"
        ids.append(mid)
        common = {"timestamp": EVENT_TIME + timedelta(milliseconds=i), "message_id": mid}
        if kind == "identify":
            client.identify(user_id=f"{prefix}-u1", anonymous_id=f"{prefix}-a1", traits={"email": user_email(prefix), "name": "Ann User"}, **common)
        elif kind == "track":
            client.track(user_id=f"{prefix}-u1", event="Content Viewed", properties={"content_id": "c-1", "category": "news"}, **common)
        elif kind == "page":
            client.page(user_id=f"{prefix}-u1", name="Home", properties={"dwell_ms": 1200}, **common)
        elif kind == "screen":
            client.screen(user_id=f"{prefix}-u1", name="Feed", **common)
        elif kind == "group":
            client.group(user_id=f"{prefix}-u1", group_id=f"{prefix}-acme", traits={"email": COMPANY_EMAIL, "name": "Acme Inc", "plan": "enterprise"}, **common)
        else:
            client.alias(previous_id=f"{prefix}-a1", user_id=f"{prefix}-u1", **common)
    return ids


@pytest.fixture(scope="module")
def sdk_bodies(sdk_capture) -> dict[str, list[dict]]:
    """The batch bodies the real SDKs POST, per CDP (sync mode: one HTTP request per call), captured on loopback
    (tests/sdk_capture.py)."""
    out = {}
    sdk_capture.take()
    for name, key in (("segment", SEGMENT_KEY), ("rudderstack", RUDDER_KEY)):
        client = sdk_client(name, key, sdk_capture.url, sync_mode=True, max_retries=0)
        sent = _calls(client, name[:3])
        out[name] = [body for _, body in sdk_capture.take()]
        assert sorted(m["messageId"] for b in out[name] for m in b["batch"]) == sorted(sent)
    return out


def _segment_server(body: dict, i: int) -> dict:
    """What Segment's servers add before the S3 destination writes a message (its docs' common fields)."""
    m = copy.deepcopy(body["batch"][0])
    m["originalTimestamp"] = m["timestamp"]
    m["sentAt"] = _iso(RECEIVED - timedelta(seconds=1))
    m["receivedAt"] = _iso(RECEIVED)
    m["projectId"] = "src-Seg123"
    m["version"] = 2
    m["_metadata"] = {"bundled": ["Segment.io"], "unbundled": ["Braze"]}
    m["writeKey"] = body["writeKey"]  # the SDK sends it in the batch body; some S3 logs carry it per message
    m.setdefault("integrations", {})
    return m


def _rudder_server(body: dict, i: int) -> dict:
    """What rudder-server adds: receivedAt, sentAt/originalTimestamp, rudderId, request_ip (channel comes from the SDK)."""
    m = copy.deepcopy(body["batch"][0])
    m["originalTimestamp"] = m["timestamp"]
    m["sentAt"] = _iso(RECEIVED - timedelta(seconds=1))
    m["receivedAt"] = _iso(RECEIVED)
    m["rudderId"] = f"5b0c2f8e-0000-4000-8000-{i:012d}"
    m["request_ip"] = "198.51.100.77"
    return m


@pytest.fixture(scope="module")
def landed(sdk_bodies) -> dict[str, list[dict]]:
    """The messages as the CDPs' S3 destinations write them."""
    return {
        "segment": [_segment_server(b, i) for i, b in enumerate(sdk_bodies["segment"])],
        "rudderstack": [_rudder_server(b, i) for i, b in enumerate(sdk_bodies["rudderstack"])],
    }




def _ingest(con, messages: list[dict], slow: bool = False, name: str = "segment-logs/src/1764288000000/part.gz"):
    data = b"".join(json.dumps(m).encode() + b"\n" for m in messages)
    if slow:  # one malformed line sends the file down the line-by-line path
        data += b"{not json\n"
    f = ei.load_file(name, gzip.compress(data))
    [result] = ei.ingest_event_batch(con, [(WINDOW, [(f, None)])], horizon_days=30, max_future_minutes=1440, max_line_bytes=1 << 20)
    assert result.records_read == result.raw.num_rows + result.quarantine.num_rows
    return result


def _rows(result) -> dict[str, dict]:
    return {r["message_id"]: r for r in result.raw.to_pylist()}


def _reasons(result) -> dict[int, str]:
    return {r["line_no"]: r["reason"] for r in result.quarantine.to_pylist()}


# --------------------------------------------------------------------------------------------------------


def test_every_sdk_message_of_every_kind_lands_in_raw_exactly_once_through_either_path(con, landed):
    messages = landed["segment"] + landed["rudderstack"]
    fast, slow = _ingest(con, messages), _ingest(con, messages, slow=True)
    assert fast.fast_path_files == 1 and slow.fast_path_files == 0
    for result in (fast, slow):
        ids = result.raw["message_id"].to_pylist()
        assert sorted(ids) == sorted(m["messageId"] for m in messages)
        assert len(ids) == len(set(ids)) == 12
        assert {(r["type"], r["message_id"][:3]) for r in result.raw.to_pylist()} == {(k, p) for k in KINDS for p in ("seg", "rud")}
    assert _reasons(fast) == {} and _reasons(slow) == {13: "malformed_json"}
    assert fast.raw.equals(slow.raw)


def test_group_call_is_accepted_and_its_traits_never_become_the_users(con, landed):
    rows = _rows(_ingest(con, landed["segment"] + landed["rudderstack"]))
    for prefix in ("seg", "rud"):
        group = rows[f"{prefix}-group"]
        assert group["type"] == "group" and group["group_id"] == f"{prefix}-acme"
        # the company's email is in group_traits only: not the user's email, name or traits
        assert json.loads(group["group_traits"]) == {"email": COMPANY_EMAIL, "name": "Acme Inc", "plan": "enterprise"}
        assert group["trait_email"] is None and group["trait_name"] is None and group["traits"] is None
        assert group["user_id"] == f"{prefix}-u1"
        # ... while identify's traits are the user's
        identify = rows[f"{prefix}-identify"]
        assert identify["trait_email"] == user_email(prefix) and identify["group_traits"] is None and identify["group_id"] is None
    assert COMPANY_EMAIL not in {r["trait_email"] for r in rows.values()}


def test_group_without_group_id_is_quarantined(con, landed):
    group = next(m for m in landed["segment"] if m["type"] == "group")
    bad = {k: v for k, v in group.items() if k != "groupId"} | {"messageId": "no-group-id"}
    result = _ingest(con, [group, bad])
    assert result.raw["message_id"].to_pylist() == [group["messageId"]]
    assert _reasons(result) == {2: "group_without_group_id"}


def test_rudderstack_user_traits_in_context_traits_reach_the_identity_columns(con, landed):
    identify = next(m for m in landed["rudderstack"] if m["type"] == "identify")
    assert "traits" not in identify and identify["context"]["traits"]["email"] == USER_EMAIL  # the SDK's layout
    row = _rows(_ingest(con, [identify]))[identify["messageId"]]
    assert row["trait_email"] == USER_EMAIL and row["trait_name"] == "Ann User"
    assert json.loads(row["traits"]) == {"email": USER_EMAIL, "name": "Ann User"}


def test_context_traits_on_a_group_call_are_the_users_and_group_traits_stay_apart(con, landed):
    """A RudderStack group call may carry the user's cached traits in context.traits: those are the user's."""
    group = copy.deepcopy(next(m for m in landed["rudderstack"] if m["type"] == "group"))
    group["context"]["traits"] = {"email": USER_EMAIL}
    row = _rows(_ingest(con, [group]))[group["messageId"]]
    assert row["trait_email"] == USER_EMAIL
    assert json.loads(row["traits"]) == {"email": USER_EMAIL}
    assert json.loads(row["group_traits"])["email"] == COMPANY_EMAIL


def test_traits_and_context_traits_together_merge_key_by_key_top_level_winning(con, landed):
    identify = copy.deepcopy(next(m for m in landed["segment"] if m["type"] == "identify"))
    identify["traits"] = {"email": USER_EMAIL, "plan": "free"}  # a Segment message also holding context.traits
    identify["context"]["traits"] = {"email": "old@example.com", "phone": "+49 30 1234567", "address": {"city": "Berlin"}}
    for slow in (False, True):
        row = _rows(_ingest(con, [identify], slow=slow))[identify["messageId"]]
        assert (row["trait_email"], row["trait_phone"]) == (USER_EMAIL, "+49 30 1234567")
        assert json.loads(row["traits"]) == {"email": USER_EMAIL, "plan": "free", "phone": "+49 30 1234567", "address": {"city": "Berlin"}}


@pytest.mark.parametrize("slow", [False, True], ids=["fast_path", "slow_path"])
def test_a_wrong_json_type_in_context_traits_is_quarantined_not_coerced(con, landed, slow):
    identify = next(m for m in landed["rudderstack"] if m["type"] == "identify")
    numeric = copy.deepcopy(identify) | {"messageId": "numeric-email"}
    numeric["context"]["traits"]["email"] = 12345
    # also when top-level traits has a valid email: every path the plan reads is checked
    shadowed = copy.deepcopy(numeric) | {"messageId": "shadowed", "traits": {"email": USER_EMAIL}}
    result = _ingest(con, [identify, numeric, shadowed], slow=slow)
    assert result.raw["message_id"].to_pylist() == [identify["messageId"]]
    q = {r["line_no"]: r for r in result.quarantine.to_pylist() if r["line_no"] in (2, 3)}
    assert {n: r["reason"] for n, r in q.items()} == {2: "wrong_type", 3: "wrong_type"}
    assert all("context.traits.email must be string" in r["detail"] for r in q.values())


@pytest.mark.parametrize("case, expected", [
    ("context_traits_not_an_object", "wrong_type"),
    ("context_traits_repeats_a_key", "duplicate_key"),
    ("nested_key_repeated_in_context_traits", "duplicate_key"),
    ("context_traits_holds_nan", "non_finite_number"),
])
def test_context_traits_get_the_same_strictness_as_traits_in_both_paths(con, landed, case, expected):
    identify = copy.deepcopy(next(m for m in landed["rudderstack"] if m["type"] == "identify"))
    if case == "context_traits_not_an_object":
        identify["context"]["traits"] = USER_EMAIL
        text = json.dumps(identify).encode()
    elif case == "context_traits_repeats_a_key":
        text = json.dumps(identify).encode().replace(b'"email": "', b'"email": "evil@example.com", "email": "', 1)
    elif case == "nested_key_repeated_in_context_traits":
        identify["context"]["traits"]["address"] = {"city": "Berlin"}
        text = json.dumps(identify).encode().replace(b'"city": "Berlin"', b'"city": "Berlin", "city": "Paris"')
    else:
        identify["context"]["traits"]["score"] = float("nan")
        text = json.dumps(identify).encode()
    for slow in (False, True):
        f = ei.load_file("rudder-logs/src/2026-11-28/x.json", text + b"\n" + (b"{not json\n" if slow else b""))
        [result] = ei.ingest_event_batch(con, [(WINDOW, [(f, None)])], horizon_days=30, max_future_minutes=1440, max_line_bytes=1 << 20)
        assert result.raw.num_rows == 0 and _reasons(result)[1] == expected, (case, slow, result.quarantine.to_pylist())
        assert "context.traits" in result.quarantine.to_pylist()[0]["detail"]


def test_event_time_follows_the_cdps_clock_skew_rule(con, landed):
    base = next(m for m in landed["segment"] if m["type"] == "track")
    received = RECEIVED
    device_sent = WINDOW + timedelta(minutes=1)  # the device clock runs 4 min 2 s behind (sent 1 s before receipt)
    device_event = device_sent - timedelta(seconds=30)

    def variant(mid, drop=(), **fields):
        m = {k: v for k, v in copy.deepcopy(base).items() if k not in drop}
        return m | {"messageId": mid, "receivedAt": _iso(received), **fields}

    messages = [
        variant("sent-timestamp", timestamp=_iso(EVENT_TIME), originalTimestamp=_iso(device_event), sentAt=_iso(device_sent)),
        variant("skew", drop=("timestamp",), originalTimestamp=_iso(device_event), sentAt=_iso(device_sent)),
        variant("original-only", drop=("timestamp", "sentAt"), originalTimestamp=_iso(device_event)),
        variant("no-time", drop=("timestamp", "originalTimestamp"), sentAt=_iso(device_sent)),
    ]
    for slow in (False, True):
        result = _ingest(con, messages, slow=slow)
        rows = _rows(result)
        # receivedAt - (sentAt - originalTimestamp): 13:05:02 - 30 s
        assert rows["skew"]["timestamp"] == received - (device_sent - device_event) == WINDOW + timedelta(minutes=4, seconds=32)
        assert rows["skew"]["original_timestamp"] == device_event and rows["skew"]["sent_at"] == device_sent
        assert rows["original-only"]["timestamp"] == device_event
        assert rows["sent-timestamp"]["timestamp"] == EVENT_TIME
        assert {k: r["timestamp_source"] for k, r in rows.items()} == {
            "sent-timestamp": "timestamp", "skew": "clock_skew_corrected", "original-only": "original_timestamp"}
        assert _reasons(result)[4] == "missing_timestamp"


def test_each_server_and_sdk_field_is_stored_in_its_column(con, landed):
    rows = _rows(_ingest(con, landed["segment"] + landed["rudderstack"]))
    seg, rud = rows["seg-track"], rows["rud-track"]
    # Segment's server fields
    assert seg["project_id"] == "src-Seg123" and seg["version"] == 2
    assert json.loads(seg["cdp_metadata"]) == {"bundled": ["Segment.io"], "unbundled": ["Braze"]}
    assert json.loads(seg["integrations"]) == {}
    assert seg["context_library_name"] == "analytics-python" and seg["context_library_version"]
    assert seg["original_timestamp"] == EVENT_TIME + timedelta(milliseconds=1) and seg["sent_at"] == RECEIVED - timedelta(seconds=1)
    # the writeKey is a credential: only its hash is stored, the key appears in no column
    assert seg["write_key_sha256"] == hashlib.sha256(SEGMENT_KEY.encode()).hexdigest()
    assert not any(SEGMENT_KEY in str(v) for r in rows.values() for v in r.values())
    # RudderStack's server and SDK fields
    assert rud["rudder_id"].startswith("5b0c2f8e-") and rud["request_ip"] == "198.51.100.77" and rud["channel"] == "server"
    assert json.loads(rud["integrations"]) == {"All": True}
    assert rud["context_library_name"] == "analytics-python" and rud["write_key_sha256"] is None and rud["project_id"] is None
    # every column of the tracking plan, in its order; the landing layout's source id is the ingestion's to fill
    assert list(seg) == list(ei.RawEvent.to_schema().columns)
    assert seg["cdp_source_id"] is None


@pytest.mark.parametrize("field, value", [
    ("version", "2"), ("channel", 1), ("integrations", "All"), ("_metadata", ["bundled"]), ("request_ip", 3232235777),
    ("rudderId", {"id": 1}), ("projectId", 7), ("writeKey", True), ("originalTimestamp", 1764335100),
    ("groupId", 42), ("library", 2.4),
])
def test_a_server_field_of_the_wrong_json_type_is_quarantined(con, landed, field, value):
    m = copy.deepcopy(next(x for x in landed["segment"] if x["type"] == "track"))
    if field == "library":
        m["context"]["library"]["version"] = value
    else:
        m[field] = value
    result = _ingest(con, [m])
    assert result.raw.num_rows == 0 and _reasons(result) == {1: "wrong_type"}


def test_consented_tier_applies_the_classification_to_the_new_columns(con, landed):
    """Kept / truncated / pseudonymized columns reach consented/events; the dropped ones (group traits, rudderId,
    the write-key hash, routing and bookkeeping JSON) do not, and the group's email links no identity."""
    from personalization_assets.privacy.assets import RAW_CRM_SCHEMA
    from personalization_assets.privacy.consent import STATE_SCHEMA
    from personalization_assets.consented.transform import consent_events, kept_rows_by_hour, prepare_lookups
    from personalization_assets.privacy.suppression import SUPPRESSION_SCHEMA
    from personalization_assets.privacy.identity import (
        build_identity_links,
        jurisdiction_case_sql,
    )
    from personalization_assets.core.policies import get_policy
    from personalization_assets.core.pseudonymize import Pseudonymizer

    policy = get_policy()
    pz = Pseudonymizer(keys_json=json.dumps({"1": "11" * 32}))
    raw = _ingest(con, landed["segment"] + landed["rudderstack"]).raw
    con.register("raw_events", raw)
    con.register("raw_crm", RAW_CRM_SCHEMA.empty_table())
    identity, links = build_identity_links(con, pz, jurisdiction_case_sql(policy))
    # each user's email links to that user (RudderStack's from context.traits); the company's email links nobody
    emails = {r["identifier"]: r["user_pseudonym"] for r in links.to_pylist() if r["identifier_kind"] == "email"}
    for prefix in ("seg", "rud"):
        [email] = pz.pseudonymize_values([user_email(prefix)], "email")
        assert emails.get(email) == pz.pseudonymize_values([f"{prefix}-u1"], "id")[0], prefix
    [company_email] = pz.pseudonymize_values([COMPANY_EMAIL], "email")
    assert company_email not in emails and company_email not in set(identity["identifier"].to_pylist())
    subjects = sorted(set(identity["consent_subject"].to_pylist()))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    state = pa.table({
        "consent_subject": subjects, "purpose": ["analytics"] * len(subjects), "status": ["granted"] * len(subjects),
        "valid_from": [epoch] * len(subjects), "valid_to": [None] * len(subjects), "basis": ["decision"] * len(subjects),
        "jurisdiction": ["EU"] * len(subjects), "jurisdiction_source": ["unknown"] * len(subjects), "source": ["cmp_event"] * len(subjects),
    }, schema=STATE_SCHEMA)
    for name, table in (("identity", identity), ("consent_state", state), ("suppression", SUPPRESSION_SCHEMA.empty_table())):
        con.register(name, table)
    prepare_lookups(con)
    out, stats = consent_events(con, raw, policy, pz)
    assert stats["kept"] == raw.num_rows == out.num_rows
    # the asset's way: the kept rows stay in DuckDB and come back hour by hour: the same rows, each hour in raw order
    # (the landing's rows spread over two hours, alternately, so that an hour's rows are not all of them)
    lh = raw["landing_hour"].to_pylist()
    two_hours = raw.set_column(raw.schema.get_field_index("landing_hour"), raw.schema.field("landing_hour"),
                               pa.array([h + timedelta(hours=i % 2) for i, h in enumerate(lh)], raw.schema.field("landing_hour").type))
    whole, whole_stats = consent_events(con, two_hours, policy, pz)
    _, kept_stats = consent_events(con, two_hours, policy, pz, keep_in="__kept_test")
    assert {k: v for k, v in kept_stats.items() if k != "by_hour"} == {k: v for k, v in whole_stats.items() if k != "by_hour"}
    hours = sorted(set(two_hours["landing_hour"].to_pylist()))
    by_hour = list(kept_rows_by_hour(con, "__kept_test", hours, batch_rows=3))  # small batches: an hour spans several
    assert len(hours) == 2 and all(t.num_rows for t in by_hour) and all(t.schema == whole.schema for t in by_hour)

    def as_sorted_json(tables):
        return sorted(json.dumps(r, default=str, sort_keys=True) for t in tables for r in t.to_pylist())

    assert as_sorted_json(by_hour) == as_sorted_json([whole])
    raw_hours = list(zip(two_hours["message_id"].to_pylist(), two_hours["landing_hour"].to_pylist()))
    for h, t in zip(hours, by_hour):
        assert t["message_id"].to_pylist() == [m for m, mh in raw_hours if mh == h]  # every row is kept here: the whole hour
    # an empty batch leaves an empty table of the same columns (an hour whose raw file holds no row)
    _, empty_stats = consent_events(con, two_hours.slice(0, 0), policy, pz, keep_in="__kept_empty")
    [empty] = kept_rows_by_hour(con, "__kept_empty", hours[:1])
    assert empty_stats["kept"] == 0 and empty.num_rows == 0 and empty.schema == whole.schema
    cols = set(out.column_names)
    assert {"group_pseudonym", "timestamp_source", "request_ip_prefix", "context_library_name", "channel", "cdp_source_id"} <= cols
    dropped = {"group_id", "group_traits", "rudder_id", "write_key_sha256", "integrations", "cdp_metadata", "version", "project_id",
               "original_timestamp", "context_library_version", "request_ip", "traits"}
    assert not dropped & cols
    rows = {r["message_id"]: r for r in out.to_pylist()}
    assert rows["seg-group"]["group_pseudonym"] == pz.pseudonymize_values(["seg-acme"], "id")[0]
    assert rows["rud-track"]["request_ip_prefix"] == "198.51.100.0/24" and rows["rud-track"]["channel"] == "server"
    assert {r["timestamp_source"] for r in rows.values()} == {"timestamp"}
    text = json.dumps(out.to_pylist(), default=str)
    assert COMPANY_EMAIL not in text and "Acme Inc" not in text and "198.51.100.77" not in text and "5b0c2f8e" not in text


def test_features_take_a_group_call_as_activity_but_never_as_content_engagement():
    """A group call passes the features contract (EventsClean), counts in its session like identify, and adds
    nothing to content affinity even when it carries a category."""
    from personalization_assets.checks.pandera_checks import model_check
    from personalization_assets.features.models import EventsClean
    from tests.features.feature_fixtures import build, event, granted_all

    events = [
        event(at="2026-01-05 10:00", user="u1", type="page", category="news"),
        event(at="2026-01-05 10:01", user="u1", type="group", category="sports"),
    ]
    out = build(events, granted_all("u1"))
    check = model_check("features/events_clean", EventsClean, blocking=True).evaluate(out["events_clean"])
    assert check.passed, check.metadata
    assert sorted(out["events_clean"]["type"].to_pylist()) == ["group", "page"]
    assert out["sessions"]["events"].to_pylist() == [2] and out["sessions"]["pages"].to_pylist() == [1]
    assert [(r["category"], r["affinity"]) for r in out["content_affinity"].to_pylist()] == [("news", 1.0)]
