"""Append-only, hash-chained logs in the lake (consent ledger, access audit log, DP budget ledger).

A log is a sequence of immutable segments ``privacy/<log>/segment=<first seq>/data.parquet``. Each row
carries ``seq`` (1, 2, 3 … without gaps), ``prev_hash`` and
``row_hash = sha256(prev_hash | canonical JSON of the row's other fields)``. Appending writes a new
segment and never rewrites an old one. ``verify`` recomputes the chain: an edited, removed, inserted
or reordered row breaks it, and the first broken position is reported.

Concurrent writers (several run pods auditing reads at once) are safe: a segment is named by its first
seq and created with an exclusive create (hard link locally, `If-None-Match: *` on S3), so two writers
racing for the same position cannot overwrite each other; the loser re-reads the head and retries.
"""

from __future__ import annotations

import fcntl
import random
import time
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from personalization_assets.resources.storage import LakeStorage

GENESIS = "0" * 64
CHAIN_FIELDS = ("seq", "prev_hash", "row_hash")


def _canon(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and value != value:
        return None
    return value


def row_hash(prev_hash: str, row: dict) -> str:
    payload = {k: _canon(v) for k, v in sorted(row.items()) if k not in ("prev_hash", "row_hash")}
    data = prev_hash + "|" + json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


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
    lock_dir: str | None = None

    @property
    def layer(self) -> str:
        return "privacy"

    def segments(self) -> list[str]:
        parts = [p.get("segment") for p in self.lake.partitions(self.layer, self.name)]
        return sorted(p for p in parts if p)

    def read_all(self) -> pa.Table:
        tables = [self.lake.read_table(self.layer, self.name, {"segment": s}) for s in self.segments()]
        if not tables:
            return self.schema.empty_table()
        return pa.concat_tables([t.select(self.schema.names).cast(self.schema) for t in tables])

    def head(self) -> tuple[int, str]:
        segs = self.segments()
        if not segs:
            return 0, GENESIS
        last = self.lake.read_table(self.layer, self.name, {"segment": segs[-1]}, columns=["seq", "row_hash"])
        if last.num_rows == 0:
            return 0, GENESIS
        i = int(pa.compute.index(last["seq"], pa.compute.max(last["seq"])).as_py())
        return int(last["seq"][i].as_py()), last["row_hash"][i].as_py()

    @contextmanager
    def _lock(self):
        if self.lock_dir is None or self.lake.is_s3:
            yield
            return
        Path(self.lock_dir).mkdir(parents=True, exist_ok=True)
        with open(os.path.join(self.lock_dir, f"{self.name}.lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def append(self, rows: list[dict], attempts: int = 200) -> tuple[int, str]:
        """Append rows (dicts without chain fields) as one new segment. Returns (rows appended, head hash)."""
        import io

        import pyarrow.parquet as pq

        with self._lock():
            for _ in range(attempts):
                seq, prev = self.head()
                if not rows:
                    return 0, prev
                out = []
                for row in rows:
                    seq += 1
                    r = {**row, "seq": seq, "prev_hash": prev}
                    r["row_hash"] = row_hash(prev, r)
                    prev = r["row_hash"]
                    out.append(r)
                first = out[0]["seq"]
                buf = io.BytesIO()
                pq.write_table(pa.Table.from_pylist(out, schema=self.schema), buf)
                relative = self.lake.data_file(self.layer, self.name, {"segment": f"{first:012d}"})
                if self.lake.create_exclusive(relative, buf.getvalue()):
                    return len(out), prev
                time.sleep(random.uniform(0.001, 0.05))  # lost the race: back off, re-read the head
            raise RuntimeError(f"could not append to {self.layer}/{self.name}: {attempts} concurrent writers won the race")

    def verify(self, expected_head: str | None = None) -> ChainStatus:
        segs = self.segments()
        table = self.read_all()
        rows = table.to_pylist()
        rows.sort(key=lambda r: r["seq"])
        prev = GENESIS
        for i, r in enumerate(rows, start=1):
            if r["seq"] != i:
                kind = "duplicate" if r["seq"] < i else "missing"
                return ChainStatus(False, len(rows), len(segs), prev, f"{kind} seq at position {i} (found {r['seq']})", i)
            if r["prev_hash"] != prev:
                return ChainStatus(False, len(rows), len(segs), prev, f"seq {i}: prev_hash does not match the previous row (row removed or reordered)", i)
            if row_hash(prev, r) != r["row_hash"]:
                return ChainStatus(False, len(rows), len(segs), prev, f"seq {i}: row_hash does not match its contents (row edited)", i)
            prev = r["row_hash"]
        if expected_head is not None and rows and expected_head != prev:
            return ChainStatus(False, len(rows), len(segs), prev, "head hash differs from the one recorded at the last append (chain rewritten)")
        return ChainStatus(True, len(rows), len(segs), prev)
