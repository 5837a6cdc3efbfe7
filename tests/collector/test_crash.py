"""SIGKILL the collector (a real subprocess) while the Segment SDK streams batches, restart it, let the SDK
retry: every message the SDK sent is in raw/events exactly once.

The two deterministic cases kill it at the worst moments (fault injection in the collector itself, a real
SIGKILL): right after the landing object is durable but before the 200 — the SDK re-sends a batch that is
already stored — and after the intent was recorded but before the object exists. The restarted collector
runs an hour ahead, so a retry written under the retry's own hour would be a second raw row that
ingestion's per-hour dedup cannot see; these two check the landing zone holds exactly one copy.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone

from segment.analytics.client import Client as SegmentClient

from tests.collector.conftest import (
    WRITE_KEY,
    landing_messages,
    landing_objects,
    materialize_raw,
    raw_rows,
    start_collector,
)
from tests.conftest import free_port


def _segment(url: str, errors: list) -> SegmentClient:
    return SegmentClient(write_key=WRITE_KEY, host=url, upload_size=50, upload_interval=0.05, max_retries=12,
                         on_error=lambda exc, batch: errors.append((exc, len(batch))))


def _track(client, mid: str, i: int) -> None:
    client.track(user_id=f"user-{i % 13}", event="Article Viewed", properties={"content_id": f"c{i % 7}"},
                 timestamp=datetime.now(timezone.utc), message_id=mid)


def _assert_exactly_once_in_raw(sent: list[str]) -> None:
    defs = materialize_raw()
    rows = raw_rows(defs, "select message_id, count(*) from raw group by 1")
    assert sorted(r[0] for r in rows) == sorted(sent)
    assert {r[1] for r in rows} == {1}


def test_sigkill_during_a_stream_of_batches_loses_nothing_and_stores_nothing_twice(data_dir, landing, tmp_path):
    port = free_port()
    collector = start_collector(tmp_path / "collector.log", port=port)
    errors: list = []
    client = _segment(collector.url, errors)
    sent: list[str] = []
    stop = threading.Event()

    def stream():
        i = 0
        while not stop.is_set() and i < 4000:
            mid = f"stream-{i}-{uuid.uuid4().hex[:6]}"
            _track(client, mid, i)
            sent.append(mid)
            i += 1
            if i % 50 == 0:
                time.sleep(0.02)

    sender = threading.Thread(target=stream)
    sender.start()
    deadline = time.monotonic() + 30
    while len(landing_objects(landing)) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    acknowledged_before_kill = len(landing_messages(landing))
    collector.kill()
    assert acknowledged_before_kill > 0
    time.sleep(0.3)
    restarted = start_collector(tmp_path / "collector.log", port=port)
    try:
        time.sleep(0.5)
        stop.set()
        sender.join()
        client.flush()
        client.shutdown()
        assert errors == []
        assert len(sent) > acknowledged_before_kill  # the stream went on across the kill and the restart
    finally:
        restarted.stop()
    _assert_exactly_once_in_raw(sent)


def _crash_and_retry(tmp_path, fault: str) -> tuple[list[str], dict]:
    port = free_port()
    first = start_collector(tmp_path / "first.log", port=port, extra_env={"_PERSONALIZATION_COLLECTOR_FAULTS": fault})
    errors: list = []
    client = _segment(first.url, errors)
    sent = [f"once-{i}-{uuid.uuid4().hex[:6]}" for i in range(50)]
    for i, mid in enumerate(sent):
        _track(client, mid, i)
    first.proc.wait(timeout=30)  # it killed itself at the fault
    assert first.proc.returncode == -9
    # the SDK is retrying the unanswered batch; the collector comes back an hour later (by its clock)
    second = start_collector(tmp_path / "second.log", port=port, extra_env={"_PERSONALIZATION_COLLECTOR_FAULTS": "clock_offset_s=3600"})
    try:
        client.flush()
        client.shutdown()
        assert errors == []
        metrics = second.metrics()
    finally:
        second.stop()
    return sent, metrics


def test_a_batch_stored_but_not_acknowledged_before_sigkill_is_not_stored_again_when_retried(data_dir, landing, tmp_path):
    sent, metrics = _crash_and_retry(tmp_path, "kill_after_writes=1")
    assert metrics['collector_messages_total{outcome="duplicate"}'] == len(sent)
    assert metrics.get('collector_messages_total{outcome="written"}', 0) == 0
    # one copy in the landing zone (stronger than ingestion's per-hour dedup needs): raw gets each message once
    assert len(landing_objects(landing)) == 1
    assert sorted(m["messageId"] for m in landing_messages(landing)) == sorted(sent)


def test_a_batch_killed_before_its_write_is_stored_under_its_first_receipt(data_dir, landing, tmp_path):
    sent, metrics = _crash_and_retry(tmp_path, "kill_before_writes=1")
    assert metrics['collector_messages_total{outcome="written"}'] == len(sent)
    [only] = landing_objects(landing)
    stored = landing_messages(landing)
    assert sorted(m["messageId"] for m in stored) == sorted(sent)
    # written after the restart (clock one hour ahead), yet in the hour and with the receivedAt of the first receipt
    received = {m["receivedAt"] for m in stored}
    assert len(received) == 1
    [stamp] = received
    assert f"date={stamp[:10]}/hour={stamp[11:13]}/" in only.as_posix()
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= datetime.now(timezone.utc)


def test_temp_files_of_an_interrupted_write_are_invisible_and_reclaimed(data_dir, landing, tmp_path):
    import os

    from personalization_assets.collector.writer import remove_stale_temp_files
    from personalization_assets.core.storage import LandingZone

    hour = landing / "events" / "date=2026-12-01" / "hour=10"
    hour.mkdir(parents=True)
    stale, fresh = hour / "_tmp-stale", hour / "_tmp-fresh"
    stale.write_bytes(b'{"type": "track"')  # a half-written object, as a SIGKILL mid-write leaves it
    fresh.write_bytes(b"{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    zone = LandingZone(url=str(landing))
    assert zone.list_files("events") == []  # ingestion never sees a partial object
    assert remove_stale_temp_files(zone) == 1
    assert not stale.exists() and fresh.exists()  # a young one may be another writer's, in progress
