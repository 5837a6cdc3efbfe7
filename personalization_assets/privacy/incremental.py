"""What an incremental privacy step last consumed of an hourly partitioned raw table.

`raw/events` is one Parquet object per landing hour, and raw ingestion rewrites an hour whenever it changes (a
late or replaced landing object, an erasure deleting rows); retention deletes whole hours. A step that folds raw
hours forward (privacy/identity_links, privacy/consent_ledger) keeps, next to its output, a plain lake table
`privacy/<step>_consumed`: one row per raw hour with the fingerprint the hour's file had when the step consumed
it (`LakeStorage.partition_fingerprints`: size + mtime locally, size + ETag on S3 — from the listing, no data
read), plus the step's own settings that the consumed result depends on (key version, policy version) in the
table's schema metadata.

A run lists the fingerprints FIRST, then reads the hours whose fingerprint differs from the record (or that are
new), and rewrites the record only AFTER its output is written. An hour rewritten while the run reads it is
recorded with its older fingerprint and therefore read again next run; a run killed before the record is
rewritten re-processes those hours. Either way an hour is re-processed, never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from personalization_assets.core.storage import LakeStorage

LAYER = "privacy"
CONSUMED_SCHEMA = pa.schema([("partition", pa.string()), ("fingerprint", pa.string()), ("consumed_at", pa.timestamp("us", tz="UTC"))])
_META_PREFIX = "personalization."


@dataclass
class Consumed:
    fingerprints: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)


def consumed_table(step: str) -> str:
    return f"{step}_consumed"


def read_consumed(lake: LakeStorage, step: str) -> Consumed | None:
    """What `step` last consumed, or None when it never recorded anything (the next run is a full one)."""
    table = consumed_table(step)
    if not lake.exists(LAYER, table):
        return None
    t = lake.read_table(LAYER, table)
    meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    settings = {k[len(_META_PREFIX):]: v for k, v in meta.items() if k.startswith(_META_PREFIX)}
    return Consumed(dict(zip(t["partition"].to_pylist(), t["fingerprint"].to_pylist())), settings)


def write_consumed(lake: LakeStorage, step: str, fingerprints: dict[str, str], settings: dict[str, str]) -> None:
    """Replace the record atomically (one object). Call only after the step's output is written."""
    now = datetime.now(timezone.utc)
    keys = sorted(fingerprints)
    schema = CONSUMED_SCHEMA.with_metadata({f"{_META_PREFIX}{k}": str(v) for k, v in settings.items()})
    table = pa.table({"partition": pa.array(keys, pa.string()), "fingerprint": pa.array([fingerprints[k] for k in keys], pa.string()),
                      "consumed_at": pa.array([now] * len(keys), pa.timestamp("us", tz="UTC"))}, schema=schema)
    lake.write_table(LAYER, consumed_table(step), table)


def changed_partitions(current: dict[str, str], consumed: Consumed | None, full: bool) -> list[str]:
    """Partition paths to (re)process: all of them on a full run, else those new or with another fingerprint."""
    if full or consumed is None:
        return sorted(current)
    return sorted(p for p, fp in current.items() if consumed.fingerprints.get(p) != fp)


def partition_of(path: str) -> dict[str, str]:
    """'date=D/hour=H' -> {'date': D, 'hour': H}."""
    return dict(p.split("=", 1) for p in path.split("/") if "=" in p)


def row_batches(lake: LakeStorage, layer: str, table: str, paths: list[str], max_rows: int):
    """Group partition paths into batches of at most ~max_rows rows (Parquet footers, no data read)."""
    batch, rows = [], 0
    for path in paths:
        n = lake.parquet_metadata(layer, table, partition_of(path)).num_rows
        if batch and rows + n > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(path)
        rows += n
    if batch:
        yield batch
