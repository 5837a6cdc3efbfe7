"""The writer in-process: group commit, linger, and what a 200 waits for."""

from __future__ import annotations

import asyncio

import pytest

from personalization_assets.collector.dedup import DedupIndex
from personalization_assets.collector.metrics import CollectorMetrics
from personalization_assets.collector.writer import LandingWriter
from personalization_assets.core.storage import LandingZone
from tests.collector.conftest import landing_messages, landing_objects

pytestmark = pytest.mark.unit


def _messages(tag: str, n: int = 3) -> list[dict]:
    return [{"type": "track", "event": "E", "userId": "u", "messageId": f"{tag}-{i}", "timestamp": "2026-12-05T06:00:00.000Z",
             "receivedAt": "2026-12-05T06:00:01.000Z"} for i in range(n)]


def _run_concurrent(tmp_path, linger_ms: int, requests: int = 5):
    async def go():
        writer = LandingWriter(LandingZone(url=str(tmp_path / "landing")), DedupIndex(tmp_path / f"idx-{linger_ms}.sqlite", 48),
                               CollectorMetrics(), linger_ms=linger_ms)
        writer.start()
        results = await asyncio.gather(*(writer.submit(_messages(f"r{r}")) for r in range(requests)))
        await writer.stop()
        return results
    return asyncio.run(go())


def test_concurrent_requests_share_objects_and_each_learns_what_was_written(tmp_path):
    results = _run_concurrent(tmp_path, linger_ms=0)
    assert [r.written for r in results] == [3] * 5
    objects = landing_objects(tmp_path / "landing")
    assert 1 <= len(objects) < 5  # the first request is written alone (no waiting), the others together
    assert len(landing_messages(tmp_path / "landing")) == 15
    assert all(p.name.startswith("collector-") and p.name.endswith(".jsonl.gz") for p in objects)
    assert all("date=2026-12-05/hour=06" in p.as_posix() for p in objects)


def test_linger_puts_requests_arriving_together_into_one_object(tmp_path):
    results = _run_concurrent(tmp_path, linger_ms=300)
    assert [r.written for r in results] == [3] * 5
    assert len(landing_objects(tmp_path / "landing")) == 1


def test_a_write_failure_acknowledges_nothing(tmp_path):
    (tmp_path / "landing").write_text("not a directory")  # the landing zone cannot be written

    async def go():
        writer = LandingWriter(LandingZone(url=str(tmp_path / "landing")), DedupIndex(tmp_path / "idx.sqlite", 48), CollectorMetrics())
        writer.start()
        try:
            await writer.submit(_messages("f"))
        except OSError:
            return "failed"
        finally:
            await writer.stop()
        return "acknowledged"

    assert asyncio.run(go()) == "failed"
