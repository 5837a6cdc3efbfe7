"""Quarantine rows: every rejected record with its reason and its exact original bytes (raw ingestion, step 5)."""

from __future__ import annotations

import pyarrow as pa

from personalization_assets.core.schemas import arrow_schema
from personalization_assets.core.tracking_plan import Quarantine
from personalization_assets.raw.landing_files import (
    MAX_QUARANTINE_BYTES,
    LandedFile,
    Reject,
)

QUARANTINE_SCHEMA = arrow_schema(Quarantine)  # generated from the pandera model (core/schemas.py)


def build_quarantine(source: str, rows: list[tuple[str, Reject]], files: dict[str, LandedFile] | None = None, originals: dict | None = None) -> pa.Table:
    """Quarantine rows with the exact original bytes of each rejected record."""
    cols = {n: [] for n in QUARANTINE_SCHEMA.names}
    for path, r in sorted(rows, key=lambda x: (x[0], x[1].line_no)):
        original: bytes | None = None
        if originals is not None and (path, r.line_no) in originals:
            original = originals[(path, r.line_no)]
        elif files is not None and path in files:
            f = files[path]
            if r.line_no >= 1:
                original = f.line_bytes(r.line_no)
            else:
                original = f.data[:MAX_QUARANTINE_BYTES]
        cols["source"].append(source)
        cols["source_file"].append(path)
        cols["line_no"].append(r.line_no)
        cols["reason"].append(r.reason)
        cols["detail"].append(r.detail)
        cols["original_bytes"].append(original)
        cols["original_text"].append(None if original is None else original.decode("utf-8", "backslashreplace"))
    return pa.table(cols, schema=QUARANTINE_SCHEMA)
