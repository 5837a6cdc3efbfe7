"""What the erasure run last verified clean, so that a run reads only what could hold an erased subject.

One plain lake table, `privacy/erasure_state`, replaced whole (one object) by each erasure run AFTER it appended
its log rows. Its rows have a `record` kind:

* ``partition``: one per partition file of a lake target (handler tables and their `also` tables) that the run
  verified clean: the target asset, the table (`layer/table`), the partition path ('' for an unpartitioned table)
  and the fingerprint its file had when it was read (`LakeStorage.partition_fingerprints`: size + mtime + inode
  locally, size + ETag on S3 — from the listing, no data read). The fingerprint is taken BEFORE the read: a file
  rewritten while (or after) it was read has another fingerprint next run and is verified again.
* ``identifier``: sha256 of each suppression identifier every recorded partition was verified against (the
  suppression list at the start of the run). Digests, not the pseudonyms: this table is no second copy of the list.
* ``request``: sha256 of each request id a run has verified (its check passed): the erasure log lists a request
  in the run that first verifies it, not in every run after (a state written before this record existed, or one
  ignored for another key version or plan, has none: that run lists every request again).

Schema metadata holds what a verification depends on besides the data: the state format, the active pseudonym key
version (a raw target is matched by pseudonymizing its values with it; a rotation re-keys the lake) and a digest of
the erasure plan (targets and their handlers). Any of them different -> the state is ignored and the run is a full
scan, as is a missing or unreadable state.

A run then checks:
* a partition whose fingerprint equals the recorded one: only for identifiers NEW to the suppression list (not in
  the recorded digests); not read at all when there is none;
* any other partition (new, rewritten by another step, or never verified clean): against the whole list.
Partitions gone from the listing (retention, a rebuild) simply leave the state.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from personalization_assets.core.storage import LakeStorage

log = logging.getLogger(__name__)

LAYER, TABLE = "privacy", "erasure_state"
FORMAT = "1"
_META = "personalization."
STATE_SCHEMA = pa.schema([
    ("record", pa.string()),  # partition | identifier
    ("asset", pa.string()),
    ("table", pa.string()),  # layer/table
    ("partition", pa.string()),  # 'date=D/hour=H', '' when unpartitioned
    ("value", pa.string()),  # the partition's fingerprint, or an identifier's sha256
    ("verified_at", pa.timestamp("us", tz="UTC")),
])


def identifier_digest(identifier: str) -> str:
    return hashlib.sha256(identifier.encode()).hexdigest()


def plan_digest(targets) -> str:
    """Digest of the erasure plan: which assets are targets and how each is erased."""
    text = json.dumps([[t.asset, t.handler] for t in targets], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ErasureState:
    verified: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (asset, layer/table) -> {partition: fp}
    identifiers: set[str] = field(default_factory=set)  # digests
    requests: set[str] = field(default_factory=set)  # digests of the request ids verified by an earlier run

    def known(self, asset: str, table: str) -> dict[str, str]:
        return self.verified.get((asset, table), {})


def read_state(lake: LakeStorage, settings: dict[str, str]) -> tuple[ErasureState | None, str]:
    """(state, why): the recorded state, or None with the reason the run must scan everything."""
    if not lake.exists(LAYER, TABLE):
        return None, "missing"
    try:
        t = lake.read_table(LAYER, TABLE)
        meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items() if k.decode().startswith(_META)}
        recorded = {k[len(_META):]: v for k, v in meta.items()}
        missing = [c for c in STATE_SCHEMA.names if c not in t.column_names]
        if missing:
            raise ValueError(f"columns {missing} missing")
    except Exception as exc:  # unreadable: never trust it, scan everything (and replace it at the end)
        log.warning("privacy/erasure_state is unreadable (%s): the erasure run scans every partition", exc)
        return None, "unreadable"
    for name, want in settings.items():
        if recorded.get(name) != want:
            return None, f"{name}_changed"
    state = ErasureState()
    rows = t.select(["record", "asset", "table", "partition", "value"]).to_pylist()
    for r in rows:
        if r["record"] == "partition" and r["value"]:
            state.verified.setdefault((r["asset"], r["table"]), {})[r["partition"] or ""] = r["value"]
        elif r["record"] == "identifier" and r["value"]:
            state.identifiers.add(r["value"])
        elif r["record"] == "request" and r["value"]:
            state.requests.add(r["value"])
    return state, "used"


def write_state(lake: LakeStorage, verified: dict[tuple[str, str], dict[str, str]], identifiers: set[str],
                settings: dict[str, str], requests: set[str] = frozenset()) -> int:
    """Replace the state (one object). Call only after the run's log rows are appended. `requests`: digests
    (`identifier_digest`) of the request ids verified so far. Returns the row count."""
    now = datetime.now(timezone.utc)
    rows = [{"record": "partition", "asset": a, "table": tb, "partition": p, "value": fp, "verified_at": now}
            for (a, tb), parts in sorted(verified.items()) for p, fp in sorted(parts.items())]
    rows += [{"record": "identifier", "asset": None, "table": None, "partition": None, "value": d, "verified_at": now}
             for d in sorted(identifier_digest(i) for i in identifiers)]
    rows += [{"record": "request", "asset": None, "table": None, "partition": None, "value": d, "verified_at": now}
             for d in sorted(requests)]
    schema = STATE_SCHEMA.with_metadata({f"{_META}{k}": str(v) for k, v in settings.items()})
    lake.write_table(LAYER, TABLE, pa.Table.from_pylist(rows, schema=schema))
    return len(rows)
