"""A verified checkpoint of a hash-chained log (the consent ledger, the access audit log), so that a run re-verifies
only the segments appended since.

`HashChainedLog.verify` recomputes the whole chain (a sha256 per row, in Python): its cost grows with the history.
The checkpoint, one small lake table `privacy/<log>_checkpoint` (e.g. `privacy/consent_ledger_checkpoint`) replaced
whole after each successful verification, records per verified segment: its name, its listing fingerprint (locally size + mtime + ctime + inode —
a rewrite, even one that restores the mtime, changes the ctime; on S3 size + ETag), its first seq, its row count and
the chain hash after its last row. It holds no pseudonym (hashes and counts only).

A run lists the segments (metadata only) and then:

* checkpoint missing, unreadable, of another format or of another log location, or `full=True`: full verification;
* a checkpointed segment MISSING from the listing: fails (the ledger is never pruned: a segment gone is a removed
  piece of the evidence; removing the newest segment leaves a valid shorter chain, which only the checkpoint reveals);
* a checkpointed segment whose fingerprint changed, or a new segment sorting before the last checkpointed one
  (inserted): full verification, and the chain must still pass through every checkpointed (seq, hash);
* otherwise: only the segments after the checkpoint are verified, starting from its head (seq, hash), and their
  decision ids are checked against each other and against the stored ids (one column read, no hashing).

Tamper evidence therefore holds as before: an edited, removed, inserted or reordered row in an old segment rewrites
that segment (new fingerprint -> full verification -> fails); a removed segment fails; an appended forged segment is
verified like any new one. The checkpoint lives in the lake, not in the (possibly write-once) log store; someone
able to rewrite both a segment and the checkpoint consistently could hide an edit from incremental runs until the
next full verification (`full_refresh`, or a missing/unreadable checkpoint), which recomputes everything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.core.hash_chain import GENESIS, ChainStatus, HashChainedLog, _hash
from personalization_assets.core.storage import LakeStorage

log = logging.getLogger(__name__)

LAYER = "privacy"
FORMAT = "1"
_META = "personalization."
CHECKPOINT_SCHEMA = pa.schema([
    ("segment", pa.string()),
    ("fingerprint", pa.string()),
    ("first_seq", pa.int64()),
    ("rows", pa.int64()),
    ("head_hash", pa.string()),  # chain hash after the segment's last row
    ("verified_at", pa.timestamp("us", tz="UTC")),
])


def checkpoint_table(log_name: str) -> str:
    return f"{log_name}_checkpoint"


@dataclass(frozen=True)
class Segment:
    name: str
    fingerprint: str
    first_seq: int
    rows: int
    head_hash: str


@dataclass
class Verification:
    status: ChainStatus
    mode: str  # incremental | full
    reason: str  # why full (or 'checkpoint' when incremental)
    segments_verified: int
    rows_verified: int
    segments: list[Segment] = field(default_factory=list)  # every segment, verified, in order (when ok)

    def metadata(self) -> dict:
        return {"verify_mode": self.mode, "verify_reason": self.reason, "segments_verified": self.segments_verified,
                "rows_verified": self.rows_verified}


def segment_fingerprints(hlog: HashChainedLog) -> dict[str, str]:
    """{segment: fingerprint} from the listing (no data read): the lake API's fingerprint, which locally includes
    the ctime (a rewrite that puts the old size and mtime back still changes it) and on S3 the ETag."""
    out = {}
    for path, fp in hlog.lake.partition_fingerprints(hlog.layer, hlog.name, strict=True).items():
        seg = dict(p.split("=", 1) for p in path.split("/") if "=" in p).get("segment")
        if seg:
            out[seg] = fp
    return out


def _location(hlog: HashChainedLog) -> str:
    return hlog.lake.uri(hlog.lake.table_dir(hlog.layer, hlog.name))


def read_checkpoint(lake: LakeStorage, hlog: HashChainedLog) -> tuple[list[Segment] | None, str]:
    table = checkpoint_table(hlog.name)
    if not lake.exists(LAYER, table):
        return None, "checkpoint_missing"
    try:
        t = lake.read_table(LAYER, table)
        meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
        t = t.select(CHECKPOINT_SCHEMA.names).cast(CHECKPOINT_SCHEMA)
    except Exception as exc:  # noqa: BLE001 - unreadable: never trusted, everything is verified again
        log.warning("%s/%s is unreadable (%s): the ledger is verified in full", LAYER, table, exc)
        return None, "checkpoint_unreadable"
    if meta.get(_META + "format") != FORMAT:
        return None, "checkpoint_format_changed"
    if meta.get(_META + "log") != _location(hlog):
        return None, "checkpoint_of_another_log"
    segs = [Segment(r["segment"], r["fingerprint"], int(r["first_seq"]), int(r["rows"]), r["head_hash"]) for r in t.to_pylist()]
    segs.sort(key=lambda s: s.name)
    expected = 1
    for s in segs:  # an internally inconsistent checkpoint is not trusted
        if s.first_seq != expected or s.rows < 0:
            return None, "checkpoint_inconsistent"
        expected += s.rows
    return segs, "checkpoint"


def write_checkpoint(lake: LakeStorage, hlog: HashChainedLog, segments: list[Segment]) -> None:
    now = datetime.now(timezone.utc)
    schema = CHECKPOINT_SCHEMA.with_metadata({_META + "format": FORMAT, _META + "log": _location(hlog)})
    table = pa.table({
        "segment": pa.array([s.name for s in segments], pa.string()),
        "fingerprint": pa.array([s.fingerprint for s in segments], pa.string()),
        "first_seq": pa.array([s.first_seq for s in segments], pa.int64()),
        "rows": pa.array([s.rows for s in segments], pa.int64()),
        "head_hash": pa.array([s.head_hash for s in segments], pa.string()),
        "verified_at": pa.array([now] * len(segments), pa.timestamp("us", tz="UTC")),
    }, schema=schema)
    lake.write_table(LAYER, checkpoint_table(hlog.name), table)


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


def verify(hlog: HashChainedLog, lake: LakeStorage, full: bool = False, batch_rows: int = 65_536) -> Verification:
    """Verify the log, incrementally from the checkpoint when it can be trusted (see the module doc). On success the
    returned `segments` describe the whole log (write them with `write_checkpoint`)."""
    listing = segment_fingerprints(hlog)
    names = sorted(listing)
    ckpt, reason = (None, "full_refresh") if full else read_checkpoint(lake, hlog)
    start = (0, GENESIS)
    covered: list[Segment] = []
    must_pass: dict[int, str] = {}
    if ckpt is not None:
        gone = [s.name for s in ckpt if s.name not in listing]
        if gone:
            rows = sum(s.rows for s in ckpt)
            status = ChainStatus(False, rows, len(names), ckpt[-1].head_hash if ckpt else GENESIS,
                                 f"segment(s) {', '.join(gone[:3])} verified earlier are missing (removed from the ledger)",
                                 next(s.first_seq for s in ckpt if s.name in gone))
            return Verification(status, "incremental", "segment_missing", 0, 0)
        must_pass = {s.first_seq + s.rows - 1: s.head_hash for s in ckpt if s.rows}
        changed = [s.name for s in ckpt if listing[s.name] != s.fingerprint]
        prefix = names[:len(ckpt)] == [s.name for s in ckpt]
        if changed:
            reason = "segment_rewritten"
        elif not prefix:
            reason = "segment_inserted"
        else:
            covered = ckpt
            last = ckpt[-1] if ckpt else None
            start = (last.first_seq + last.rows - 1, last.head_hash) if last else (0, GENESIS)
    to_verify = names[len(covered):]
    segs, problem, bad, checked = _chain(hlog, to_verify, listing, start[0], start[1], must_pass, batch_rows)
    mode = "incremental" if covered else "full"
    total = start[0] + sum(s.rows for s in segs)
    if problem is not None:
        stored = sum(hlog.lake.parquet_metadata(hlog.layer, hlog.name, {"segment": s}).num_rows for s in names)
        return Verification(ChainStatus(False, stored, len(names), segs[-1].head_hash if segs else start[1], problem, bad),
                            mode, reason, len(to_verify), checked)
    head = segs[-1].head_hash if segs else start[1]
    if hlog.unique_key and to_verify:
        # a full verification aggregates every id (DuckDB, spills); an incremental one checks the new ids only
        dup = (_duplicates(hlog, [s.name for s in covered], to_verify, batch_rows) if covered
               else hlog._first_duplicate(to_verify, batch_rows))
        if dup is not None:
            count, value, seq = dup
            return Verification(ChainStatus(False, total, len(names), head,
                                            f"{count} {hlog.unique_key}(s) stored more than once, first repeat at seq {seq} "
                                            f"({hlog.unique_key} {value}): the same record was appended twice", seq),
                                mode, reason, len(to_verify), checked)
    return Verification(ChainStatus(True, total, len(names), head), mode, reason, len(to_verify), checked, covered + segs)
