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

    def _read_segment(self, segment: str, schema: pa.Schema) -> pa.Table:
        part = {"segment": segment}
        try:
            return self.lake.read_table(self.layer, self.name, part, columns=schema.names).select(schema.names).cast(schema)
        except pa.ArrowInvalid:
            # a segment written before a column was added to the log (immutable: it keeps its columns); the
            # missing column reads as null, and `verify` hashes the segment's own columns
            stored = set(self.lake.parquet_metadata(self.layer, self.name, part).schema.names)
            if not any(n in stored for n in schema.names):
                raise
            t = self.lake.read_table(self.layer, self.name, part, columns=[n for n in schema.names if n in stored])
            cols = [t[f.name].cast(f.type) if f.name in stored else pa.nulls(t.num_rows, f.type) for f in schema]
            return pa.table(cols, schema=schema)

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

    def append(self, rows: list[dict] | pa.Table, attempts: int = 200) -> tuple[int, str]:
        """Append rows (dicts or a table, without the chain fields) as one new segment. Returns (rows appended, head hash)."""
        import io

        import pyarrow.parquet as pq

        with self._lock():
            for _ in range(attempts):
                seq, prev = self.head()
                n = rows.num_rows if isinstance(rows, pa.Table) else len(rows)
                if not n:
                    return 0, prev
                first = seq + 1
                table = self._with_chain_columns(rows, first)
                prevs, hashes = [], []
                for off in range(0, table.num_rows, 65_536):  # payloads a slice at a time: memory bounded by the slice
                    for payload in canonical_payloads(table.slice(off, 65_536)):
                        prevs.append(prev)
                        prev = _hash(prev, payload)
                        hashes.append(prev)
                table = table.set_column(table.schema.get_field_index("prev_hash"), "prev_hash", pa.array(prevs, pa.string()))
                table = table.set_column(table.schema.get_field_index("row_hash"), "row_hash", pa.array(hashes, pa.string()))
                buf = io.BytesIO()
                pq.write_table(table, buf)
                relative = self.lake.data_file(self.layer, self.name, {"segment": f"{first:012d}"})
                if self.lake.create_exclusive(relative, buf.getvalue()):
                    return n, prev
                time.sleep(random.uniform(0.001, 0.05))  # lost the race: back off, re-read the head
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
            for batch in self.lake.iter_batches(self.layer, self.name, {"segment": segment}, batch_rows, columns=self.schema.names):
                chunk = pa.Table.from_batches([batch])  # a segment's own columns: older segments may lack newer ones
                chunk = chunk.cast(pa.schema([self.schema.field(n) for n in chunk.column_names]))
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
        return ChainStatus(True, n, len(segs), prev)
