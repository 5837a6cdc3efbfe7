"""The real Segment and RudderStack Python SDKs post to the collector; after materialization every message is
in raw/events exactly once, with the collector's receivedAt."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import requests

from tests.collector.conftest import (
    OTHER_KEY,
    WRITE_KEY,
    landing_messages,
    materialize_raw,
    raw_rows,
)
from tests.sdk_capture import sdk_client, send_every_kind

KINDS = ("track", "page", "screen", "identify", "alias")


def test_segment_and_rudderstack_sdks_land_every_message_once_in_raw_with_the_collectors_received_at(collector, landing):
    when = datetime.now(timezone.utc) - timedelta(minutes=20)
    before = datetime.now(timezone.utc)
    segment = sdk_client("segment", WRITE_KEY, collector.url, upload_size=40, upload_interval=0.05, max_retries=3)
    rudder = sdk_client("rudderstack", OTHER_KEY, collector.url, upload_size=40, upload_interval=0.05, max_retries=3)
    sent = send_every_kind(segment, "seg", 200, when, kinds=KINDS) + send_every_kind(rudder, "rud", 200, when, kinds=KINDS)
    # a batch the SDK retries (same messageIds again) must not be stored twice
    segment.flush()
    rudder.flush()
    retry = [{"type": "track", "event": "Article Viewed", "userId": "seg-user-0", "messageId": sent[0], "timestamp": when.isoformat()}]
    assert requests.post(collector.url + "/v1/batch", json={"batch": retry}, auth=(WRITE_KEY, ""), timeout=10).status_code == 200
    segment.shutdown()
    rudder.join()
    after = datetime.now(timezone.utc)

    stamped = {m["messageId"]: m["receivedAt"] for m in landing_messages(landing)}
    assert sorted(stamped) == sorted(sent)
    metrics = collector.metrics()
    assert metrics['collector_messages_total{outcome="written"}'] == len(sent)
    assert metrics['collector_messages_total{outcome="duplicate"}'] == 1

    defs = materialize_raw()
    rows = raw_rows(defs, "select message_id, count(*), min(received_at), min(type) from raw group by 1")
    assert sorted(r[0] for r in rows) == sorted(sent)
    assert {r[1] for r in rows} == {1}
    for mid, _, received_at, _ in rows:
        assert before - timedelta(seconds=1) <= received_at <= after + timedelta(seconds=1)
        assert received_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z" == stamped[mid]
    assert {r[3] for r in rows} == set(KINDS)
    assert raw_rows(defs, "select count(*) from quarantine")[0][0] == 0
    # the RudderStack SDK gzips its bodies and puts identify traits in context.traits: both arrived intact
    assert raw_rows(defs, "select count(*) from raw where message_id like 'rud-%' and type = 'identify' and context_country = 'DE'")[0][0] == 40


def test_single_call_endpoints_stamp_like_the_cdps(shared_collector):
    collector, landing = shared_collector
    auth = (WRITE_KEY, "")
    u1, a1 = f"u-{uuid.uuid4()}", f"a-{uuid.uuid4()}"
    for endpoint, body in [
        ("track", {"event": "Signed Up", "userId": u1}),
        ("page", {"name": "Home", "anonymousId": a1}),
        ("screen", {"name": "Feed", "anonymousId": a1}),
        ("identify", {"userId": u1, "traits": {"plan": "pro"}}),
        ("alias", {"previousId": a1, "userId": u1}),
        ("group", {"userId": u1, "groupId": "g1"}),
    ]:
        r = requests.post(f"{collector.url}/v1/{endpoint}", json={**body, "sentAt": "2026-01-01T00:00:00Z"}, auth=auth, timeout=10)
        assert r.status_code == 200, (endpoint, r.text)
    messages = {m["type"]: m for m in landing_messages(landing) if u1 in (m.get("userId"), m.get("anonymousId")) or m.get("anonymousId") == a1}
    assert set(messages) == {"track", "page", "screen", "identify", "alias", "group"}
    for m in messages.values():
        assert m["receivedAt"].endswith("Z") and m["timestamp"] == m["receivedAt"]  # no client time: received time
        assert m["context"]["ip"] == "127.0.0.1" and m["messageId"] and m["sentAt"] == "2026-01-01T00:00:00Z"


def test_browser_sdks_get_cors_and_may_send_the_key_in_the_body(shared_collector):
    collector, landing = shared_collector
    b1 = f"b-{uuid.uuid4()}"
    pre = requests.options(collector.url + "/v1/batch", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization"}, timeout=5)
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] in ("*", "https://shop.example")
    # analytics.js: text/plain body with the writeKey inside (no preflight); the key never lands in the lake
    r = requests.post(collector.url + "/v1/t", data='{"event":"Clicked","anonymousId":"%s","writeKey":"%s"}' % (b1, WRITE_KEY),
                      headers={"Content-Type": "text/plain", "Origin": "https://shop.example"}, timeout=5)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] in ("*", "https://shop.example")
    [m] = [m for m in landing_messages(landing) if m.get("anonymousId") == b1]
    assert m["type"] == "track" and "writeKey" not in m
    assert WRITE_KEY not in "".join(p.read_text(errors="replace") for p in landing.rglob("*") if p.is_file())


def test_the_collector_writes_the_landing_zone_on_s3_and_raw_reads_it_once(s3_env, tmp_path):
    """Landing on a real S3 API (moto on loopback): one PUT per object, listed in the hive layout, ingested once."""
    from tests.collector.conftest import start_collector

    collector = start_collector(tmp_path / "collector.log")
    try:
        client = sdk_client("segment", WRITE_KEY, collector.url, upload_size=25, upload_interval=0.05, max_retries=3)
        sent = send_every_kind(client, "s3", 60, kinds=KINDS, when=datetime.now(timezone.utc) - timedelta(minutes=5))
        client.flush()
        client.shutdown()
        # the SDK's retry of an acknowledged batch is acknowledged and not written again
        again = [{"type": "track", "event": "Article Viewed", "userId": "s3-user-0", "messageId": sent[0]}]
        assert requests.post(collector.url + "/v1/batch", json={"batch": again}, auth=(WRITE_KEY, ""), timeout=10).status_code == 200
        metrics = collector.metrics()
    finally:
        collector.stop()
    assert metrics['collector_messages_total{outcome="written"}'] == 60 and metrics['collector_messages_total{outcome="duplicate"}'] == 1
    keys = [o["Key"] for o in s3_env["client"].list_objects_v2(Bucket=s3_env["bucket"], Prefix="landing/events/")["Contents"]]
    assert keys and all(k.rsplit("/", 1)[-1].startswith("collector-") and k.endswith(".jsonl.gz") for k in keys)
    assert all("/date=" in k and "/hour=" in k for k in keys)
    defs = materialize_raw()
    rows = raw_rows(defs, "select message_id, count(*) from raw group by 1")
    assert sorted(r[0] for r in rows) == sorted(sent) and {r[1] for r in rows} == {1}
