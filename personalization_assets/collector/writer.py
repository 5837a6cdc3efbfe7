"""Durable, exactly-once writes of accepted messages into the landing zone (group commit).

Requests hand their stamped messages to `LandingWriter.submit`, which resolves only once every message is
durable. One flusher at a time takes *all* pending messages and writes them together: at low load a
request is written alone (no added wait), under load many requests share one object and one fsync.

Layout (the one ingestion reads): `events/date=YYYY-MM-DD/hour=HH/collector-<ms>-<digest>.jsonl.gz`, the
hour of the message's `receivedAt`; gzipped NDJSON, one object per hour per flush. A retried message
whose first copy was never stored goes to the hour of its first receipt (see `dedup.py`).
"""

from __future__ import annotations

import asyncio
import glob
import gzip
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from personalization_assets.collector.config import Faults
from personalization_assets.collector.dedup import DedupIndex
from personalization_assets.collector.metrics import CollectorMetrics
from personalization_assets.core.storage import LandingZone

MAX_FLUSH_MESSAGES = 20_000
log = logging.getLogger("personalization.collector")


def remove_stale_temp_files(landing: LandingZone, older_than_s: float = 60.0) -> int:
    """Temp files of writes a crash interrupted (local landing only; S3 has none). Listers already skip them
    (leading `_`); this only reclaims the space. Young ones may belong to another live writer: kept."""
    if landing.is_s3:
        return 0
    removed = 0
    for path in glob.glob(os.path.join(landing.full_path("events"), "date=*", "hour=*", "_tmp-*")):
        try:
            if time.time() - os.path.getmtime(path) > older_than_s:
                os.unlink(path)
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def object_name(received_at: str, message_ids: list[str], flush_ms: int) -> str:
    """`events/date=…/hour=…/collector-<flush ms>-<digest of the messageIds>.jsonl.gz` (never starts with . or _)."""
    digest = hashlib.sha256("\n".join(message_ids).encode()).hexdigest()[:20]
    return f"events/date={received_at[:10]}/hour={received_at[11:13]}/collector-{flush_ms}-{digest}.jsonl.gz"


def encode(messages: list[dict]) -> bytes:
    lines = "".join(json.dumps(m, separators=(",", ":"), ensure_ascii=False) + "\n" for m in messages)
    return gzip.compress(lines.encode(), compresslevel=5, mtime=0)


@dataclass
class FlushResult:
    written: int = 0
    duplicates: int = 0
    objects: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    messages: list[dict]
    future: asyncio.Future


class LandingWriter:
    def __init__(self, landing: LandingZone, index: DedupIndex, metrics: CollectorMetrics, faults: Faults | None = None,
                 on_written: Callable[[list[dict]], None] | None = None, linger_ms: int = 0):
        self.landing = landing
        self.index = index
        self.metrics = metrics
        self.faults = faults or Faults()
        self.linger_s = linger_ms / 1000
        self.on_written = on_written
        self._writes = 0
        self._pending: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # -- async side ------------------------------------------------------------------------------------
    def start(self) -> None:
        removed = remove_stale_temp_files(self.landing)
        if removed:
            log.info("removed %d temp file(s) left by an interrupted write", removed)
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            while self._pending:  # drain what was accepted before the shutdown
                await asyncio.sleep(0.01)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.index.close()

    async def submit(self, messages: list[dict]) -> FlushResult:
        """Resolves when the messages are durable (raises if the write failed: the client must retry)."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(messages, fut))
        self._wakeup.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if self.linger_s:  # trade latency for fewer, larger objects under light but steady traffic
                await asyncio.sleep(self.linger_s)
            self._wakeup.clear()
            while self._pending:
                taken, count = [], 0
                while self._pending and (not taken or count + len(self._pending[0].messages) <= MAX_FLUSH_MESSAGES):
                    p = self._pending.pop(0)
                    taken.append(p)
                    count += len(p.messages)
                try:
                    results = await asyncio.to_thread(self.flush, [p.messages for p in taken])
                except Exception as exc:  # storage down: every request of the group fails, nothing is acknowledged
                    for p in taken:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                for p, r in zip(taken, results):
                    if not p.future.done():
                        p.future.set_result(r)

    # -- blocking side (one flush at a time) --------------------------------------------------------------
    def flush(self, groups: list[list[dict]]) -> list[FlushResult]:
        started = time.perf_counter()
        results = [FlushResult() for _ in groups]
        known = self.index.lookup(m["messageId"] for g in groups for m in g)
        taken: set[str] = set()
        already_stored: list[str] = []
        by_hour: dict[str, list[dict]] = {}
        owner: dict[str, int] = {}
        exists_cache: dict[str, bool] = {}
        for gi, group in enumerate(groups):
            for m in group:
                mid = m["messageId"]
                if mid in taken:
                    results[gi].duplicates += 1
                    continue
                taken.add(mid)
                seen = known.get(mid)
                if seen is not None:
                    if seen.committed:
                        results[gi].duplicates += 1
                        continue
                    if seen.object not in exists_cache:
                        exists_cache[seen.object] = self.landing.exists(seen.object)
                    if exists_cache[seen.object]:  # stored before a crash, never marked
                        already_stored.append(mid)
                        results[gi].duplicates += 1
                        continue
                    m["receivedAt"] = seen.received_at  # first receipt's time and hour
                by_hour.setdefault(m["receivedAt"][:13], []).append(m)
                owner[mid] = gi
        flush_ms = int(time.time() * 1000)
        planned = []
        for messages in by_hour.values():
            ids = [m["messageId"] for m in messages]
            planned.append((object_name(messages[0]["receivedAt"], ids, flush_ms), messages, ids))
        if planned:
            self.index.record_intent([(mid, name, m["receivedAt"]) for name, messages, ids in planned for mid, m in zip(ids, messages)])
        for name, messages, ids in planned:
            self._writes += 1
            if self.faults.kill_before_writes and self._writes >= self.faults.kill_before_writes:
                os.kill(os.getpid(), signal.SIGKILL)  # crash test: intent recorded, object never written
            self.landing.write_durable(name, encode(messages))
            self.metrics.objects.inc()
            if self.faults.kill_after_writes and self._writes >= self.faults.kill_after_writes:
                os.kill(os.getpid(), signal.SIGKILL)  # crash test: durable but neither acknowledged nor marked
            for gi in {owner[mid] for mid in ids}:
                results[gi].objects.append(name)
            for mid in ids:
                results[owner[mid]].written += 1
        if planned or already_stored:
            self.index.mark_committed([mid for _, _, ids in planned for mid in ids] + already_stored)
        self.index.prune()
        self.metrics.write_seconds.observe(time.perf_counter() - started)
        written = [m for _, messages, _ in planned for m in messages]
        if self.on_written and written:
            try:
                self.on_written(written)
            except Exception:  # the messages are durable: a failing observer must not turn their 200 into a 503
                log.exception("post-write hook failed")
        return results
