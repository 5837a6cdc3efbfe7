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
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from personalization_assets.resources.storage import LakeStorage

GENESIS = "0" * 64
CHAIN_FIELDS = ("seq", "prev_hash", "row_hash")


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
                first = seq + 1
                out = [{**row, "seq": first + i, "prev_hash": "", "row_hash": ""} for i, row in enumerate(rows)]
                table = pa.Table.from_pylist(out, schema=self.schema)
                prevs, hashes = [], []
                for payload in canonical_payloads(table):
                    prevs.append(prev)
                    prev = _hash(prev, payload)
                    hashes.append(prev)
                table = table.set_column(table.schema.get_field_index("prev_hash"), "prev_hash", pa.array(prevs, pa.string()))
                table = table.set_column(table.schema.get_field_index("row_hash"), "row_hash", pa.array(hashes, pa.string()))
                buf = io.BytesIO()
                pq.write_table(table, buf)
                relative = self.lake.data_file(self.layer, self.name, {"segment": f"{first:012d}"})
                if self.lake.create_exclusive(relative, buf.getvalue()):
                    return len(out), prev
                time.sleep(random.uniform(0.001, 0.05))  # lost the race: back off, re-read the head
            raise RuntimeError(f"could not append to {self.layer}/{self.name}: {attempts} concurrent writers won the race")

    def verify(self, expected_head: str | None = None) -> ChainStatus:
        segs = self.segments()
        table = self.read_all()
        if table.num_rows:
            table = table.sort_by([("seq", "ascending")])
        seqs = table["seq"].to_pylist()
        prev_hashes = table["prev_hash"].to_pylist()
        row_hashes = table["row_hash"].to_pylist()
        payloads = canonical_payloads(table)
        n = len(seqs)
        prev = GENESIS
        for i in range(1, n + 1):
            seq = seqs[i - 1]
            if seq != i:
                kind = "duplicate" if seq < i else "missing"
                return ChainStatus(False, n, len(segs), prev, f"{kind} seq at position {i} (found {seq})", i)
            if prev_hashes[i - 1] != prev:
                return ChainStatus(False, n, len(segs), prev, f"seq {i}: prev_hash does not match the previous row (row removed or reordered)", i)
            if _hash(prev, payloads[i - 1]) != row_hashes[i - 1]:
                return ChainStatus(False, n, len(segs), prev, f"seq {i}: row_hash does not match its contents (row edited)", i)
            prev = row_hashes[i - 1]
        if expected_head is not None and n and expected_head != prev:
            return ChainStatus(False, n, len(segs), prev, "head hash differs from the one recorded at the last append (chain rewritten)")
        return ChainStatus(True, n, len(segs), prev)
