"""Erasure (GDPR Art. 17) driven by the asset lineage.

The plan is derived from the asset graph, not from a hand-kept list: every asset downstream of a raw
source holding personal data (and the raw sources with their quarantines) is a target. Each target
declares in its metadata how to erase from it (`privacy/erasure`):

* ``{"kind": "raw", "table": ..., "partitioned": bool, "columns": {"user_id": "id", "trait_email": "email"}}``
  raw identifiers are pseudonymized on the fly and compared with the suppression list;
* ``{"kind": "quarantine", "table": ..., "partitioned": bool}`` rows whose original text still holds an
  identifier (value of an identifier key, email-shaped token or CSV field) that, normalized, pseudonymizes into the
  suppression list — exact tokens, never substrings (core/quarantine_match.py);
* ``{"kind": "lake", "layer": ..., "table": ..., "partitioned": bool, "columns": [...]}`` rows where any
  pseudonym column (or list column) holds a suppressed pseudonym; `"also": [{"layer", "table", "partitioned",
  "columns"}]` names further tables the asset keeps for itself (privacy/identity_links' per-hour partials);
  `"writer_lock": {"layer", "name"}`: the lock the table's builder holds for its whole build, which the erasure and
  the key rotation hold while they rewrite the table; `"partition_lock": true`: the builder writes each partition
  under that partition's own lock (concurrent runs write the table), which they hold while they rewrite the partition;
* ``{"kind": "warehouse", "relation": ..., "columns": [...]}`` rows deleted in the warehouse;
* ``{"kind": "none", "reason": ...}`` the asset holds no subject-level data (e.g. aggregates).

Assets listed under `erasure_exempt` in privacy_policies/asset_purposes.yaml are retained as legal
evidence. A target with neither a handler nor an exemption stops the erasure: a new asset cannot
silently escape it. Temporary files of interrupted writes (``_tmp-*``) cannot be searched (a partial
Parquet file has no footer): the run deletes those of dead writers and counts any left as residue. A
partition the run rewrites is read again afterwards; the log records rows removed and the residual count per
asset, and says `verified` only when the residual of every target (quarantine and temp files included) is 0.

Lake targets are verified incrementally (`erase_from_table`, state in privacy/erasure_state.py): a partition
whose listing fingerprint is the one an earlier run verified clean is checked only for identifiers new to the
suppression list (not read when there is none); every other partition against the whole list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.core.asset_keys import RAW_CRM, RAW_EVENTS, RAW_REQUESTS
from personalization_assets.core.pseudonymize import Pseudonymizer, rows_matching_pseudonyms
from personalization_assets.core.quarantine_match import quarantine_match_mask
from personalization_assets.core.storage import LakeStorage, partition_path

ERASURE_META = "privacy/erasure"
PERSONAL_SOURCES = (RAW_EVENTS, RAW_CRM, RAW_REQUESTS)

ERASURE_LOG_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        # the requests this run verified for the first time (new since the last run that verified; '' when none).
        # Rows written before 2026-12-07 list every request in force instead, and have no requests_* values.
        ("request_ids", pa.string()),
        ("requests_in_force", pa.int64()),  # requests in the suppression list this run verified against
        ("requests_digest", pa.string()),  # sha256 of their ids, sorted, one per line (`requests_digest`)
        ("asset", pa.string()),
        ("action", pa.string()),
        ("rows_removed", pa.int64()),
        ("residual_rows", pa.int64()),
        ("verified", pa.bool_()),
        ("erased_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
        ("prev_hash", pa.string()),
        ("row_hash", pa.string()),
    ]
)


class ErasurePlanError(RuntimeError):
    pass


@dataclass
class Target:
    asset: str
    handler: dict


def _meta_value(v):
    return getattr(v, "value", getattr(v, "data", v))


def plan_targets(asset_graph, exempt: tuple[str, ...]) -> tuple[list[Target], list[str]]:
    """Every asset holding subject data, with its handler. Raises if one has no handler."""
    keys = set()
    for src in PERSONAL_SOURCES:
        if asset_graph.has(src):
            keys |= _descendants(asset_graph, src)
            keys.add(src)
    # quarantine siblings of the raw sources (same multi-asset) hold the rejected raw records
    for key in list(asset_graph.get_all_asset_keys()):
        if key.path[0] == "raw":
            keys.add(key)
    targets, retained, missing = [], [], []
    for key in sorted(keys, key=lambda k: k.to_user_string()):
        name = key.to_user_string()
        if name in exempt:
            retained.append(name)
            continue
        node = asset_graph.get(key)
        handler = node.metadata.get(ERASURE_META) if node.metadata else None
        if handler is None:
            missing.append(name)
            continue
        targets.append(Target(name, dict(_meta_value(handler))))
    if missing:
        raise ErasurePlanError(
            f"asset(s) {', '.join(missing)} are downstream of personal data but declare no `{ERASURE_META}` handler "
            "and are not listed under erasure_exempt in privacy_policies/asset_purposes.yaml"
        )
    return targets, retained


def _descendants(asset_graph, key) -> set:
    seen, stack = set(), [key]
    while stack:
        k = stack.pop()
        for child in asset_graph.get(k).child_keys:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


@dataclass
class Subjects:
    """What identifies the subjects being erased: their pseudonyms (the suppression list). Raw values are
    never needed: every lookup pseudonymizes the normalized candidates and compares exactly."""

    pseudonyms: set[str]


def lake_rows_matching(table: pa.Table, columns: list[str], pseudonyms: set[str]) -> pa.Array:
    """Mask of the rows where any of `columns` (a list column: any element) holds one of `pseudonyms`."""
    value_set = pa.array(sorted(pseudonyms), pa.string())
    mask = pa.array([False] * table.num_rows)
    for col in columns:
        if col not in table.column_names:
            continue
        column = table[col]
        if pa.types.is_list(column.type):
            flat = pc.list_flatten(column)
            parents = pc.list_parent_indices(column)
            hit_parents = pc.filter(parents, pc.is_in(flat, value_set=value_set))
            m = pc.is_in(pa.array(range(table.num_rows)), value_set=pc.unique(hit_parents))
        else:
            m = pc.fill_null(pc.is_in(column, value_set=value_set), False)
        mask = pc.or_(mask, m)
    return mask


@dataclass
class TableScan:
    """What the run did to one table of a lake target."""

    removed: int = 0
    residual: int = 0
    full: int = 0  # partitions read and checked against the whole suppression list
    new_ids: int = 0  # unchanged since verified clean: read and checked for identifiers new to the list only
    skipped: int = 0  # unchanged since verified clean, no new identifier: not read
    rewritten: int = 0  # partitions rewritten without the subjects' rows (then read again and verified)
    verified: dict[str, str] = field(default_factory=dict)  # partition -> fingerprint verified clean by the end of this run
    fingerprints: bool = True  # False: the listing gave no fingerprints, every partition was read and nothing recorded

    def add(self, other: "TableScan") -> None:
        for name in ("removed", "residual", "full", "new_ids", "skipped", "rewritten"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.fingerprints = self.fingerprints and other.fingerprints


def lake_tables(target: Target) -> list[dict]:
    """The handler's own table and its `also` tables (same kind), each as a complete handler."""
    h = target.handler
    return [h] + [{"kind": h["kind"], **dict(extra)} for extra in h.get("also", []) or []]


def table_name(h: dict) -> str:
    return f"{h.get('layer', 'raw')}/{h['table']}"


def _mask(lake, con, pz: Pseudonymizer, target: Target, h: dict, table: pa.Table, pseudonyms: set[str]) -> pa.Array:
    kind = h["kind"]
    if kind == "raw":
        return rows_matching_pseudonyms(table, h["columns"], pseudonyms, pz.pseudonymize_values)[0]
    if kind == "quarantine":
        return quarantine_match_mask(con, table, pseudonyms, pz.pseudonymize_values)
    if kind == "lake":
        return lake_rows_matching(table, h["columns"], pseudonyms)
    raise ErasurePlanError(f"{target.asset}: handler kind {kind!r} is not a lake handler")


def _match_columns(h: dict) -> list[str]:
    """The columns a handler's match reads: the identifier columns (raw, lake), or the quarantined record's text."""
    if h["kind"] == "quarantine":
        return ["original_text"]
    return list(dict.fromkeys(h["columns"]))  # a column named twice is read once


def _read_for_match(lake: LakeStorage, layer: str, name: str, part: dict | None, h: dict) -> pa.Table:
    """Only the columns the match reads (the footer says which exist): the check of a partition reads its identifier
    columns, not the whole row; a partition that holds a subject is read whole to be rewritten."""
    present = set(lake.schema(layer, name, part).names)
    return lake.read_table(layer, name, part, columns=[c for c in _match_columns(h) if c in present])


def _count(mask: pa.Array) -> int:
    return pc.sum(pc.cast(mask, pa.int64())).as_py() or 0


def _listing(lake: LakeStorage, layer: str, table: str, partitioned: bool) -> tuple[dict[str, str | None], bool]:
    """({partition path: fingerprint or None}, fingerprints obtained). Without fingerprints (a listing error), every
    partition present is returned with None: it is read and checked against the whole list, and not recorded."""
    try:
        fps: dict[str, str | None] = dict(lake.partition_fingerprints(layer, table))
        ok = True
    except Exception:  # noqa: BLE001 - no fingerprint: fall back to the full scan of this table
        fps = {partition_path(p): None for p in lake.partitions(layer, table)} if partitioned else (
            {"": None} if lake.exists(layer, table) else {})
        ok = False
    if not partitioned:
        fps = {"": fps[""]} if "" in fps else {}
    return fps, ok


def erase_from_table(lake: LakeStorage, con, pz: Pseudonymizer, target: Target, h: dict, pseudonyms: set[str],
                     new_pseudonyms: set[str], known: dict[str, str] | None) -> TableScan:
    """Remove every row of a suppressed subject from one lake table and verify it, reading only what can hold one.

    `known`: {partition: fingerprint} this table was verified clean at against every identifier except
    `new_pseudonyms` (None: nothing is known, every partition is checked against the whole list). A partition with
    the same fingerprint now is checked for `new_pseudonyms` only (not read when there is none); any other one
    against `pseudonyms`. A partition the run rewrites is listed and read again afterwards and counted as residual
    unless it then holds none of `pseudonyms`. `TableScan.verified` is what a later run may rely on."""
    layer, name, partitioned = h.get("layer", "raw"), h["table"], bool(h.get("partitioned"))
    scan = TableScan()
    listing, scan.fingerprints = _listing(lake, layer, name, partitioned)
    rewritten = []
    for path in sorted(listing):
        fp = listing[path]
        unchanged = known is not None and fp is not None and known.get(path) == fp
        ids = new_pseudonyms if unchanged else pseudonyms
        if not ids:  # verified clean earlier and nothing new to look for (or an empty list): nothing to read
            scan.skipped += 1
            if fp is not None:
                scan.verified[path] = fp
            continue
        if unchanged:
            scan.new_ids += 1
        else:
            scan.full += 1
        part = partition_of(path) or None
        table = _read_for_match(lake, layer, name, part, h)
        n = _count(_mask(lake, con, pz, target, h, table, ids)) if table.num_rows else 0
        if n:
            # read and rewritten under the partition's writer lock when its builder writes it under that lock (hours
            # written by concurrent runs): a write between this read and this write would be lost
            with partition_lock(lake, h, part):
                if not lake.exists(layer, name, part):
                    continue  # deleted since the check (retention, a rebuild that dropped the hour): holds nothing
                table = lake.read_table(layer, name, part)  # the whole rows, to rewrite the partition without the subjects'
                mask = _mask(lake, con, pz, target, h, table, ids)
                n = _count(mask)
                lake.write_table(layer, name, table.filter(pc.invert(mask)), partition=part)
            scan.removed += n
            rewritten.append(path)
        elif fp is not None:
            scan.verified[path] = fp  # fingerprint listed before the read: a later rewrite is verified again
    if rewritten:  # verify what was rewritten against the whole list: fingerprint first, then read
        after, _ = _listing(lake, layer, name, partitioned)
        scan.rewritten = len(rewritten)
        for path in rewritten:
            part = partition_of(path) or None
            if path not in after:
                continue  # deleted meanwhile: holds nothing
            table = _read_for_match(lake, layer, name, part, h)
            r = _count(_mask(lake, con, pz, target, h, table, pseudonyms)) if table.num_rows else 0
            scan.residual += r
            if r == 0 and after[path] is not None:
                scan.verified[path] = after[path]
    return scan


def partition_lock(lake: LakeStorage, h: dict, partition: dict | None):
    """The writer lock of one partition of the handler's table when its builder declares one (`partition_lock`: it
    writes each partition under that lock, `hash_chain.partition_writer_lock`), else a no-op."""
    from contextlib import nullcontext

    from personalization_assets.core.hash_chain import partition_writer_lock

    if not h.get("partition_lock"):
        return nullcontext()
    return partition_writer_lock(lake, h.get("layer", "raw"), h["table"], partition, lock_timeout=PARTITION_LOCK_TIMEOUT)


# a builder holds a partition's writer lock for one partition's write: seconds, not a build
PARTITION_LOCK_TIMEOUT = 900.0


def partition_of(path: str) -> dict[str, str]:
    """'date=D/hour=H' -> {'date': D, 'hour': H}; '' -> {}."""
    return dict(p.split("=", 1) for p in path.split("/") if "=" in p)


def order_targets(targets: list[Target]) -> list[Target]:
    """Raw tables and quarantines first (the sources everything else is rebuilt from), then the rest."""
    rank = {"raw": 0, "quarantine": 1, "lake": 2, "warehouse": 3, "none": 4}
    return sorted(targets, key=lambda t: (rank.get(t.handler["kind"], 9), t.asset))
