"""A verified checkpoint of a hash-chained log (the consent ledger, the access audit log), so that a run re-verifies
only the segments appended since, and its cost does not grow with the log's age.

`HashChainedLog.verify` recomputes the whole chain (a sha256 per row, in Python): its cost grows with the history.
The checkpoint holds no pseudonym (names, fingerprints, hashes and counts only) and is two lake tables:

* `privacy/<log>_checkpoint_segments`, partitioned by `block` (the segments whose first seq falls in a range of
  `BLOCK_SEQS`): per verified segment its name, its listing fingerprint (locally size + mtime + ctime + inode — a
  rewrite, even one that restores the mtime, changes the ctime; on S3 size + ETag), its first seq, its row count and
  the chain hash after its last row. A run rewrites only the blocks its new segments fall in;
* `privacy/<log>_checkpoint` (one row, replaced after each successful verification): the head — segment count,
  row count, the newest segment with its fingerprint and chain hash, the segment before it, and where the rotating
  re-check of the older segments goes on (`recheck_after`).

A run does not list the log. It lists (metadata only):

* the newest checkpointed segment and everything after it (`LakeStorage.partition_fingerprints_after`): the newest
  segment must be there, unchanged; the rest are the new segments, verified from the head (seq, hash), and their
  decision ids checked against each other and against the stored ids (one column read, no hashing);
* a window of at most `RECHECK_SEGMENTS` older segments after `recheck_after` (one S3 request), compared with their
  checkpoint rows; the next run goes on after it, and after the newest one the window starts again from the first.
  Every segment is so re-checked at least once every ceil(segments / RECHECK_SEGMENTS) runs (every run while the log
  has fewer segments than that); `full_refresh` re-checks and recomputes everything at once.

Outcomes: checkpoint missing, unreadable, of another format or of another log location, or `full=True`: full
verification. A checkpointed segment MISSING (the newest one, or one in the window): fails — the ledger is never
pruned, a segment gone is a removed piece of the evidence (removing the newest segment leaves a valid shorter chain,
which only the checkpoint reveals). A checkpointed segment whose fingerprint changed, or a segment that is not in the
checkpoint but sorts before its newest segment (inserted): full verification, and the chain must still pass through
every checkpointed (seq, hash).

Tamper evidence therefore holds as before, with one bound made explicit: an edited, removed, inserted or reordered
row in an old segment rewrites that segment (new fingerprint -> full verification -> fails), and a removed segment
fails — on the run whose window reaches it, at the latest ceil(segments / RECHECK_SEGMENTS) runs later (with the
default and 30 audit segments per five-minute tick: within about 4 hours after a month, 2 days after a year), and at
once on a `full_refresh`. Where the logs live in the write-once ledger bucket (S3 Object Lock,
`PERSONALIZATION_LEDGER_URL`) no segment can be rewritten or removed within its retention in the first place. The
checkpoint lives in the lake, not in the (possibly write-once) log store; someone able to rewrite both a segment and
the checkpoint consistently could hide an edit from incremental runs until the next full verification.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.core.hash_chain import GENESIS, ChainStatus, HashChainedLog, _hash
from personalization_assets.core.storage import LakeStorage

log = logging.getLogger(__name__)

LAYER = "privacy"
FORMAT = "2"  # format 1 (one table, a row per segment, the whole log listed on each run) is verified in full once
_META = "personalization."
BLOCK_SEQS = 10_000  # a block of the segment table holds the segments whose first seq is in [k * BLOCK_SEQS, (k+1) * BLOCK_SEQS)
RECHECK_SEGMENTS = 1_000  # older segments re-checked per run (one S3 list request)
_SEGMENT = "segment"
CHECKPOINT_SCHEMA = pa.schema([
    ("segment", pa.string()),
    ("fingerprint", pa.string()),
    ("first_seq", pa.int64()),
    ("rows", pa.int64()),
    ("head_hash", pa.string()),  # chain hash after the segment's last row
    ("verified_at", pa.timestamp("us", tz="UTC")),
])
HEAD_SCHEMA = pa.schema([
    ("segments", pa.int64()),
    ("rows", pa.int64()),
    ("last_segment", pa.string()),  # '' for an empty log
    ("last_fingerprint", pa.string()),
    ("last_first_seq", pa.int64()),
    ("head_hash", pa.string()),
    ("tail_after", pa.string()),  # the segment before the newest one ('' = none): where the next run's listing starts
    ("recheck_after", pa.string()),  # the rotating re-check goes on after this segment ('' = from the first)
    ("verified_at", pa.timestamp("us", tz="UTC")),
])


def checkpoint_table(log_name: str) -> str:
    return f"{log_name}_checkpoint"


def segments_table(log_name: str) -> str:
    return f"{log_name}_checkpoint_segments"


@dataclass(frozen=True)
class Segment:
    name: str
    fingerprint: str
    first_seq: int
    rows: int
    head_hash: str


@dataclass(frozen=True)
class Head:
    segments: int
    rows: int
    last_segment: str
    last_fingerprint: str
    last_first_seq: int
    head_hash: str
    tail_after: str
    recheck_after: str


@dataclass
class Verification:
    status: ChainStatus
    mode: str  # incremental | full
    reason: str  # why full (or 'checkpoint' when incremental)
    segments_verified: int
    rows_verified: int
    segments: list[Segment] = field(default_factory=list)  # verified segments to record: all (full) or the new ones
    segments_rechecked: int = 0  # older segments whose fingerprints this run compared with the checkpoint
    head: Head | None = None  # the checkpoint head to write (when ok)

    def metadata(self) -> dict:
        return {"verify_mode": self.mode, "verify_reason": self.reason, "segments_verified": self.segments_verified,
                "rows_verified": self.rows_verified, "segments_rechecked": self.segments_rechecked}


def _order(name: str) -> str:
    return f"{_SEGMENT}={name}/"  # the listing order (storage._listing_order)


def _listed(hlog: HashChainedLog, after: str | None = None, limit: int | None = None) -> dict[str, str]:
    """{segment: fingerprint} of the segments after segment `after` (None: from the first), in listing order, at most
    `limit`; no data read. The fingerprint locally includes the ctime (a rewrite that puts the old size and mtime
    back still changes it), on S3 the ETag."""
    out = {}
    parts = hlog.lake.partition_fingerprints_after(hlog.layer, hlog.name, after=None if after is None else f"{_SEGMENT}={after}",
                                                   limit=limit, strict=True)
    for path, fp in parts.items():
        key, _, value = path.partition("=")
        if key == _SEGMENT and value:
            out[value] = fp
    return out


def segment_fingerprints(hlog: HashChainedLog) -> dict[str, str]:
    """{segment: fingerprint} of every segment of the log (the whole listing)."""
    return _listed(hlog)


def _location(hlog: HashChainedLog) -> str:
    return hlog.lake.uri(hlog.lake.table_dir(hlog.layer, hlog.name))


def _seq_of(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def _block(first_seq: int) -> dict[str, str]:
    return {"block": f"{first_seq // BLOCK_SEQS:08d}"}


def read_head(lake: LakeStorage, hlog: HashChainedLog) -> tuple[Head | None, str]:
    table = checkpoint_table(hlog.name)
    try:
        t = lake.read_table(LAYER, table)  # no existence check first: one request less on S3
        meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    except FileNotFoundError:
        return None, "checkpoint_missing"
    except Exception as exc:  # noqa: BLE001 - unreadable: never trusted, everything is verified again
        log.warning("%s/%s is unreadable (%s): the log is verified in full", LAYER, table, exc)
        return None, "checkpoint_unreadable"
    if meta.get(_META + "format") != FORMAT:
        return None, "checkpoint_format_changed"
    if meta.get(_META + "log") != _location(hlog):
        return None, "checkpoint_of_another_log"
    try:
        (r,) = t.select(HEAD_SCHEMA.names).cast(HEAD_SCHEMA).to_pylist()
        head = Head(int(r["segments"]), int(r["rows"]), r["last_segment"] or "", r["last_fingerprint"] or "",
                    int(r["last_first_seq"]), r["head_hash"], r["tail_after"] or "", r["recheck_after"] or "")
    except Exception:  # noqa: BLE001 - a head of another shape is not trusted
        return None, "checkpoint_inconsistent"
    # an internally inconsistent head is not trusted
    if head.segments < 0 or (head.segments == 0) != (head.last_segment == "") or (head.segments == 0 and head.rows != 0):
        return None, "checkpoint_inconsistent"
    if head.segments and (_seq_of(head.last_segment) != head.last_first_seq or head.rows < head.last_first_seq
                          or (head.tail_after and _order(head.tail_after) >= _order(head.last_segment))):
        return None, "checkpoint_inconsistent"
    return head, "checkpoint"


def _segment_rows(lake: LakeStorage, hlog: HashChainedLog, first: int | None = None, last: int | None = None) -> list[Segment]:
    """Checkpointed segments whose first seq is in [first, last] (None: unbounded), from the blocks covering them, in
    chain order."""
    table = segments_table(hlog.name)
    if first is not None and last is not None:
        parts: Iterable[dict[str, str]] = [_block(k * BLOCK_SEQS) for k in range(first // BLOCK_SEQS, last // BLOCK_SEQS + 1)]
    else:
        parts = lake.partitions(LAYER, table)
    out = []
    for part in parts:
        t = _read_block(lake, table, part)
        for r in ([] if t is None else t.to_pylist()):
            if (first is None or r["first_seq"] >= first) and (last is None or r["first_seq"] <= last):
                out.append(Segment(r["segment"], r["fingerprint"], int(r["first_seq"]), int(r["rows"]), r["head_hash"]))
    out.sort(key=lambda s: s.first_seq)
    return out


def _read_block(lake: LakeStorage, table: str, part: dict[str, str]) -> pa.Table | None:
    try:
        return lake.read_table(LAYER, table, part).select(CHECKPOINT_SCHEMA.names).cast(CHECKPOINT_SCHEMA)
    except FileNotFoundError:  # a block not written yet (or removed: its segments then read as inserted)
        return None


def checkpoint_lock(lake: LakeStorage, hlog: HashChainedLog):
    """One verification-and-checkpoint of the log at a time (fcntl locally, an S3 lease in the lake), for a log whose
    verification does not hold the log's writer lock (the access audit log: every step appends to it). Two at once
    are safe without it, but one could record a shorter block than the other's head, and the next runs would verify
    everything again to settle it."""
    from personalization_assets.core.hash_chain import table_writer_lock

    return table_writer_lock(lake, {"layer": LAYER, "name": checkpoint_table(hlog.name)})


def write_checkpoint(lake: LakeStorage, hlog: HashChainedLog, verified: Verification) -> None:
    """Record a successful verification: the blocks its segments fall in (all of them after a full one), then the
    head. A run killed in between leaves block rows after the head: they are ignored and rewritten."""
    if not verified.status.ok or verified.head is None:
        raise ValueError("only a successful verification is checkpointed")
    now = datetime.now(timezone.utc)
    table = segments_table(hlog.name)
    head = verified.head
    if verified.mode == "full":
        lake.delete(lake.table_dir(LAYER, table))  # blocks of an earlier chain (another log, a rewrite) must not remain
    by_block: dict[str, list[Segment]] = {}
    for s in verified.segments:
        by_block.setdefault(_block(s.first_seq)["block"], []).append(s)
    for block, new in sorted(by_block.items()):
        part = {"block": block}
        keep: list[Segment] = []
        if verified.mode != "full":
            first_new = min(s.first_seq for s in new)
            keep = [s for s in _segment_rows(lake, hlog, int(block) * BLOCK_SEQS, int(block) * BLOCK_SEQS + BLOCK_SEQS - 1)
                    if s.first_seq < first_new]
        rows = keep + new
        lake.write_table(LAYER, table, pa.table({
            "segment": pa.array([s.name for s in rows], pa.string()),
            "fingerprint": pa.array([s.fingerprint for s in rows], pa.string()),
            "first_seq": pa.array([s.first_seq for s in rows], pa.int64()),
            "rows": pa.array([s.rows for s in rows], pa.int64()),
            "head_hash": pa.array([s.head_hash for s in rows], pa.string()),
            "verified_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        }, schema=CHECKPOINT_SCHEMA), part)
    schema = HEAD_SCHEMA.with_metadata({_META + "format": FORMAT, _META + "log": _location(hlog)})
    lake.write_table(LAYER, checkpoint_table(hlog.name), pa.table({
        "segments": [head.segments], "rows": [head.rows], "last_segment": [head.last_segment],
        "last_fingerprint": [head.last_fingerprint], "last_first_seq": [head.last_first_seq], "head_hash": [head.head_hash],
        "tail_after": [head.tail_after], "recheck_after": [head.recheck_after], "verified_at": [now],
    }, schema=schema))


def _chain(hlog: HashChainedLog, segments: list[str], fingerprints: dict[str, str], seq: int, prev: str,
           must_pass: dict[int, str], batch_rows: int) -> tuple[list[Segment], str | None, int | None, int]:
    """Verify `segments` in order from (seq, prev). Returns (verified segments, problem, first bad seq, rows checked).
    `must_pass`: {seq: hash} the chain must hold (checkpointed segment heads)."""
    out: list[Segment] = []
    checked = 0
    for seg in segments:
        first, rows = seq + 1, 0
        for s, prev_hash, stored_hash, payload in hlog._rows_in_storage_order([seg], batch_rows):
            i = seq + 1
            checked += 1
            if s != i:
                return out, f"{'duplicate' if s < i else 'missing'} seq at position {i} (found {s})", i, checked
            if prev_hash != prev:
                return out, f"seq {i}: prev_hash does not match the previous row (row removed or reordered)", i, checked
            if _hash(prev, payload) != stored_hash:
                return out, f"seq {i}: row_hash does not match its contents (row edited)", i, checked
            prev, seq, rows = stored_hash, i, rows + 1
            if i in must_pass and must_pass[i] != prev:
                return out, f"seq {i}: the chain differs from the one verified earlier (rewritten)", i, checked
        out.append(Segment(seg, fingerprints.get(seg, ""), first, rows, prev))
    missing = [s for s in must_pass if s > seq]
    if missing:
        return out, (f"the ledger ends at seq {seq} but seq {max(missing)} was verified earlier: "
                     "rows at the end were removed"), seq + 1, checked
    return out, None, None, checked


def _duplicates(hlog: HashChainedLog, old: list[str], new: list[str], batch_rows: int) -> tuple[int, str, int] | None:
    """(count, an id, its seq) of decision ids of the `new` segments stored twice (among them or in `old`)."""
    key = hlog.unique_key
    cols = ["seq", key]
    parts = [pa.Table.from_batches([b]) for seg in new
             for b in hlog.lake.iter_batches(hlog.layer, hlog.name, {"segment": seg}, batch_rows, columns=cols, missing_ok=True)
             if b.num_rows and key in b.schema.names]
    if not parts:
        return None
    fresh = pa.concat_tables([p.select(cols) for p in parts])
    ids = fresh[key].combine_chunks()
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = fresh.group_by(key).aggregate([("seq", "count"), ("seq", "max")])
        rep = counts.filter(pc.greater(counts["seq_count"], 1))
        return rep.num_rows, rep[key][0].as_py(), int(rep["seq_max"][0].as_py())
    values = pc.unique(ids)
    for seg in old:  # one column of the stored segments: no hashing
        for b in hlog.lake.iter_batches(hlog.layer, hlog.name, {"segment": seg}, batch_rows, columns=[key], missing_ok=True):
            if not b.num_rows or key not in b.schema.names:
                continue
            hit = pc.is_in(values, value_set=b.column(key))
            if pc.any(hit).as_py():
                dup = values.filter(hit)
                first = dup[0].as_py()
                seq = int(pc.min(pc.filter(fresh["seq"], pc.equal(fresh[key], first))).as_py())
                return len(dup), first, seq
    return None


def _new_head(old: Head | None, new: list[Segment], recheck_after: str) -> Head:
    if not new:
        base = old or Head(0, 0, "", "", 0, GENESIS, "", "")
        return Head(base.segments, base.rows, base.last_segment, base.last_fingerprint, base.last_first_seq, base.head_hash,
                    base.tail_after, recheck_after)
    before = (old.segments if old else 0)
    tail_after = new[-2].name if len(new) > 1 else (old.last_segment if old else "")
    last = new[-1]
    return Head(before + len(new), last.first_seq + last.rows - 1, last.name, last.fingerprint, last.first_seq, last.head_hash,
                tail_after, recheck_after)


def _recheck(hlog: HashChainedLog, lake: LakeStorage, head: Head, window: int) -> tuple[str | None, str, int, str | None]:
    """Compare a window of older segments (after `head.recheck_after`, before the newest) with their checkpoint rows.
    Returns (problem: 'missing' | 'rewritten' | 'inserted' | None, detail, segments re-checked, next recheck_after)."""
    after = head.recheck_after or None
    listed = _listed(hlog, after=after, limit=window)
    old = {n: fp for n, fp in listed.items() if _order(n) < _order(head.last_segment)}
    wrapped = len(listed) < window or len(old) < len(listed)
    lo = (_seq_of(after) + 1) if after else 1
    if wrapped:
        hi = head.last_first_seq - 1
    else:
        end = max(old, key=_order)
        if _seq_of(end) is None:
            return "inserted", end, len(old), None
        hi = _seq_of(end)
    expected = {s.name: s for s in _segment_rows(lake, hlog, lo, hi)} if hi >= lo else {}
    for s in expected.values():
        if s.name != f"{s.first_seq:012d}":
            return "inconsistent", s.name, len(old), None
    gone = sorted((n for n in expected if n not in old), key=_order)
    if gone:
        return "missing", ", ".join(gone[:3]), len(old), None
    changed = sorted((n for n in old if n in expected and expected[n].fingerprint != old[n]), key=_order)
    if changed:
        return "rewritten", changed[0], len(old), None
    extra = sorted((n for n in old if n not in expected), key=_order)
    if extra:
        return "inserted", extra[0], len(old), None
    return None, "", len(old), "" if wrapped else max(old, key=_order)


def verify(hlog: HashChainedLog, lake: LakeStorage, full: bool = False, batch_rows: int = 65_536,
           recheck_segments: int | None = None) -> Verification:
    """Verify the log, incrementally from the checkpoint when it can be trusted (see the module doc). On success
    write the returned verification with `write_checkpoint`."""
    window = RECHECK_SEGMENTS if recheck_segments is None else recheck_segments
    if window < 1:
        raise ValueError(f"recheck_segments must be at least 1 (got {window}): every older segment is re-checked in turn")
    head, reason = (None, "full_refresh") if full else read_head(lake, hlog)
    rechecked = 0
    if head is not None:
        tail = _listed(hlog, after=head.tail_after or None) if head.segments else _listed(hlog)
        if head.segments and head.last_segment not in tail:
            return _failed(head, f"segment {head.last_segment} verified earlier is missing (removed from the ledger)",
                           head.last_first_seq, "segment_missing", 0)
        names = sorted(tail, key=_order)
        if head.segments and tail[head.last_segment] != head.last_fingerprint:
            reason = "segment_rewritten"
        elif head.segments and names[0] != head.last_segment:
            reason = "segment_inserted"  # a segment between the one before the newest and the newest
        else:
            problem, detail, rechecked, next_after = _recheck(hlog, lake, head, window) if head.segments > 1 else (None, "", 0, "")
            if problem == "missing":
                return _failed(head, f"segment(s) {detail} verified earlier are missing (removed from the ledger)",
                               _seq_of(detail.split(", ")[0]),
                               "segment_missing", rechecked)
            if problem is not None:
                reason = {"rewritten": "segment_rewritten", "inserted": "segment_inserted"}.get(problem, "checkpoint_inconsistent")
            else:
                new = [n for n in names if n != head.last_segment]
                return _incremental(hlog, head, new, tail, next_after, rechecked, batch_rows)
    return _full(hlog, lake, head if reason in ("segment_rewritten", "segment_inserted") else None, reason, batch_rows)


def _failed(head: Head, problem: str, bad_seq: int | None, reason: str, rechecked: int) -> Verification:
    status = ChainStatus(False, head.rows, head.segments, head.head_hash, problem, bad_seq)
    return Verification(status, "incremental", reason, 0, 0, segments_rechecked=rechecked)


def _incremental(hlog: HashChainedLog, head: Head, new: list[str], listing: dict[str, str], recheck_after: str,
                 rechecked: int, batch_rows: int) -> Verification:
    segs, problem, bad, checked = _chain(hlog, new, listing, head.rows, head.head_hash, {}, batch_rows)
    total = head.rows + sum(s.rows for s in segs)
    if problem is not None:
        return Verification(ChainStatus(False, total, head.segments + len(new), segs[-1].head_hash if segs else head.head_hash,
                                        problem, bad), "incremental", "checkpoint", len(new), checked, segments_rechecked=rechecked)
    status = ChainStatus(True, total, head.segments + len(new), segs[-1].head_hash if segs else head.head_hash)
    if hlog.unique_key and new:
        # the new ids against each other, then against one column of the stored segments (no hashing)
        dup = _duplicates(hlog, [n for n in hlog.segments() if n not in set(new)], new, batch_rows)
        if dup is not None:
            return _duplicate(status, hlog, dup, "incremental", "checkpoint", len(new), checked)
    return Verification(status, "incremental", "checkpoint", len(new), checked, segs, rechecked, _new_head(head, segs, recheck_after))


def _duplicate(status: ChainStatus, hlog: HashChainedLog, dup: tuple[int, str, int], mode: str, reason: str,
               segments: int, checked: int) -> Verification:
    count, value, seq = dup
    return Verification(ChainStatus(False, status.rows, status.segments, status.head_hash,
                                    f"{count} {hlog.unique_key}(s) stored more than once, first repeat at seq {seq} "
                                    f"({hlog.unique_key} {value}): the same record was appended twice", seq),
                        mode, reason, segments, checked)


def _full(hlog: HashChainedLog, lake: LakeStorage, head: Head | None, reason: str, batch_rows: int) -> Verification:
    """The whole chain from the genesis; after a rewrite or an insertion it must still pass through every
    checkpointed (seq, hash) and end no earlier than the checkpoint."""
    listing = segment_fingerprints(hlog)
    names = sorted(listing, key=_order)
    must_pass: dict[int, str] = {}
    if head is not None:
        must_pass = {s.first_seq + s.rows - 1: s.head_hash for s in _segment_rows(lake, hlog, None, head.last_first_seq) if s.rows}
        if head.segments:
            must_pass[head.rows] = head.head_hash
    segs, problem, bad, checked = _chain(hlog, names, listing, 0, GENESIS, must_pass, batch_rows)
    total = sum(s.rows for s in segs)
    if problem is not None:
        stored = sum(hlog.lake.parquet_metadata(hlog.layer, hlog.name, {"segment": s}).num_rows for s in names)
        return Verification(ChainStatus(False, stored, len(names), segs[-1].head_hash if segs else GENESIS, problem, bad),
                            "full", reason, len(names), checked)
    status = ChainStatus(True, total, len(names), segs[-1].head_hash if segs else GENESIS)
    if hlog.unique_key and names:
        dup = hlog._first_duplicate(names, batch_rows)  # every id aggregated (DuckDB, spills)
        if dup is not None:
            return _duplicate(status, hlog, dup, "full", reason, len(names), checked)
    return Verification(status, "full", reason, len(names), checked, segs, len(names), _new_head(None, segs, ""))
