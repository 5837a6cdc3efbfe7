"""A small durable index of recent messageIds: which landing object each went to, and when it was received.

It makes SDK retries idempotent. Rows are written *before* the landing object (write-ahead, fsynced by
SQLite's `synchronous=FULL`), and marked committed once the object is durable. So after a crash:

* committed row            -> the message is already in the landing zone: the retry is acknowledged, not rewritten;
* uncommitted row, object exists  -> the write finished before the crash: mark committed, do not rewrite;
* uncommitted row, no object      -> nothing was stored: write it again, with the *first* receipt's `receivedAt`,
  into the first receipt's hour folder. Any copy of a messageId therefore sits in one hour partition,
  where ingestion's per-hour `messageId` dedup would also catch a second copy (an S3 PUT that completed
  after the process died and after the retry looked for it).

Rows older than the retention (`PERSONALIZATION_COLLECTOR_DEDUP_HOURS`) are pruned.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 500  # SQLite's bound-parameter limit is far above this; keeps statements small


@dataclass(frozen=True)
class Seen:
    object: str
    received_at: str
    committed: bool


class DedupIndex:
    def __init__(self, path: Path, retention_hours: int):
        self.retention_s = retention_hours * 3600
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("pragma journal_mode=wal")
        self._conn.execute("pragma synchronous=full")
        self._conn.execute(
            "create table if not exists messages (message_id text primary key, object text not null, "
            "received_at text not null, committed integer not null, first_seen real not null)"
        )
        self._conn.execute("create index if not exists messages_first_seen on messages(first_seen)")
        self._last_prune = 0.0

    def lookup(self, message_ids: Iterable[str]) -> dict[str, Seen]:
        ids = list(dict.fromkeys(message_ids))
        out: dict[str, Seen] = {}
        with self._lock:
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                rows = self._conn.execute(
                    f"select message_id, object, received_at, committed from messages where message_id in ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                out.update({r[0]: Seen(r[1], r[2], bool(r[3])) for r in rows})
        return out

    def record_intent(self, rows: list[tuple[str, str, str]]) -> None:
        """(message_id, object, received_at) about to be written; durable when this returns."""
        now = time.time()
        with self._lock:
            self._conn.execute("begin")
            self._conn.executemany(
                "insert into messages (message_id, object, received_at, committed, first_seen) values (?, ?, ?, 0, ?) "
                "on conflict(message_id) do update set object = excluded.object, committed = 0",
                [(m, o, r, now) for m, o, r in rows],
            )
            self._conn.execute("commit")

    def mark_committed(self, message_ids: Iterable[str]) -> None:
        """The objects holding these messages are durable. Not fsynced (a lost mark only costs an existence
        check of the object on the next retry), so it adds no disk flush to the write path."""
        ids = list(message_ids)
        with self._lock:
            self._conn.execute("pragma synchronous=normal")
            try:
                self._conn.execute("begin")
                self._conn.executemany("update messages set committed = 1 where message_id = ?", [(m,) for m in ids])
                self._conn.execute("commit")
            finally:
                self._conn.execute("pragma synchronous=full")

    def prune(self, force: bool = False) -> int:
        """Forget rows older than the retention (at most every 10 minutes unless forced)."""
        now = time.time()
        if not force and now - self._last_prune < 600:
            return 0
        self._last_prune = now
        with self._lock:
            cur = self._conn.execute("delete from messages where first_seen < ?", (now - self.retention_s,))
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()
