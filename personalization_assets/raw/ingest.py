"""Incremental event ingestion: landing objects -> hourly `raw/events` + `raw/events_quarantine`.

A run lists every object under the landing root (`raw/layouts.py` says what each is), compares the event
objects with the manifest of objects already read (`raw/landing_manifest`: path, fingerprint = ETag or
size+mtime, the hours its rows went to) and reads only the new or changed ones. Each message goes to the
hour of its own `receivedAt`, so one object may feed several hours and a new object touches only the hours
it holds. A touched hour is rewritten as a merge:

    rows of the hour already stored (minus rows of every object this run re-reads)
    + the new rows for that hour  ->  one copy per messageId (earliest receivedAt, then file, then line);
                                      the others quarantined as duplicate_message_id

which is also exactly what a full rebuild computes, so a sequence of incremental runs equals one rebuild over the
union of their objects. Re-reading an object replaces its earlier contribution, which makes a rerun after a crash
(manifest not yet updated) idempotent. A full refresh re-reads every object and rewrites the hours in place (each
keeps its rows until a batch reaches it); objects re-read although unchanged are marked in the manifest first, so an
interrupted refresh or rebuild is finished by the next run, or started over if what it had read changed meanwhile
(see `ingest_landing` and `_start_refresh`).

Accounting: every listed object is read (status `read`), quarantined (`quarantined`: outside the layout,
unsupported suffix, layout disabled), a reference-source object, or reserved (the generator's own files,
in-progress collector writes). Every line of every object read is a raw row, a quarantine row or a
suppressed record of an erased subject; the run checks this on the actual tables it rewrote.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.raw import events_ingest
from personalization_assets.raw.landing_files import direct_path
from personalization_assets.raw.dedup import drop_positions, duplicate_rows
from personalization_assets.raw.events_ingest import (
    MAX_QUARANTINE_BYTES,
    QUARANTINE_SCHEMA,
    Reject,
)
from personalization_assets.raw.validation import order_like_model
from personalization_assets.raw.layouts import (
    EventObject,
    RejectedObject,
    list_landing,
    plan_landing,
)
from personalization_assets.core.partitions import PARTITION_FMT, partition_dict, partition_start
from personalization_assets.core.audit import record_partition_reads
from personalization_assets.core.storage import partition_path
from personalization_assets.core.tracking_plan import RawEvent

MANIFEST_TABLE = "landing_manifest"
MANIFEST_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("fingerprint", pa.string()),
    ("size", pa.int64()),
    ("mtime_ns", pa.int64()),
    ("layout", pa.string()),
    ("source_id", pa.string()),
    ("status", pa.string()),        # read | quarantined
    ("reason", pa.string()),        # quarantined objects: outside_layout, unsupported_file, layout_disabled
    ("records", pa.int64()),        # lines read (+1 for a file-level problem such as a corrupt gzip)
    ("raw_rows", pa.int64()),       # kept when the object was read
    ("quarantined", pa.int64()),
    ("suppressed", pa.int64()),
    ("hours", pa.list_(pa.string())),  # partition keys its rows went to
    ("run_id", pa.string()),
    ("read_at", pa.timestamp("us", tz="UTC")),
])

BATCH_BYTES = 128 << 20  # decompressed landing bytes parsed and validated together (bounds memory)
GZIP_RATIO = 6
DUPLICATE_DETAIL = "messageId already kept once in this hour (the copy with the earliest receivedAt, then file, then line)"


def _hour_key(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime(PARTITION_FMT)


def _hour_of_key(pk: str) -> datetime:
    return datetime.strptime(pk, PARTITION_FMT).replace(tzinfo=timezone.utc)


@dataclass
class HourStats:
    raw_rows: int = 0
    quarantined: int = 0
    raw_added: int = 0  # net change of the hour's raw rows
    records_read: int = 0  # lines of this run's objects routed to this hour (raw, quarantined or suppressed)
    suppressed: int = 0
    objects: set = field(default_factory=set)
    reasons: Counter = field(default_factory=Counter)


@dataclass
class IngestOutcome:
    objects_listed: int = 0
    objects_new: int = 0
    objects_changed: int = 0
    objects_rebuilt: int = 0
    objects_unchanged: int = 0
    objects_read: int = 0
    objects_quarantined: int = 0
    objects_reserved: int = 0
    objects_reference: int = 0
    objects_unaccounted: list = field(default_factory=list)
    records_read: int = 0
    suppressed: int = 0
    rows_removed: int = 0  # earlier rows of re-read objects
    unaccounted_records: int = 0
    hours: dict = field(default_factory=dict)  # partition key -> HourStats
    full_refresh: bool = False
    settings_changed: bool = False  # a full refresh because the ingestion settings differ from the stored hours'
    layouts: Counter = field(default_factory=Counter)
    # digest of the manifest as recorded at the end of the run: raw/events' data version (an object read, re-read
    # or forgotten changes a row; a run that found nothing new leaves it as it was)
    manifest_digest: str = ""

    def summary(self) -> dict:
        return {
            "objects_listed": self.objects_listed, "objects_new": self.objects_new, "objects_changed": self.objects_changed,
            "objects_rebuilt": self.objects_rebuilt, "objects_unchanged": self.objects_unchanged, "objects_read": self.objects_read,
            "objects_quarantined": self.objects_quarantined, "objects_reserved": self.objects_reserved,
            "objects_reference": self.objects_reference, "objects_unaccounted": len(self.objects_unaccounted),
            "records_read": self.records_read, "suppressed": self.suppressed, "rows_replaced": self.rows_removed,
            "unaccounted_records": self.unaccounted_records, "hours_touched": len(self.hours), "full_refresh": self.full_refresh,
            "settings_changed": self.settings_changed,
        }


EVENTS_FORMAT = "1"  # bump when the events' parsing or validation rules change: every object is read again once
BASIS_META = b"personalization.ingest_basis"  # the manifest's footer: the settings its hours were read with


def ingest_basis(platform, first_hour: str | None = None) -> str:
    """A digest of the settings that decide which rows an object files where: the line size limit, the horizon, the
    future tolerance, the layout setting, `EVENTS_FORMAT` and, when given, the first hour of the event partitions
    (`PERSONALIZATION_EVENTS_START`: a message received before it is quarantined)."""
    return hashlib.sha256((f"{EVENTS_FORMAT}|{platform.max_line_bytes}|{platform.horizon_days}|{platform.max_future_minutes}|"
                           f"{getattr(platform, 'events_layout', 'auto')}" + (f"|{first_hour}" if first_hour else "")).encode()).hexdigest()[:32]


def stored_basis(lake) -> str | None:
    """The basis the stored manifest was written with (its footer only); None: no manifest, or one written before it
    was recorded."""
    if not lake.exists("raw", MANIFEST_TABLE):
        return None
    value = (lake.schema("raw", MANIFEST_TABLE).metadata or {}).get(BASIS_META)
    return value.decode() if value else None


def read_manifest(lake) -> pa.Table:
    if not lake.exists("raw", MANIFEST_TABLE):
        return MANIFEST_SCHEMA.empty_table()
    t = lake.read_table("raw", MANIFEST_TABLE)
    return t.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


def table_digest(table: pa.Table) -> str:
    """A digest of a small table's rows in order (the manifest: one row per landing object)."""
    h = hashlib.sha256()
    for name in table.column_names:
        h.update(name.encode() + b"\0")
        h.update(json.dumps(table.column(name).to_pylist(), default=str, separators=(",", ":")).encode())
    return h.hexdigest()


def _load(landing, path: str) -> events_ingest.LandedFile:
    return events_ingest.load_file(path, landing.read_bytes(path))


class _Prefetch:
    """Reads and decompresses the event objects of a batch and of the next one, `concurrency` at a time, while the
    batch before is parsed and merged (PERSONALIZATION_LANDING_READ_CONCURRENCY). On S3 every object is a request
    whose latency one-at-a-time reading paid once per object (thousands per hour from a busy collector); gzip and the
    requests release the GIL, so the reads also overlap DuckDB's parse locally.

    Only reads: nothing is written or recorded before the batch loop consumes a file, in batch order, so a crash or a
    failed read leaves the state exactly as the sequential loop would (a failed read raises where the loop takes that
    file). At most two batches are in memory (`BATCH_BYTES` each). `concurrency` 1 reads each file when it is taken."""

    def __init__(self, landing, batches: list[list], concurrency: int):
        from concurrent.futures import ThreadPoolExecutor

        self.landing, self.batches = landing, batches
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="landing-read") if concurrency > 1 else None
        self.futures: dict[int, dict] = {}
        if self.pool is not None:
            landing.filesystem()  # one client, created before the threads share it

    def _submit(self, i: int) -> None:
        if i < len(self.batches) and i not in self.futures:
            self.futures[i] = {o.obj.path: self.pool.submit(_load, self.landing, o.obj.path)
                               for o in self.batches[i] if isinstance(o, EventObject)}

    def batch(self, i: int) -> dict[str, Callable[[], events_ingest.LandedFile]]:
        """Batch i's files: each call returns the file or raises its read's error (one at a time: the call reads it).
        Starts reading batch i + 1."""
        if self.pool is None:
            return {o.obj.path: functools.partial(_load, self.landing, o.obj.path)
                    for o in self.batches[i] if isinstance(o, EventObject)}
        self._submit(i)
        self._submit(i + 1)
        return {path: future.result for path, future in self.futures.pop(i).items()}

    def __enter__(self) -> "_Prefetch":
        return self

    def __exit__(self, *exc) -> bool:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # a failed batch: the next one's reads are not used
        self.futures.clear()
        return False


class _Originals:
    """Original bytes of a line, from the batch's files in memory or re-read from the landing zone."""

    def __init__(self, landing):
        self.landing = landing
        self.files: dict[str, events_ingest.LandedFile] = {}

    def line(self, path: str, line_no: int) -> bytes | None:
        f = self.files.get(path)
        if f is None:
            try:
                f = _load(self.landing, path)
            except (FileNotFoundError, OSError):
                return None
            self.files[path] = f
        if 1 <= line_no <= f.n_lines:
            return f.line_bytes(line_no)
        return f.data[:MAX_QUARANTINE_BYTES] if line_no == 0 else None


def _quarantine_table(rows: list[tuple[str, Reject, bytes | None]]) -> pa.Table:
    """Quarantine rows of events, each with the original bytes already fetched (events_ingest.build_quarantine)."""
    return events_ingest.build_quarantine("events", [(path, r) for path, r, _ in rows],
                                          originals={(path, r.line_no): original for path, r, original in rows})


def _batches(objects: list, size_of: Callable) -> list[list]:
    out, cur, size = [], [], 0
    for o in objects:
        b = size_of(o)
        if cur and size + b > BATCH_BYTES:
            out.append(cur)
            cur, size = [], 0
        cur.append(o)
        size += b
    if cur:
        out.append(cur)
    return out


def _estimated(o) -> int:
    obj = o.obj
    return obj.size * (GZIP_RATIO if obj.path.endswith(".gz") else 1)


def ingest_landing(con, landing, lake, platform, *, run_id: str, suppressed: set[str] | None = None, pseudonymizer=None,
                   full_refresh: bool = False, rebuild_hours: set[str] | None = None,
                   valid_hour: Callable[[datetime], bool] = lambda h: True, first_hour: str | None = None,
                   expired_hour: Callable[[datetime], bool] = lambda h: False, log=lambda msg: None,
                   on_hour: Callable[[str, pa.Table], None] | None = None) -> IngestOutcome:
    """Bring raw/events up to date with the landing zone (see the module docstring). The caller holds the
    ingestion lock. `on_hour(partition_key, rows)` sees each rewritten hour's rows once, when written. `first_hour`:
    the first hour `valid_hour` accepts (part of the ingestion basis: moved, it files other rows). `expired_hour`: an
    hour raw retention has removed (a message received in one is quarantined as `past_retention`)."""
    outcome = IngestOutcome(full_refresh=full_refresh)
    objects = list_landing(landing)
    plan = plan_landing(objects, getattr(platform, "events_layout", "auto"))
    outcome.objects_listed = len(objects)
    outcome.objects_reserved = len(plan.reserved)
    outcome.objects_reference = sum(len(v) for v in plan.reference.values())
    event_side: list = list(plan.events) + [r for r in plan.rejected if r.source in ("events", "landing")]
    # objects of a reference source that the plan rejected are quarantined by that source's own asset
    outcome.objects_reference += sum(1 for r in plan.rejected if r.source not in ("events", "landing"))
    manifest = read_manifest(lake)
    landed = {o.obj.path: o.obj.fingerprint for o in event_side}
    manifest_rows = {row["path"]: row for row in manifest.to_pylist()}
    # the settings the stored hours were read with: other ones (a line size limit, the horizon, the future tolerance,
    # the layout, the rules' format) would file other rows, so every object is read again (a full refresh), as a
    # reference source is when its digest changes. A manifest written before this was recorded adopts the current basis.
    basis = ingest_basis(platform, first_hour)
    stored = stored_basis(lake)
    if stored is not None and stored != basis and manifest_rows and not full_refresh:
        log("the ingestion settings changed since the stored hours were read (line size limit, horizon, future tolerance, "
            "layout, first event hour or the rules' format): the whole landing zone is read again")
        full_refresh = True
        outcome.full_refresh = outcome.settings_changed = True
    # The stored hours are rewritten in place, never emptied first: until a batch reaches an hour, readers see it as it
    # was. Before any hour changes, every object a run re-reads although the manifest has it unchanged is marked in
    # the manifest (durably): a run killed midway leaves the objects it had not reached marked, and the next run,
    # whatever its options, re-reads them. A full refresh marks every object with the fingerprint it has when the
    # refresh starts; the next run resumes the refresh if nothing it had read or stored has changed since, and starts
    # it over otherwise (a changed or deleted object may have displaced other objects' copies of a message into
    # quarantine, where a resume would leave them).
    refresh = full_refresh
    interrupted = not full_refresh and any(_mark_of(row["fingerprint"]) == REFRESH_MARK for row in manifest_rows.values())
    if interrupted:
        changed = [p for p, row in manifest_rows.items() if landed.get(p) != _unmarked(row["fingerprint"])]
        stray = [] if changed else sorted(_hours_with_rows_outside(lake, set(manifest_rows)))
        refresh = bool(changed or stray)
        log(f"restarting an interrupted full refresh: {(changed + stray)[0]} changed since it started" if refresh else
            "resuming an interrupted full refresh (the manifest still marks the objects it had not re-read)")
    if refresh:  # started, or started over
        _start_refresh(con, lake, manifest_rows, landed, outcome, log, basis)
    outcome.full_refresh = full_refresh or interrupted  # the batches then keep only rows the refresh re-read
    to_read = []
    for o in event_side:
        prev = manifest_rows.get(o.obj.path)
        if prev is None:
            outcome.objects_new += 1
            to_read.append(o)
        elif _unmarked(prev["fingerprint"]) != o.obj.fingerprint:
            outcome.objects_changed += 1
            to_read.append(o)
        elif _mark_of(prev["fingerprint"]) or (rebuild_hours and set(prev["hours"] or []) & rebuild_hours):
            outcome.objects_rebuilt += 1
            to_read.append(o)
        else:
            outcome.objects_unchanged += 1
    reread = {o.obj.path for o in to_read}
    _mark(manifest_rows, {p: landed[p] for p in reread if p in manifest_rows and not _mark_of(manifest_rows[p]["fingerprint"])},
          REREAD_MARK, lake, basis)
    previous_hours = {p: set(manifest_rows[p]["hours"] or []) for p in reread if p in manifest_rows}
    # Which stored rows of a rewritten hour stay. Incremental: all but those of objects still to be re-read
    # (`pending`). Full refresh: only those of objects already re-read by it (`done`, which a resumed refresh takes
    # from the manifest), so rows of any other file go too.
    pending = set(reread)
    in_refresh = outcome.full_refresh
    done = {p for p in manifest_rows if p in landed and p not in reread} if in_refresh else None
    originals = _Originals(landing)
    batches = _batches(to_read, _estimated)
    with _Prefetch(landing, batches, getattr(platform, "landing_read_concurrency", 1)) as prefetch:
        for i, batch in enumerate(batches):
            _ingest_batch(con, batch, landing, lake, platform, outcome, manifest_rows, pending, previous_hours, originals,
                          suppressed, pseudonymizer, run_id, valid_hour, log, on_hour, done=done, loaded=prefetch.batch(i),
                          expired_hour=expired_hour)
            pending -= {o.obj.path for o in batch}
            if done is not None:
                done |= {o.obj.path for o in batch}
            # progress is durable per batch: a rerun after a crash re-reads only what the manifest lacks or marks
            _write_manifest(lake, manifest_rows, basis)
            originals.files.clear()
    if not batches and (in_refresh or not lake.exists("raw", MANIFEST_TABLE) or stored != basis):
        _write_manifest(lake, manifest_rows, basis)
    recorded = read_manifest(lake)  # what was durably recorded, not what we meant to record
    in_manifest = set(recorded["path"].to_pylist())
    # the basis too: the same objects read under other settings are other tables
    outcome.manifest_digest = hashlib.sha256(f"{table_digest(recorded)}|{basis}".encode()).hexdigest()
    outcome.objects_unaccounted = [o.obj.path for o in event_side if o.obj.path not in in_manifest]
    return outcome


# Manifest fingerprints of objects a run will re-read although they are unchanged carry a mark while it runs: the
# object then no longer matches its manifest row, so a run that is interrupted is finished by the next one.
REFRESH_MARK = "refresh-pending:"  # a full refresh: every object, and the cleanup of what the landing zone no longer holds
REREAD_MARK = "reread-pending:"    # the objects of hours asked for again (`rebuild_hours`)


def _mark(manifest_rows: dict, fingerprints: dict[str, str], mark: str, lake, basis: str) -> None:
    """Set the manifest fingerprint of each path in `fingerprints` to `mark` + the given fingerprint and, if any row
    changed, write the manifest before anything else is written."""
    changed = False
    for p, fingerprint in fingerprints.items():
        row = manifest_rows[p]
        if row["fingerprint"] != f"{mark}{fingerprint}":
            manifest_rows[p] = {**row, "fingerprint": f"{mark}{fingerprint}"}
            changed = True
    if changed:
        _write_manifest(lake, manifest_rows, basis)


def _start_refresh(con, lake, manifest_rows: dict, landed: dict[str, str], outcome: IngestOutcome, log, basis: str) -> None:
    """The start of a full refresh, before any batch. (1) Every object of the landing zone in the manifest is marked
    with its current fingerprint. (2) Every stored partition that is not a canonical hour some manifest row names is
    deleted unread (files no manifest row accounts for; `hour=5`, `hour=xx`, a file at the table root), and so is one
    whose footer does not open or names no `source_file`: every object is re-read, and one whose rows belong there
    re-creates the hour. (3) Objects gone from the landing zone
    leave every hour they fed (their rows dropped, the hour's duplicates decided again over what stays; the batches then
    rewrite those hours from the objects they re-read), then the manifest forgets them. Each step is idempotent, so a
    refresh that dies here starts over cleanly."""
    _mark(manifest_rows, {p: fp for p, fp in landed.items() if p in manifest_rows}, REFRESH_MARK, lake, basis)
    accounted = {h for row in manifest_rows.values() for h in (row["hours"] or [])}
    for table in ("events", "events_quarantine"):
        for part in lake.partitions("raw", table):
            if _partition_key(part) not in accounted or not _readable(lake, table, part):
                lake.delete_partition("raw", table, part)
    gone = sorted(p for p in manifest_rows if p not in landed)
    if gone:
        log(f"full refresh: {len(gone)} object(s) gone from the landing zone leave the hours they fed")
        stays = ("drop", pa.array(gone, pa.string()))
        hours = sorted({h for p in gone for h in (manifest_rows[p]["hours"] or [])})
        for pk in hours:
            _merge_hour(con, pk, None, [], lake, outcome, defaultdict(lambda: {"raw": 0, "q": 0, "s": 0, "hours": set()}), stays,
                        set(), _NoOriginals(), None, None)
        for p in gone:
            del manifest_rows[p]
        _write_manifest(lake, manifest_rows, basis)


def _readable(lake, table: str, part: dict) -> bool:
    """The partition's Parquet footer opens and its schema names the source file of each row."""
    try:
        return "source_file" in lake.parquet_metadata("raw", table, part).schema.names
    except (OSError, ValueError):  # pyarrow.ArrowInvalid is a ValueError
        return False


class _NoOriginals:
    """No object is read when only stored rows are dropped from an hour: duplicates found among the rows that stay
    were already decided when those rows were stored, so no original bytes are needed."""

    def line(self, path: str, line_no: int) -> bytes | None:
        return None


def _partition_key(part: dict) -> str | None:
    """The hourly partition key of a stored partition's folder values; None unless the folders are exactly the
    canonical `date=YYYY-MM-DD/hour=HH` (`hour=5` is not hour 05: reading it as such would merge two folders)."""
    try:
        key = f"{part['date']}-{part['hour']}:00"
        return key if part == partition_dict(key) else None
    except (KeyError, ValueError):
        return None


def _hours_with_rows_outside(lake, files: set[str]) -> set[str]:
    """Stored hours holding a row of raw/events or raw/events_quarantine whose source file is not in `files` (reads
    the `source_file` column only)."""
    allowed = pa.array(sorted(files), pa.string())
    out = set()
    for table in ("events", "events_quarantine"):
        for part in lake.partitions("raw", table):
            key = _partition_key(part)
            if key is None or key in out:
                continue
            column = lake.read_table("raw", table, part, columns=["source_file"])["source_file"]
            if not pc.all(pc.fill_null(pc.is_in(column, value_set=allowed), False), min_count=0).as_py():
                out.add(key)
    return out


def _mark_of(fingerprint: str | None) -> str | None:
    for mark in (REFRESH_MARK, REREAD_MARK):
        if fingerprint and fingerprint.startswith(mark):
            return mark
    return None


def _unmarked(fingerprint: str | None) -> str | None:
    mark = _mark_of(fingerprint)
    return fingerprint[len(mark):] if mark else fingerprint


def _write_manifest(lake, rows: dict, basis: str) -> None:
    table = pa.Table.from_pylist([rows[p] for p in sorted(rows)], schema=MANIFEST_SCHEMA.with_metadata({BASIS_META: basis.encode()}))
    lake.write_table("raw", MANIFEST_TABLE, table)


def _ingest_batch(con, batch, landing, lake, platform, outcome: IngestOutcome, manifest_rows: dict, pending: set[str],
                  previous_hours: dict, originals: _Originals, suppressed, pseudonymizer, run_id: str, valid_hour, log, on_hour=None,
                  done: set[str] | None = None, *, loaded: Mapping[str, Callable[[], events_ingest.LandedFile]],
                  expired_hour: Callable[[datetime], bool] = lambda h: False) -> None:
    """`loaded`: each event object's path -> a call returning its loaded file (`_Prefetch.batch`)."""
    events = [o for o in batch if isinstance(o, EventObject)]
    rejected = [o for o in batch if isinstance(o, RejectedObject)]
    object_hour = {o.obj.path: o.object_hour for o in batch}
    source_id = {o.obj.path: o.source_id for o in events}
    items = []
    for o in events:
        landed = loaded[o.obj.path]()
        originals.files[o.obj.path] = landed
        local = landing.local_path(o.obj.path)
        usable = direct_path(landed, local)
        items.append((landed, usable, o.object_hour))
        outcome.layouts[o.layout] += 1
    if items:
        valid, q_rows, read_by_path, _fast = events_ingest.parse_validate(
            con, items, platform.horizon_days, platform.max_future_minutes, platform.max_line_bytes, route_by_received_at=True)
    else:
        valid, q_rows, read_by_path = None, [], {}
    # quarantine rows of this batch: (hour key, path, Reject, original bytes)
    new_q: list[tuple[str, str, Reject, bytes | None]] = []
    for path, r in q_rows:
        new_q.append((_hour_key(object_hour[path]), path, r, originals.line(path, r.line_no)))
    for o in rejected:
        head = landing.read_bytes(o.obj.path)[:MAX_QUARANTINE_BYTES]
        new_q.append((_hour_key(_clamp(o.object_hour, valid_hour)), o.obj.path, Reject(0, o.reason, o.detail), head))
        read_by_path[o.obj.path] = 1
    new_raw = pa.table({})
    if valid is not None and valid.num_rows:
        new_raw = order_like_model(valid.drop_columns(["_type_errors", "_type_reason"]))
        if "cdp_source_id" in RawEvent.to_schema().columns:
            paths = sorted(source_id)
            ids = pc.take(pa.array([source_id[p] for p in paths], pa.string()),
                          pc.index_in(new_raw["source_file"], value_set=pa.array(paths, pa.string())))
            new_raw = new_raw.append_column("cdp_source_id", ids) if "cdp_source_id" not in new_raw.column_names else new_raw
            new_raw = order_like_model(new_raw)
        # a receivedAt outside the event partitions (before PERSONALIZATION_EVENTS_START, or past the current hour), or in
        # an hour raw retention has removed (a late object for it, a full refresh over a landing zone that keeps more
        # than the raw tier: the hour came back, and its consented hour was rebuilt from the late rows alone)
        distinct = pc.unique(new_raw["landing_hour"])
        invalid = [h for h in distinct.to_pylist() if not valid_hour(h)]  # one test per distinct hour, not per row
        expired = {h for h in distinct.to_pylist() if valid_hour(h) and expired_hour(h)}
        ok = np.ones(new_raw.num_rows, dtype=bool)
        if invalid or expired:
            refused = pa.array(invalid + sorted(expired), distinct.type)
            ok = pc.invert(pc.is_in(new_raw["landing_hour"], value_set=refused)).to_numpy(zero_copy_only=False)
        if not ok.all():
            bad = new_raw.filter(pa.array(~ok)).select(["source_file", "line_no", "received_at", "landing_hour"]).to_pylist()
            for b in bad:
                if b["landing_hour"] in expired:
                    # recorded without its bytes: retention removed that hour's personal data, and the quarantine (filed
                    # under the object's hour) would otherwise hold it again until the next retention run
                    r = Reject(int(b["line_no"]), "past_retention",
                               f"receivedAt {b['received_at']} is in an hour raw retention has removed (privacy_policies/retention.yaml, "
                               "tier raw); the message is not kept")
                    original = None
                else:
                    r = Reject(int(b["line_no"]), "received_at_outside_partitions",
                               f"receivedAt {b['received_at']} is outside the event partitions (PERSONALIZATION_EVENTS_START .. the current hour)")
                    original = originals.line(b["source_file"], r.line_no)
                new_q.append((_hour_key(_clamp(object_hour[b["source_file"]], valid_hour)), b["source_file"], r, original))
            new_raw = new_raw.filter(pa.array(ok))
    per_object = defaultdict(lambda: {"raw": 0, "q": 0, "s": 0, "hours": set()})
    touched: set[str] = set()
    raw_by_hour: dict[str, pa.Table] = {}
    if new_raw.num_rows:
        raw_by_hour = _split_by_hour(new_raw)
        touched |= set(raw_by_hour)
    q_by_hour: dict[str, list] = defaultdict(list)
    for hk, path, r, orig in new_q:
        q_by_hour[hk].append((path, r, orig))
        touched.add(hk)
    for o in batch:
        touched |= previous_hours.get(o.obj.path, set())
    # stored rows that stay in a rewritten hour (see ingest_landing): all but `pending`, or (a full refresh) only `done`
    stays = ("drop", pa.array(sorted(pending), pa.string())) if done is None else ("keep", pa.array(sorted(done), pa.string()))
    # the stored partitions the merges below read, recorded in one audit append before any is read (one append per
    # read otherwise: 336 at a full refresh of a built 1M-event lake)
    record_partition_reads(lake, [(f"raw/{table}", partition_path(partition_dict(pk))) for pk in sorted(touched)
                                  for table in ("events", "events_quarantine") if lake.exists("raw", table, partition_dict(pk))])
    routed = 0
    for pk in sorted(touched):
        routed += _merge_hour(con, pk, raw_by_hour.get(pk), q_by_hour.get(pk, []), lake, outcome, per_object, stays,
                              {o.obj.path for o in batch}, originals, suppressed, pseudonymizer, on_hour,
                              expired=expired_hour(partition_start(pk)))
    # every record read was filed under some hour (nothing lost between parsing and the merge)
    outcome.unaccounted_records += sum(read_by_path.values()) - routed
    now = datetime.now(timezone.utc)
    for o in batch:
        p = o.obj.path
        st = per_object[p]
        records = read_by_path.get(p, 0)
        outcome.records_read += records
        is_event = isinstance(o, EventObject)
        manifest_rows[p] = {
            "path": p, "fingerprint": o.obj.fingerprint, "size": o.obj.size, "mtime_ns": o.obj.mtime_ns,
            "layout": o.layout if is_event else None, "source_id": o.source_id if is_event else None,
            "status": "read" if is_event else "quarantined", "reason": None if is_event else o.reason,
            "records": records, "raw_rows": st["raw"], "quarantined": st["q"], "suppressed": st["s"],
            "hours": sorted(st["hours"]), "run_id": run_id, "read_at": now,
        }
        if is_event:
            outcome.objects_read += 1
        else:
            outcome.objects_quarantined += 1
    log(f"batch: {len(batch)} objects, {sum(read_by_path.values())} records -> {len(touched)} hours")


def _split_by_hour(table: pa.Table) -> dict[str, pa.Table]:
    """The rows of `table` per landing hour (partition key), each hour's rows in their order in `table`. One stable
    sort by hour and (unless the rows are in hour order already) one take, then slices: a filter per hour read the
    whole batch once per hour it spans."""
    hours = pc.floor_temporal(table["landing_hour"].combine_chunks(), unit="hour")
    order = pc.sort_indices(hours)  # stable: rows of one hour keep their order
    if np.array_equal(order.to_numpy(), np.arange(len(hours))):  # files in hour order (the usual case): no copy
        ordered = table
    else:
        ordered, hours = table.take(order), hours.take(order)
    runs = pc.run_end_encode(hours)
    out, start = {}, 0
    for hour, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist()):
        out[hour.strftime("%Y-%m-%d-%H:00")] = ordered.slice(start, end - start)
        start = end
    return out


def _sorted_by_file_and_line(table: pa.Table) -> pa.Table:
    """`table` ordered by (source_file, line_no), without a copy when it already is (new rows of one batch are)."""
    order = pc.sort_indices(table, sort_keys=[("source_file", "ascending"), ("line_no", "ascending")])
    if np.array_equal(order.to_numpy(), np.arange(table.num_rows)):
        return table
    return table.take(order)


def _clamp(hour: datetime, valid_hour) -> datetime:
    """The hour a quarantine row is filed under when the object's own hour is not a partition."""
    if valid_hour(hour):
        return hour
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return now if hour > now else _first_valid(valid_hour, hour)


def _first_valid(valid_hour, hour: datetime) -> datetime:
    h = hour
    for _ in range(24 * 366 * 5):
        if valid_hour(h):
            return h
        h += timedelta(hours=1)
    return datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _stays(source_file, stays: tuple[str, pa.Array]):
    """Mask of the stored rows that stay: ("drop", files) keeps every other file's rows, ("keep", files) only theirs."""
    kind, files = stays
    inside = pc.fill_null(pc.is_in(source_file, value_set=files), False)
    return pc.invert(inside) if kind == "drop" else inside


def _merge_hour(con, pk: str, new_raw: pa.Table | None, new_q: list, lake, outcome: IngestOutcome, per_object, stays: tuple[str, pa.Array],
                batch_paths: set[str], originals: _Originals, suppressed, pseudonymizer, on_hour=None, expired: bool = False) -> int:
    """Merge this batch's rows and quarantine rows of hour `pk` into the stored hour. `expired`: the hour is past raw
    retention; it holds no rows (they were quarantined as past_retention), and no raw partition is written for it: an
    empty one brought the hour back, and the consented step then rebuilt the consented hour (kept 13 months) empty."""
    part = partition_dict(pk)
    stats = outcome.hours.setdefault(pk, HourStats())
    before = removed = 0
    old_raw = None
    if lake.exists("raw", "events", part):
        old_raw = lake.read_table("raw", "events", part)
        before += old_raw.num_rows
        keep = _stays(old_raw["source_file"], stays)
        removed += old_raw.num_rows - (pc.sum(pc.cast(keep, pa.int64())).as_py() or 0)
        old_raw = old_raw.filter(keep)
    old_q = None
    if lake.exists("raw", "events_quarantine", part):
        old_q = lake.read_table("raw", "events_quarantine", part).select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
        before += old_q.num_rows
        keep = _stays(old_q["source_file"], stays)
        removed += old_q.num_rows - (pc.sum(pc.cast(keep, pa.int64())).as_py() or 0)
        old_q = old_q.filter(keep)
    raw_old_n = 0 if old_raw is None else old_raw.num_rows
    # --- new rows first: suppression of erased subjects (counted, never stored)
    q_rows = list(new_q)
    n_suppressed = 0
    routed = (0 if new_raw is None else new_raw.num_rows) + len(new_q)  # this run's records filed under this hour
    if new_raw is not None and new_raw.num_rows and suppressed and pseudonymizer is not None:
        mask = events_ingest.suppressed_mask(new_raw, suppressed, pseudonymizer.pseudonymize_values)
        if pc.any(mask).as_py():
            for vc in pc.value_counts(new_raw.filter(mask)["source_file"]).to_pylist():
                per_object[vc["values"]]["s"] += vc["counts"]
                per_object[vc["values"]]["hours"].add(pk)
            n_suppressed = pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
            new_raw = new_raw.filter(pc.invert(mask))
    # --- one copy per messageId in the hour: stored rows and new rows together
    parts = [t for t in (old_raw, new_raw) if t is not None and t.num_rows]
    if parts:
        names = [c for c in parts[-1].column_names]
        merged = pa.concat_tables([t.select([c for c in names if c in t.column_names]) if set(names) <= set(t.column_names) else t for t in parts],
                                  promote_options="permissive")
    else:
        merged = None
    if merged is not None and merged.num_rows:
        dups = duplicate_rows(con, merged, ["message_id"], ["received_at", "source_file", "line_no"])
        for d in dups.to_pylist():
            r = Reject(int(d["line_no"]), "duplicate_message_id", DUPLICATE_DETAIL)
            q_rows.append((d["source_file"], r, originals.line(d["source_file"], r.line_no)))
        merged = drop_positions(merged, dups["_pos"])
        merged = _sorted_by_file_and_line(merged)
    new_q_table = _quarantine_table(q_rows)
    # quarantined records of erased subjects are suppressed too (exact identifiers they still hold)
    from personalization_assets.core.quarantine_match import suppress_quarantine

    kept_q, q_suppressed = suppress_quarantine(con, new_q_table, suppressed, pseudonymizer)
    if q_suppressed:
        dropped = set(zip(new_q_table["source_file"].to_pylist(), new_q_table["line_no"].to_pylist())) - set(
            zip(kept_q["source_file"].to_pylist(), kept_q["line_no"].to_pylist()))
        for p, _ in dropped:
            per_object[p]["s"] += 1
            per_object[p]["hours"].add(pk)
    raw_suppressed = n_suppressed
    n_suppressed += q_suppressed
    quarantine = pa.concat_tables([t for t in (old_q, kept_q) if t is not None]) if old_q is not None else kept_q
    quarantine = quarantine.sort_by([("source_file", "ascending"), ("line_no", "ascending"), ("reason", "ascending")])
    raw_n = 0 if merged is None else merged.num_rows
    if raw_n == 0 and quarantine.num_rows == 0:
        lake.delete_partition("raw", "events", part)
        lake.delete_partition("raw", "events_quarantine", part)
        raw_table = None
    elif raw_n == 0 and expired:
        lake.delete_partition("raw", "events", part)
        lake.write_table("raw", "events_quarantine", quarantine, partition=part)
        raw_table = None
    else:
        raw_table = merged if merged is not None else _empty_raw(old_raw, new_raw)
        lake.write_table("raw", "events", raw_table, partition=part)
        lake.write_table("raw", "events_quarantine", quarantine, partition=part)
    # --- accounting: what this hour gained equals what the new records brought
    for table, field_name in ((merged, "raw"), (kept_q, "q")):
        if table is None or not table.num_rows:
            continue
        for vc in pc.value_counts(table["source_file"]).to_pylist():  # per object, not per row
            p = vc["values"]
            if p in batch_paths:
                per_object[p][field_name] += vc["counts"]
                per_object[p]["hours"].add(pk)
    after = raw_n + quarantine.num_rows
    stats.records_read += routed
    stats.suppressed += n_suppressed
    stats.raw_added += raw_n - raw_old_n
    stats.raw_rows = raw_n
    stats.quarantined = quarantine.num_rows
    stats.objects |= {p for p in batch_paths if pk in per_object.get(p, {}).get("hours", set())}
    stats.reasons.update(kept_q["reason"].to_pylist())
    if on_hour is not None and raw_table is not None:
        on_hour(pk, raw_table)  # checks and samples see the hour's rows now; they are not kept for the whole run
    outcome.suppressed += n_suppressed
    outcome.rows_removed += removed
    # conservation on the tables actually written: what stayed + what came in = what is stored + what was suppressed
    outcome.unaccounted_records += (before - removed) + routed - after - raw_suppressed - q_suppressed
    return routed


def _empty_raw(old_raw, new_raw) -> pa.Table:
    for t in (new_raw, old_raw):
        if t is not None and t.num_columns:
            return t.slice(0, 0)
    from personalization_assets.core.schemas import arrow_schema

    return arrow_schema(RawEvent).empty_table()
