"""Erasure (GDPR Art. 17) driven by the asset lineage.

The plan is derived from the asset graph, not from a hand-kept list: every asset downstream of a raw
source holding personal data (and the raw sources with their quarantines) is a target. Each target
declares in its metadata how to erase from it (`privacy/erasure`):

* ``{"kind": "raw", "table": ..., "partitioned": bool, "columns": {"user_id": "id", "trait_email": "email"}}``
  raw identifiers are pseudonymized on the fly and compared with the suppression list;
* ``{"kind": "quarantine", "table": ..., "partitioned": bool}`` rows whose original text still holds an
  identifier (value of an identifier key, email-shaped token or CSV field) that, normalized, pseudonymizes into the
  suppression list — exact tokens, never substrings (privacy/quarantine_match.py);
* ``{"kind": "lake", "layer": ..., "table": ..., "partitioned": bool, "columns": [...]}`` rows where any
  pseudonym column (or list column) holds a suppressed pseudonym; `"also": [{"layer", "table", "partitioned",
  "columns"}]` names further tables the asset keeps for itself (privacy/identity_links' per-hour partials);
* ``{"kind": "warehouse", "relation": ..., "columns": [...]}`` rows deleted in the warehouse;
* ``{"kind": "none", "reason": ...}`` the asset holds no subject-level data (e.g. aggregates).

Assets listed under `erasure_exempt` in privacy_policies/asset_purposes.yaml are retained as legal
evidence. A target with neither a handler nor an exemption stops the erasure: a new asset cannot
silently escape it. Temporary files of interrupted writes (``_tmp-*``) cannot be searched (a partial
Parquet file has no footer): the run deletes those of dead writers and counts any left as residue. After
applying, every target is scanned again; the log records rows removed and the residual count per asset,
and says `verified` only when the residual scan of every target (quarantine and temp files included) is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.core.pseudonymize import Pseudonymizer, rows_matching_pseudonyms
from personalization_assets.core.quarantine_match import quarantine_match_mask
from personalization_assets.core.storage import LakeStorage

ERASURE_META = "privacy/erasure"
PERSONAL_SOURCES = (dg.AssetKey(["raw", "events"]), dg.AssetKey(["raw", "crm_profiles"]), dg.AssetKey(["raw", "privacy_requests"]))

ERASURE_LOG_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("request_ids", pa.string()),
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


def _partitions(lake: LakeStorage, layer: str, table: str, partitioned: bool):
    if partitioned:
        return lake.partitions(layer, table)
    return [None] if lake.exists(layer, table) else []


def _lake_match(table: pa.Table, columns: list[str], pseudonyms: set[str]) -> pa.Array:
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


def erase_from_lake_target(lake: LakeStorage, con, pz: Pseudonymizer, target: Target, subjects: Subjects, apply: bool) -> int:
    """Remove (apply=True) or count (apply=False) matching rows in a lake target. Returns the row count.
    A handler's `also` lists further tables the asset keeps (same kind; e.g. identity_links' per-hour partials)."""
    total = _erase_from_table(lake, con, pz, target, target.handler, subjects, apply)
    for extra in target.handler.get("also", []) or []:
        total += _erase_from_table(lake, con, pz, target, {"kind": target.handler["kind"], **dict(extra)}, subjects, apply)
    return total


def _erase_from_table(lake: LakeStorage, con, pz: Pseudonymizer, target: Target, h: dict, subjects: Subjects, apply: bool) -> int:
    kind = h["kind"]
    layer = h.get("layer", "raw")
    table_name = h["table"]
    total = 0
    for part in _partitions(lake, layer, table_name, bool(h.get("partitioned"))):
        table = lake.read_table(layer, table_name, part or None)
        if table.num_rows == 0:
            continue
        if kind == "raw":
            mask, _ = rows_matching_pseudonyms(table, h["columns"], subjects.pseudonyms, pz.pseudonymize_values)
        elif kind == "quarantine":
            mask = quarantine_match_mask(con, table, subjects.pseudonyms, pz.pseudonymize_values)
        elif kind == "lake":
            mask = _lake_match(table, h["columns"], subjects.pseudonyms)
        else:
            raise ErasurePlanError(f"{target.asset}: handler kind {kind!r} is not a lake handler")
        n = pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
        if n and apply:
            lake.write_table(layer, table_name, table.filter(pc.invert(mask)), partition=part or None)
        total += n
    return total


def order_targets(targets: list[Target]) -> list[Target]:
    """Raw tables and quarantines first (the sources everything else is rebuilt from), then the rest."""
    rank = {"raw": 0, "quarantine": 1, "lake": 2, "warehouse": 3, "none": 4}
    return sorted(targets, key=lambda t: (rank.get(t.handler["kind"], 9), t.asset))
