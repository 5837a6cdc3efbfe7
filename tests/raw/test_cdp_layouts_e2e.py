"""Native CDP layouts end to end (issue #13), on a local landing zone and on S3 (moto on loopback).

Message bodies are captured from the real `segment-analytics-python` and `rudder-sdk-python` SDKs (a loopback
HTTP server stands in for api.segment.io / the RudderStack data plane), stamped with the fields the CDP servers
add, and written gzipped where each CDP's S3 destination writes them:
  segment-logs/<source-id>/<received day, epoch ms>/<file>.gz
  rudder-logs/<source-id>/<YYYY-MM-DD>/<unix-ts>.<source-id>.<uuid>.json.gz   (current destinations)
  rudder-logs/<source-id>/<MM-DD-YYYY>/<unix-ts>.<source-id>.<uuid>.json.gz   (older destinations)
plus hive objects (events/date=…/hour=…/) and a hive copy of one Segment object (a re-delivery: dedup).
receivedAt spans three hours and one Segment object spans two. `run_materialize(select="key:raw/events")` runs
twice, the second time after one more object landed: every valid message is in raw/events exactly once, in the
partition of its receivedAt hour; a stray object outside the layout, a corrupt gzip (lines before the damage
salvaged) and an unsupported suffix are quarantined with their reasons; the second run reads only the new object.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime, timedelta

import pyarrow as pa
import pytest

from tests.helpers import check_results
from tests.landing_layouts import (
    UTC,
    corrupt_gzip,
    gz,
    hive_key,
    hour_partition,
    iso,
    lake_fs,
    ndjson,
    read_lake_table,
    rows,
    rudder_key,
    segment_key,
    ts,
    write_tree,
)
from tests.sdk_capture import ALL_KINDS, sdk_client, send_every_kind

DAY = "2026-11-28"
SEGMENT_SOURCE = "Zx1SegSrc7Q"
RUDDER_SOURCE = "2Ab3RudSrcKey9"
RUDDER_OLD_SOURCE = "2Ab3RudOldDest1"
KINDS = ALL_KINDS
VALID_KINDS = {"identify", "track", "page", "screen", "alias", "group"}  # the whole spec, group calls included
QUARANTINE = "raw/events_quarantine"
MANIFEST = "raw/landing_manifest"


# ------------------------------------------------------------------------------------------------
# capturing what the SDKs really send (tests/sdk_capture.py)


@pytest.fixture(scope="module")
def sdk_messages(sdk_capture) -> dict[str, list[dict]]:
    """{'segment': [...], 'rudder': [...]}: the messages exactly as each SDK put them on the wire (batch bodies)."""
    when = datetime(2026, 11, 28, 9, 55, tzinfo=UTC)
    sdk_capture.take()
    ids = {}
    for cdp, prefix, n_per_kind in (("segment", "seg", 8), ("rudderstack", "rud", 6)):
        client = sdk_client(cdp, f"{prefix}-capture-key", sdk_capture.url, sync_mode=True, max_retries=1)
        ids[prefix] = send_every_kind(client, prefix, n_per_kind * len(KINDS), when, kinds=KINDS, users=5, anons=7,
                                      identify_traits=lambda user: {"plan": "free", "email": f"{user}@example.org"})
    captured = {}
    for path, body in sdk_capture.take():
        assert path.endswith("/batch"), path
        for m in body["batch"]:
            captured[m["messageId"]] = m
    assert sorted(captured) == sorted(ids["seg"] + ids["rud"]), "every SDK call was captured once"
    return {"segment": [captured[i] for i in ids["seg"]], "rudder": [captured[i] for i in ids["rud"]]}


# ------------------------------------------------------------------------------------------------
# what the CDP servers add before writing to S3


def as_segment_stores(m: dict, received: datetime) -> dict:
    m = json.loads(json.dumps(m))
    m["originalTimestamp"] = m.get("timestamp") or iso(received - timedelta(seconds=3))
    m["timestamp"] = m["originalTimestamp"]
    m["sentAt"] = iso(received - timedelta(seconds=1))
    m["receivedAt"] = iso(received)
    m["_metadata"] = {"bundled": ["Segment.io"], "unbundled": []}
    m["integrations"] = m.get("integrations") or {}
    m["projectId"] = SEGMENT_SOURCE
    m["version"] = 2
    m.setdefault("context", {})["ip"] = "198.51.100.23"
    return m


def as_rudder_stores(m: dict, received: datetime) -> dict:
    m = json.loads(json.dumps(m))
    m["originalTimestamp"] = m.get("timestamp") or iso(received - timedelta(seconds=3))
    m["timestamp"] = m["originalTimestamp"]
    m["sentAt"] = iso(received - timedelta(seconds=1))
    m["receivedAt"] = iso(received)
    m["rudderId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, m["messageId"]))
    m["request_ip"] = "198.51.100.24"
    m["channel"] = "server"
    m["integrations"] = m.get("integrations") or {"All": True}
    return m


def _spread(msgs: list[dict], start: str, step_s: int, stamp) -> list[dict]:
    t0 = ts(start)
    return [stamp(m, t0 + timedelta(seconds=i * step_s)) for i, m in enumerate(msgs)]


def seg_file(msgs: list[dict], tag: str) -> str:
    """A Segment object name: the epoch ms of its last message's receipt and an id (as the destination names them)."""
    return f"{int(ts(msgs[-1]['receivedAt']).timestamp() * 1000)}.{tag}.gz"


def build_landing(sdk: dict[str, list[dict]]) -> tuple[dict[str, bytes], dict]:
    """The first delivery: key -> bytes, and the expectations."""
    seg, rud = sdk["segment"], sdk["rudder"]
    objs: dict[str, bytes] = {}
    # Segment: three objects of one received day; B spans 10:50 -> 11:26 (two hours)
    seg_a = _spread(seg[0:10], f"{DAY}T10:05:00Z", 120, as_segment_stores)
    seg_b = _spread(seg[10:22], f"{DAY}T10:50:00Z", 180, as_segment_stores)
    seg_c = _spread(seg[22:30], f"{DAY}T12:01:00Z", 240, as_segment_stores)
    k_seg_a = segment_key(SEGMENT_SOURCE, DAY, seg_file(seg_a, "0f1e2d3c"))
    objs[k_seg_a] = gz(ndjson(seg_a))
    objs[segment_key(SEGMENT_SOURCE, DAY, seg_file(seg_b, "1a2b3c4d"))] = gz(ndjson(seg_b))
    objs[segment_key(SEGMENT_SOURCE, DAY, seg_file(seg_c, "5e6f7a8b"))] = gz(ndjson(seg_c))
    # RudderStack, both date formats
    rud_new = _spread(rud[0:15], f"{DAY}T11:02:00Z", 200, as_rudder_stores)
    rud_old = _spread(rud[15:30], f"{DAY}T12:03:00Z", 150, as_rudder_stores)
    objs[rudder_key(RUDDER_SOURCE, rud_new[0]["receivedAt"], "%Y-%m-%d", uid="7d0c6a3e-2f55-4d7f-a6f4-0c2f1b8e9a10")] = gz(ndjson(rud_new))
    objs[rudder_key(RUDDER_OLD_SOURCE, rud_old[0]["receivedAt"], "%m-%d-%Y", uid="3b9f4e21-8c7d-4a6b-9e5f-1d2c3b4a5f60")] = gz(ndjson(rud_old))
    # hive: SDK messages of their own, and a byte copy of Segment object A (a re-delivery: each message kept once)
    hive = _spread(seg[30:36], f"{DAY}T10:12:00Z", 300, as_segment_stores)
    objs[hive_key(hive[0]["receivedAt"], "sdk-export.jsonl.gz")] = gz(ndjson(hive))
    objs[hive_key(seg_a[0]["receivedAt"], "redelivered-segment-a.jsonl.gz")] = objs[k_seg_a]
    # a corrupt gzip (Segment layout): its first member's lines are salvaged, the rest is quarantined
    salvage = _spread([m for m in seg[36:42] if m["type"] in VALID_KINDS][:3], f"{DAY}T12:30:00Z", 60, as_segment_stores)
    lost = _spread(seg[42:43], f"{DAY}T12:40:00Z", 60, as_segment_stores)
    k_corrupt = segment_key(SEGMENT_SOURCE, DAY, seg_file(salvage, "deadbeef"))
    objs[k_corrupt] = corrupt_gzip(ndjson(salvage), ndjson(lost))
    # a stray object outside the layout (a day folder that is not epoch milliseconds), an unsupported suffix
    stray = _spread(seg[43:45], f"{DAY}T11:30:00Z", 60, as_segment_stores)
    k_stray = f"segment-logs/{SEGMENT_SOURCE}/not-a-day/{seg_file(stray, 'cafe0001')}"
    objs[k_stray] = gz(ndjson(stray))
    k_unsupported = hive_key(f"{DAY}T11:00:00Z", "export.csv")
    objs[k_unsupported] = b"messageId,type\nx,track\n"

    written = seg_a + seg_b + seg_c + rud_new + rud_old + hive + salvage
    expect = {
        "messages": {m["messageId"]: m for m in written},
        "copies": Counter([m["messageId"] for m in written] + [m["messageId"] for m in seg_a]),
        "not_in_raw": {m["messageId"] for m in stray + lost} - {m["messageId"] for m in written},
        "object_reasons": {k_stray: "outside_layout", k_corrupt: "corrupt_gzip", k_unsupported: "unsupported_file"},
    }
    assert {m["receivedAt"][:13] for m in written} == {f"{DAY}T10", f"{DAY}T11", f"{DAY}T12"}
    return objs, expect


def second_delivery(sdk: dict[str, list[dict]]) -> tuple[str, bytes, list[dict]]:
    extra = _spread(sdk["rudder"][30:33], f"{DAY}T12:50:00Z", 30, as_rudder_stores)
    key = rudder_key(RUDDER_SOURCE, extra[0]["receivedAt"], "%Y-%m-%d", uid="c4d5e6f7-0a1b-4c2d-8e3f-4a5b6c7d8e9f")
    return key, gz(ndjson(extra)), extra


# ------------------------------------------------------------------------------------------------


class LandingStore:
    """The landing zone the platform is configured with: a local directory or a moto S3 bucket prefix."""

    def __init__(self, request):
        self.s3 = request.param == "s3"
        if self.s3:
            env = request.getfixturevalue("s3_env")
            self.client, self.bucket = env["client"], env["bucket"]
        else:
            self.dir = request.getfixturevalue("landing")

    def put(self, objects: dict[str, bytes]) -> None:
        if self.s3:
            for key, data in objects.items():
                self.client.put_object(Bucket=self.bucket, Key=f"landing/{key}", Body=data)
        else:
            write_tree(self.dir, objects)


@pytest.fixture(params=["local", "s3"])
def store(request, data_dir) -> LandingStore:
    return LandingStore(request)


@pytest.fixture
def landing_gets(monkeypatch):
    """Keys of every GetObject the moto server answered (reads of object bodies; listings and HEADs excluded)."""
    from moto.s3.responses import S3Response

    seen: list[tuple[str, str]] = []
    original = S3Response._key_response_get

    def spy(self, query, key_name):
        if not query:  # a plain GetObject (not ?acl, ?tagging, …)
            seen.append((self.bucket_name, key_name))
        return original(self, query, key_name)

    monkeypatch.setattr(S3Response, "_key_response_get", spy)
    return seen


def materialize_events():
    from tests.dagster_internals import reset_defs_state_storage

    from personalization_assets.cli import open_instance, run_materialize

    instance = open_instance()
    try:
        ok, text, result = run_materialize(select="key:raw/events", instance=instance, echo=lambda *a, **k: None)
    finally:
        instance.dispose()
        reset_defs_state_storage()
    checks = check_results(result)
    assert ok and checks.get("raw/events:reconciliation") is True, f"run failed or not reconciled: {checks}\n{text}"
    return result


def lake_table(name: str) -> pa.Table:
    from tests.helpers import defs_for_env

    fs, root = lake_fs(defs_for_env().resources["lake"])
    return read_lake_table(fs, root, name)


def assert_each_message_once(expect: dict) -> None:
    raw = lake_table("raw/events").to_pylist()
    quarantine = lake_table(QUARANTINE).to_pylist()
    in_raw = Counter(r["message_id"] for r in raw)
    in_q = Counter()
    for r in quarantine:
        try:
            in_q[json.loads(r["original_text"])["messageId"]] += 1
        except (TypeError, ValueError, KeyError):
            pass  # object-level rows (whole files) and unparseable lines
    for mid, m in expect["messages"].items():
        accounted = in_raw[mid] + in_q[mid]
        assert accounted == expect["copies"][mid], f"{mid}: {in_raw[mid]} raw + {in_q[mid]} quarantined, {expect['copies'][mid]} copies landed"
        if m["type"] in VALID_KINDS:
            assert in_raw[mid] == 1, f"{mid} ({m['type']}) is in raw/events {in_raw[mid]} times"
        else:
            assert in_raw[mid] == 0, f"{mid} ({m['type']}): the tracking plan has no `{m['type']}` type"
    for mid in expect["not_in_raw"]:
        assert in_raw[mid] == 0, f"{mid} comes from a stray object or after a gzip's damage: it must not be in raw/events"
    assert set(in_raw) <= set(expect["messages"]), f"unexpected rows: {sorted(set(in_raw) - set(expect['messages']))[:5]}"
    for r in raw:
        m = expect["messages"][r["message_id"]]
        assert r["received_at"] == ts(m["receivedAt"]), (r["message_id"], r["received_at"], m["receivedAt"])
        assert r["_partition"] == hour_partition(m["receivedAt"]), f"{r['message_id']} received {m['receivedAt']} is in {r['_partition']}"
        assert r["landing_hour"] == ts(m["receivedAt"]).replace(minute=0, second=0, microsecond=0)
        assert r["type"] == m["type"]
    # the re-delivered Segment object: one copy of each valid message quarantined as a duplicate
    dups = [r for r in quarantine if r["reason"] == "duplicate_message_id"]
    assert len(dups) == sum(1 for mid, n in expect["copies"].items() if n == 2 and expect["messages"][mid]["type"] in VALID_KINDS)
    reasons = {(r["source_file"], r["reason"]) for r in quarantine}
    for key, reason in expect["object_reasons"].items():
        assert any(f.endswith(key) and rs == reason for f, rs in reasons), f"no `{reason}` quarantine row for {key}: {sorted(reasons)}"


@pytest.mark.timeout(600)
def test_segment_and_rudderstack_layouts_land_each_message_once_in_its_received_hour(store, sdk_messages, landing_gets):
    objects, expect = build_landing(sdk_messages)
    store.put(objects)
    materialize_events()
    assert_each_message_once(expect)
    quarantine_1 = rows(lake_table(QUARANTINE))
    manifest_1 = lake_table(MANIFEST)
    assert manifest_1.num_rows, "the ingestion keeps a manifest of the landing objects it read (raw/landing_manifest)"
    manifest_text_1 = [json.dumps(r, default=str) for r in manifest_1.to_pylist()]
    for key in objects:  # every landing object (read, quarantined or not) is in the manifest
        assert any(key in t for t in manifest_text_1), f"{key} is not in raw/landing_manifest"

    # one more object lands; the second run reads it and only it
    new_key, new_bytes, extra = second_delivery(sdk_messages)
    store.put({new_key: new_bytes})
    landing_gets.clear()
    materialize_events()
    expect["messages"].update({m["messageId"]: m for m in extra})
    expect["copies"].update(m["messageId"] for m in extra)
    assert_each_message_once(expect)
    assert rows(lake_table(QUARANTINE)) == quarantine_1, "the second run changed the quarantine (it re-read old objects)"
    manifest_2 = [json.dumps(r, default=str) for r in lake_table(MANIFEST).to_pylist()]
    assert sorted(t for t in manifest_2 if new_key not in t) == sorted(manifest_text_1), \
        "manifest rows of the objects already read changed: they were read again"
    assert any(new_key in t for t in manifest_2), "the new object is not in the manifest"
    if store.s3:
        read = {k for b, k in landing_gets if b == store.bucket and k.startswith("landing/")}
        assert read == {f"landing/{new_key}"}, f"the second run read landing objects other than the new one: {sorted(read)}"
