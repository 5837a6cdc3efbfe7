"""Append-only, hash-chained logs in the lake (consent ledger, access audit log, DP budget ledger).

A log is a sequence of immutable segments ``privacy/<log>/segment=<first seq>/data.parquet``. Each row
carries ``seq`` (1, 2, 3 … without gaps), ``prev_hash`` and
``row_hash = sha256(prev_hash | canonical JSON of the row's other fields)``. Appending writes a new
segment and never rewrites an old one. ``verify`` recomputes the chain: an edited, removed, inserted
or reordered row breaks it, and the first broken position is reported.

Concurrent writers (several run pods, two CLIs, a retry racing the original) are safe on three levels:

1. One writer at a time: ``with log.exclusive():`` holds the log's writer lock, so a caller can read the
   log, decide what to add and append as one step (read-decide-append). Locally the lock is an ``fcntl``
   lock on ``privacy/<log>/_writer.lock`` next to the log (released by the kernel when the process dies); on S3 it is a lease object
   ``privacy/<log>/_writer.lease`` created with ``If-None-Match: *``, holding its owner and expiry,
   renewed in the background (``If-Match`` on its ETag) and removed on release. An expired lease (its
   holder died) is taken over with ``If-Match`` on the expired version, so two waiters cannot both win.
   ``append`` takes the lock itself; the lock is re-entrant within a thread.
2. Compare-and-swap appends: a segment is named by its first seq and created with an exclusive create
   (hard link locally, ``If-None-Match: *`` on S3). A writer whose head moved (it lost the lock, e.g. an
   expired lease) cannot overwrite; it re-reads the head and re-checks before trying again.
3. Unique ids: a log with a ``unique_key`` (the consent ledger's ``decision_id``, the DP budget's
   ``release_id``) refuses an append carrying an id that is already stored (checked against every segment
   written after the head the caller decided on, and within the batch), and ``verify`` fails on a
   duplicate id already present.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from personalization_assets.core.file_locks import flock_within
from personalization_assets.core.storage import LOG_HEAD_FILE, LakeStorage, partition_path

GENESIS = "0" * 64
CHAIN_FIELDS = ("seq", "prev_hash", "row_hash")
LEASE_FILE = "_writer.lease"  # leading underscore: ignored by listings and Parquet dataset discovery
LOCK_FILE = "_writer.lock"
HEAD_FILE = LOG_HEAD_FILE  # the head hint (see HashChainedLog._hinted_head)


def _segment_name(first_seq: int) -> str:
    """A segment is named by the seq of its first row, zero-padded so that names sort in chain order."""
    return f"{first_seq:012d}"


class DuplicateRecordError(RuntimeError):
    """An append carried an id (the log's unique key) that is already stored, or repeated within the batch."""


class LogLockTimeout(TimeoutError):
    pass


_held = threading.local()  # logs whose writer lock this thread holds (re-entrancy)


def canonical_payloads(table: pa.Table) -> list[str]:
    """The bytes each row's hash covers, computed column-wise (no per-row Python serialization).

    Fields in name order, excluding the chain hashes; each value rendered as text (timestamps as integer
    microseconds since the epoch, null as the empty marker) and length-prefixed, so no value can shift
    into its neighbour: ``<name>=<len>:<value>;...``."""
    import pyarrow.compute as pc

    names = sorted(n for n in table.column_names if n not in ("prev_hash", "row_hash"))
    parts = []
    for name in names:
        col = table[name]
        if pa.types.is_timestamp(col.type):
            col = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
        text = pc.cast(col, pa.string())
        length = pc.cast(pc.utf8_length(text), pa.string())
        rendered = pc.binary_join_element_wise(f"{name}=", length, ":", text, ";", "")
        parts.append(pc.fill_null(rendered, f"{name}=-;"))
    if not parts:
        return [""] * table.num_rows
    joined = pc.binary_join_element_wise(*parts, "") if len(parts) > 1 else parts[0]
    return joined.to_pylist()


def _hash(prev_hash: str, payload: str) -> str:
    return hashlib.sha256((prev_hash + "|" + payload).encode("utf-8")).hexdigest()


def row_hash(prev_hash: str, row: dict, schema: pa.Schema) -> str:
    """The hash of one row (a dict with the log's fields), as appended or verified."""
    return _hash(prev_hash, canonical_payloads(pa.Table.from_pylist([row], schema=schema))[0])


@dataclass(frozen=True)
class ChainStatus:
    ok: bool
    rows: int
    segments: int
    head_hash: str
    problem: str | None = None
    first_bad_seq: int | None = None


@dataclass
class HashChainedLog:
    lake: LakeStorage
    name: str  # table name under the `privacy` layer
    schema: pa.Schema  # full schema including seq/prev_hash/row_hash
    lock_dir: str | None = None  # unused (kept for callers): the local writer lock lives next to the log
    unique_key: str | None = None  # column whose values may be stored only once (e.g. "decision_id")
    lease_seconds: float = 60.0  # S3 writer lease lifetime (renewed every third of it while held)
    lock_timeout: float = 900.0  # how long `exclusive` waits for another writer
    on_wait: Callable[[], None] | None = None  # called once when `exclusive` finds the lock held by another writer
    poll_seconds: float = 0.2  # S3: at most this long between two attempts to take a held lease
    duckdb_config: dict | None = None  # memory limit and spill directory of the DuckDB aggregation (core.platform.duckdb_spill_config)
    last_append_seq: int = field(default=0, init=False)  # head seq after this handle's last append

    @property
    def layer(self) -> str:
        return "privacy"

    def segments(self) -> list[str]:
        parts = [p.get("segment") for p in self.lake.partitions(self.layer, self.name)]
        return sorted(p for p in parts if p)

    def _read_segment(self, segment: str, schema: pa.Schema) -> pa.Table:
        """One segment's columns; a column added to the log after the segment was written reads as null
        (its rows were hashed without it, see `_rows_in_storage_order`)."""
        try:
            table = self.lake.read_table(self.layer, self.name, {"segment": segment}, columns=schema.names)
        except (pa.ArrowInvalid, KeyError, ValueError):
            present = set(self.lake.parquet_metadata(self.layer, self.name, {"segment": segment}).schema.to_arrow_schema().names)
            missing = [f for f in schema if f.name not in present]
            if not missing or any(f.name in CHAIN_FIELDS or not f.nullable for f in missing):
                raise
            table = self.lake.read_table(self.layer, self.name, {"segment": segment}, columns=[n for n in schema.names if n in present])
            for f in missing:
                table = table.append_column(f, pa.nulls(table.num_rows, f.type))
        return table.select(schema.names).cast(schema)

    def read_all(self, columns: list[str] | None = None) -> pa.Table:
        schema = pa.schema([self.schema.field(c) for c in columns]) if columns else self.schema
        tables = [self._read_segment(s, schema) for s in self.segments()]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def read_recent(self, min_rows: int) -> pa.Table:
        """The newest segments, at least `min_rows` rows of them (all if fewer): what a schema check samples."""
        tables, n = [], 0
        for segment in reversed(self.segments()):
            tables.append(self._read_segment(segment, self.schema))
            n += tables[-1].num_rows
            if n >= min_rows:
                break
        return pa.concat_tables(tables[::-1]) if tables else self.schema.empty_table()

    def head(self) -> tuple[int, str]:
        """(seq, row_hash) of the last row, (0, GENESIS) for an empty log. From the head hint when it checks out
        (no listing: an append costs the same on a log of ten segments or of a million), else from the listing."""
        hinted = self._hinted_head()
        return hinted if hinted is not None else self._listed_head()

    def _listed_head(self) -> tuple[int, str]:
        segs = self.segments()
        if not segs:
            return 0, GENESIS
        return self._segment_head(segs[-1]) or (0, GENESIS)

    def _segment_head(self, segment: str) -> tuple[int, str] | None:
        """(seq, row_hash) of the last row of one segment, None if it is empty."""
        last = self.lake.read_table(self.layer, self.name, {"segment": segment}, columns=["seq", "row_hash"])
        if last.num_rows == 0:
            return None
        i = int(pa.compute.index(last["seq"], pa.compute.max(last["seq"])).as_py())
        return int(last["seq"][i].as_py()), last["row_hash"][i].as_py()

    # --- the head hint: where the last append ended, so that an append does not list every segment ---

    def _hint_location(self) -> tuple[LakeStorage, str]:
        """The hint is coordination, not evidence: it lives with the writer lock (in the lake, also when the log
        is in a write-once bucket), and is only ever a hint: `_hinted_head` checks it against the segments."""
        store = self._coordination()
        return store, f"{store.table_dir(self.layer, self.name)}/{HEAD_FILE}"

    def _log_uri(self) -> str:
        return self.lake.uri(self.lake.table_dir(self.layer, self.name))

    def _hinted_head(self) -> tuple[int, str] | None:
        """The head from the hint, or None (then the listing decides). The hint is trusted only if the segment it
        names exists and ends with exactly its (seq, hash); segments appended after it (a writer that died between
        its segment and the hint, or lost its lease) are followed by name: the segment after seq N is `segment=N+1`."""
        store, relative = self._hint_location()
        try:
            raw = store.read_marker(relative)
            if raw is None:
                return None
            hint = json.loads(raw)
            seq, head_hash, segment = int(hint["seq"]), str(hint["hash"]), str(hint["segment"])
            if hint.get("log") != self._log_uri() or seq < 1:
                return None
        except (ValueError, KeyError, TypeError, OSError):
            return None  # unreadable or of another log: list
        if not self.lake.exists(self.layer, self.name, {"segment": segment}) or self._segment_head(segment) != (seq, head_hash):
            return None
        while self.lake.exists(self.layer, self.name, {"segment": _segment_name(seq + 1)}):
            nxt = self._segment_head(_segment_name(seq + 1))
            if nxt is None or nxt[0] <= seq:
                return None  # not a well-formed continuation: list (verify reports what is wrong)
            seq, head_hash = nxt
        return seq, head_hash

    def _write_hint(self, seq: int, head_hash: str, segment: str) -> None:
        """Record where this append ended (under the writer lock). A failure only costs the next append a listing."""
        store, relative = self._hint_location()
        body = json.dumps({"log": self._log_uri(), "seq": seq, "hash": head_hash, "segment": segment}).encode()
        try:
            store.write_bytes(relative, body)
        except Exception as exc:  # noqa: BLE001 - the segment is written: the append succeeded, whatever the hint does
            logging.getLogger(__name__).warning("%s/%s: head hint not written (%s); the next append lists the log", self.layer, self.name, exc)

    # --- the writer lock ---

    def _coordination(self) -> LakeStorage:
        """Where the writer lock or lease lives: the lake, also when the log itself is in a write-once ledger
        bucket (a lease must be renewed and deleted, which Object Lock and the bucket policy refuse)."""
        return self.lake.coordination_store()

    def _lock_key(self) -> str:
        return self.lake.uri(self.lake.table_dir(self.layer, self.name))

    @contextmanager
    def exclusive(self):
        """Hold the log's writer lock: read the log, decide and append inside, and no other writer (thread,
        process or pod) appends in between. Re-entrant within a thread."""
        held = getattr(_held, "keys", None)
        if held is None:
            held = _held.keys = set()
        key = self._lock_key()
        if key in held:
            yield
            return
        with (self._s3_lease() if self._coordination().is_s3 else self._file_lock()):
            held.add(key)
            try:
                yield
            finally:
                held.discard(key)

    @contextmanager
    def _file_lock(self):
        # next to the log it protects: every process writing this lake meets on the same file, whatever
        # its own data dir (`lock_dir` is no longer used for the writer lock)
        store = self._coordination()
        path = store.local_lock_path(f"{store.table_dir(self.layer, self.name)}/{LOCK_FILE}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as fh:
            if not flock_within(fh, self.lock_timeout, on_wait=self.on_wait):
                raise LogLockTimeout(f"{self.layer}/{self.name}: another writer held {path} for over {self.lock_timeout:.0f} s")
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _lease_body(self, owner: str) -> tuple[bytes, float]:
        """The lease object's bytes and the expiry they state (computed before the request that writes them)."""
        expires = time.time() + self.lease_seconds
        return json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "expires_at": expires,
                           "expires_at_utc": datetime.fromtimestamp(expires, timezone.utc).isoformat()}).encode(), expires

    @contextmanager
    def _s3_lease(self):
        """A lease object: created with If-None-Match (free), or taken over with If-Match on an expired
        version (its holder died); renewed with If-Match on our own version; deleted with If-Match on release.
        Expiry uses the writers' clocks: they must agree to well within `lease_seconds` (NTP)."""
        store = self._coordination()
        relative = f"{store.table_dir(self.layer, self.name)}/{LEASE_FILE}"
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_timeout
        etag = None
        waited = False
        while etag is None:
            body, expires = self._lease_body(owner)
            etag = store.put_conditional(relative, body, if_none_match=True)
            if etag is None:
                current = store.read_with_etag(relative)
                if current is not None:
                    try:
                        expired = float(json.loads(current[0])["expires_at"]) < time.time()
                    except (ValueError, KeyError, TypeError):
                        expired = True  # unreadable lease: treat as abandoned
                    if expired:
                        body, expires = self._lease_body(owner)
                        etag = store.put_conditional(relative, body, if_match=current[1])
            if etag is not None and time.time() >= expires - self.lease_seconds / 3:
                # the request took most of the lease's lifetime (or more): the lease may have been born expired, and
                # another writer may have taken it over meanwhile. Renew it on our version before relying on it; 412:
                # it is no longer ours, wait like any other writer
                body, expires = self._lease_body(owner)
                etag = store.put_conditional(relative, body, if_match=etag)
            if etag is not None:
                break
            if time.monotonic() > deadline:
                raise LogLockTimeout(f"{self.layer}/{self.name}: the writer lease {store.uri(relative)} was held for over "
                                     f"{self.lock_timeout:.0f} s")
            if not waited and self.on_wait is not None:
                self.on_wait()  # held by a live writer (an expired lease was taken over above without waiting)
            waited = True
            time.sleep(random.uniform(self.poll_seconds / 10, self.poll_seconds))
        state = {"etag": etag}
        stop = threading.Event()
        # the first renewal a third of the lifetime after the expiry the lease states was computed, not after this
        # point: the requests that took it may have used part of that lifetime
        first_wait = max(0.0, expires - self.lease_seconds * 2 / 3 - time.time())

        def renew():
            wait = first_wait
            while not stop.wait(wait):
                wait = self.lease_seconds / 3
                try:
                    new = store.put_conditional(relative, self._lease_body(owner)[0], if_match=state["etag"])
                    if new is None:
                        # 412: taken over after we stalled past expiry (the CAS + unique checks still hold); 409: a
                        # conflicting request was in flight. Still ours? Renew on the version that is there now
                        current = store.read_with_etag(relative)
                        if current is None or json.loads(current[0]).get("owner") != owner:
                            logging.getLogger(__name__).warning("%s/%s: the writer lease was taken over by another writer",
                                                                self.layer, self.name)
                            return
                        new = store.put_conditional(relative, self._lease_body(owner)[0], if_match=current[1])
                    if new is not None:
                        state["etag"] = new
                except Exception as exc:  # noqa: BLE001 - a transient S3 error: try again next period (the lease lasts three)
                    logging.getLogger(__name__).warning("%s/%s: renewing the writer lease failed (%s); retrying", self.layer, self.name, exc)

        renewer = threading.Thread(target=renew, name=f"lease-{self.name}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            store.delete_if_match(relative, state["etag"])

    # --- appends ---

    def _stored_ids_after(self, checked_through: int, ids: pa.Array) -> list[str]:
        """Ids from `ids` stored in rows with seq > checked_through."""
        import pyarrow.compute as pc

        segs = self.segments()
        firsts = [int(s) for s in segs]
        found: list[str] = []
        for i, seg in enumerate(segs):
            last = firsts[i + 1] - 1 if i + 1 < len(firsts) else None
            if last is not None and last <= checked_through:
                continue
            stored = self._read_segment(seg, pa.schema([self.schema.field(self.unique_key)]))[self.unique_key].drop_null()
            hit = pc.is_in(ids, value_set=pc.unique(stored))
            if pc.any(hit).as_py():
                found.extend(ids.filter(hit).to_pylist())
        return found

    def append(self, rows: list[dict] | pa.Table, attempts: int = 200, checked_through: int | None = None) -> tuple[int, str]:
        """Append rows (dicts or a table, without the chain fields) as one new segment, under the writer
        lock. Returns (rows appended, head hash); `last_append_seq` is the new head seq.

        With a `unique_key`, ids already stored are refused (DuplicateRecordError): stored rows with seq
        > `checked_through` are checked (the caller already compared against rows up to it, under the
        lock); None checks the whole log."""
        import io

        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        n = rows.num_rows if isinstance(rows, pa.Table) else len(rows)
        if not n:
            return 0, self.head()[1]
        table = self._with_chain_columns(rows, 1)
        ids = None
        if self.unique_key:
            ids = table[self.unique_key].combine_chunks()
            if pc.count(ids, mode="only_null").as_py():
                raise DuplicateRecordError(f"{self.layer}/{self.name}: rows without {self.unique_key}")
            if pc.count_distinct(ids).as_py() != n:
                raise DuplicateRecordError(f"{self.layer}/{self.name}: the batch repeats a {self.unique_key}")
        checked = checked_through or 0
        with self.exclusive():
            for _ in range(attempts):
                seq, prev = self.head()
                if ids is not None and seq > checked:
                    dupes = self._stored_ids_after(checked, ids)
                    if dupes:
                        raise DuplicateRecordError(
                            f"{self.layer}/{self.name}: {len(dupes)} {self.unique_key}(s) already stored (e.g. {dupes[0]}); "
                            "another writer appended them since this batch was decided. Nothing was appended; re-run to re-decide."
                        )
                    checked = seq
                first = seq + 1
                chained = table.set_column(table.schema.get_field_index("seq"), "seq", pa.array(range(first, first + n), pa.int64()))
                prevs, hashes = [], []
                for off in range(0, n, 65_536):  # payloads a slice at a time: memory bounded by the slice
                    for payload in canonical_payloads(chained.slice(off, 65_536)):
                        prevs.append(prev)
                        prev = _hash(prev, payload)
                        hashes.append(prev)
                chained = chained.set_column(chained.schema.get_field_index("prev_hash"), "prev_hash", pa.array(prevs, pa.string()))
                chained = chained.set_column(chained.schema.get_field_index("row_hash"), "row_hash", pa.array(hashes, pa.string()))
                buf = io.BytesIO()
                pq.write_table(chained, buf)
                relative = self.lake.data_file(self.layer, self.name, {"segment": _segment_name(first)})
                if self.lake.create_exclusive(relative, buf.getvalue()):
                    self.last_append_seq = seq + n
                    self._write_hint(seq + n, prev, _segment_name(first))
                    return n, prev
                # the head moved under us (a writer that lost its lease): re-read it and re-check the ids
                time.sleep(random.uniform(0.001, 0.05))
            raise RuntimeError(f"could not append to {self.layer}/{self.name}: {attempts} concurrent writers won the race")

    def _with_chain_columns(self, rows: list[dict] | pa.Table, first_seq: int) -> pa.Table:
        n = rows.num_rows if isinstance(rows, pa.Table) else len(rows)
        blank = pa.array([""] * n, pa.string())
        columns = {"seq": pa.array(range(first_seq, first_seq + n), pa.int64()), "prev_hash": blank, "row_hash": blank}
        base = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=pa.schema([f for f in self.schema if f.name not in columns]))
        missing = [f.name for f in self.schema if f.name not in columns and f.name not in base.column_names]
        if missing:
            raise ValueError(f"{self.name}: rows lack columns {missing}")
        return pa.table({f.name: columns[f.name] if f.name in columns else base[f.name] for f in self.schema}).cast(self.schema)

    def _rows_in_storage_order(self, segments: list[str], batch_rows: int):
        """(seq, prev_hash, row_hash, payload) of every stored row, segment by segment, a batch at a time."""
        for segment in segments:
            for batch in self.lake.iter_batches(self.layer, self.name, {"segment": segment}, batch_rows, columns=self.schema.names, missing_ok=True):
                # a segment written before a column was added is hashed over the columns it has
                chunk = pa.Table.from_batches([batch]).cast(pa.schema([self.schema.field(n) for n in batch.schema.names]))
                yield from zip(chunk["seq"].to_pylist(), chunk["prev_hash"].to_pylist(), chunk["row_hash"].to_pylist(), canonical_payloads(chunk))

    def verify(self, expected_head: str | None = None, batch_rows: int = 65_536) -> ChainStatus:
        """Recompute the chain in storage order, streaming (memory bounded by one batch, not the log): seq
        must run 1, 2, 3 … and every prev_hash/row_hash must match. Any edited, removed, inserted or reordered
        row fails, naming the first bad seq."""
        segs = self.segments()
        prev, n = GENESIS, 0
        for i, (seq, prev_hash, stored_hash, payload) in enumerate(self._rows_in_storage_order(segs, batch_rows), start=1):
            if seq != i:
                problem = f"{'duplicate' if seq < i else 'missing'} seq at position {i} (found {seq})"
            elif prev_hash != prev:
                problem = f"seq {i}: prev_hash does not match the previous row (row removed or reordered)"
            elif _hash(prev, payload) != stored_hash:
                problem = f"seq {i}: row_hash does not match its contents (row edited)"
            else:
                prev, n = stored_hash, i
                continue
            stored = sum(self.lake.parquet_metadata(self.layer, self.name, {"segment": s}).num_rows for s in segs)
            return ChainStatus(False, stored, len(segs), prev, problem, i)
        if expected_head is not None and n and expected_head != prev:
            return ChainStatus(False, n, len(segs), prev, "head hash differs from the one recorded at the last append (chain rewritten)")
        if self.unique_key and n:
            dup = self._first_duplicate(segs, batch_rows)
            if dup is not None:
                count, value, seq = dup
                return ChainStatus(False, n, len(segs), prev, f"{count} {self.unique_key}(s) stored more than once, first repeat at seq {seq} "
                                   f"({self.unique_key} {value}): the same record was appended twice", seq)
        return ChainStatus(True, n, len(segs), prev)

    def duckdb_connection(self):
        """A DuckDB connection with this log's memory limit and spill directory (`duckdb_config`). Without them a
        whole-log aggregation held every id in memory: 6.2 GB for the 13.4M decisions of the 100M-event ledger."""
        import duckdb

        return duckdb.connect(config=dict(self.duckdb_config or {}))

    def _first_duplicate(self, segments: list[str], batch_rows: int) -> tuple[int, str, int] | None:
        """(number of repeated ids, first repeated id, seq of its second occurrence) or None. DuckDB
        aggregates the id column streamed segment by segment (within `duckdb_config`'s memory limit, spilling beyond)."""
        cols = ["seq", self.unique_key]
        schema = pa.schema([self.schema.field(c) for c in cols])

        def batches():
            for segment in segments:
                for batch in self.lake.iter_batches(self.layer, self.name, {"segment": segment}, batch_rows, columns=cols, missing_ok=True):
                    if batch.num_rows and self.unique_key in batch.schema.names:  # older segments may predate the id
                        yield pa.Table.from_batches([batch]).select(cols).cast(schema).combine_chunks().to_batches()[0]

        reader = pa.RecordBatchReader.from_batches(schema, batches())
        con = self.duckdb_connection()
        try:
            con.register("ids", reader)
            row = con.execute(
                f"""select count(*) over (), k, s from (
                        select "{self.unique_key}" as k, list(seq order by seq)[2] as s from ids group by 1 having count(*) > 1)
                    order by s limit 1"""
            ).fetchone()
        finally:
            con.close()
        return None if row is None else (int(row[0]), str(row[1]), int(row[2]))


@dataclass
class TableWriterLock(HashChainedLog):
    """The logs' writer lock (fcntl locally, an S3 lease in the lake) for a table that is not a log: its
    writers read, decide and rewrite it one at a time (e.g. `raw/landing_manifest` and the hours it records)."""

    table_layer: str = "raw"

    @property
    def layer(self) -> str:
        return self.table_layer

    def _coordination(self) -> LakeStorage:
        return self.lake


# the writer locks that are not logs hold no rows: the schema is a placeholder
_LOCK_ONLY_SCHEMA = pa.schema([("unused", pa.string())])


def table_writer_lock(lake: LakeStorage, spec: Mapping[str, str] | None, **options):
    """The writer lock named by `spec` ({"layer", "name"}), held (`options`: `lock_timeout`, `on_wait`, `lease_seconds`,
    `poll_seconds` of `HashChainedLog`). A table's builder holds it while it reads and rewrites the table, and declares
    it as `writer_lock` in the table's `privacy/erasure` handler so that the privacy operations that rewrite the table
    in place (erasure, key rotation) hold it too. A no-op for None."""
    if not spec:
        return nullcontext()
    return TableWriterLock(lake=lake, name=spec["name"], schema=_LOCK_ONLY_SCHEMA, table_layer=spec["layer"], **options).exclusive()


# where the partition writer locks of a layer's tables live: outside the tables' own folders (nothing there is a
# partition, and no listing of the tables sees them)
PARTITION_LOCKS = "_partition_locks"


def partition_writer_lock(lake: LakeStorage, layer: str, table: str, partition: Mapping[str, str] | None, **options):
    """The writer lock of ONE partition of a table (`options` as for `table_writer_lock`). For a table whose partitions
    are written by concurrent runs (the consented hours: backfills run two at once), a table-wide lock held for the
    whole build would serialize them; instead each write of a partition holds that partition's lock for the write
    alone, and so does a privacy operation reading and rewriting the partition in place (`partition_lock` in the
    table's `privacy/erasure` handler). The builder re-checks under it what may have changed since it decided the rows
    (the suppression list: `privacy/suppression.LateSuppression`)."""
    part = partition_path(partition) or "_whole"
    return TableWriterLock(lake=lake, name=f"{PARTITION_LOCKS}/{table}/{part}", schema=_LOCK_ONLY_SCHEMA, table_layer=layer,
                           **options).exclusive()
