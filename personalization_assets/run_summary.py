"""Per-layer summary of a run: files read, rows written, rows quarantined (top reasons), checks.

Layers are the asset groups. Every asset reports `rows_written` (and, where it reads files,
`files_read`, `records_read`, `quarantined`, `quarantine_by_reason`) in its materialization metadata;
this module only aggregates what the assets reported.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import dagster as dg

LAYER_ORDER = ["raw", "privacy", "consented", "features", "warehouse", "segments", "exports"]


@dataclass
class LayerSummary:
    layer: str
    assets: set = field(default_factory=set)
    files_read: int = 0
    rows_written: int = 0
    quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)
    checks_passed: int = 0
    checks_failed: list = field(default_factory=list)


def _value(md, key):
    v = md.get(key)
    return None if v is None else getattr(v, "value", v)


def summarize(events, group_of) -> dict[str, LayerSummary]:
    """`events`: Dagster event log entries (or DagsterEvents) of one run; `group_of`: AssetKey -> group."""
    layers: dict[str, LayerSummary] = {}
    seen_mats = set()
    checks: dict = {}
    for ev in events:
        dagster_event = getattr(ev, "dagster_event", ev)
        if dagster_event is None:
            continue
        etype = dagster_event.event_type_value
        if etype == "ASSET_MATERIALIZATION":
            mat = dagster_event.event_specific_data.materialization
            key = mat.asset_key
            # partitioned assets record each partition's own figures on its materialization: sum them
            # (a retried step re-emits the same partition: count it once)
            if (key, dagster_event.step_key, mat.partition) in seen_mats:
                continue
            seen_mats.add((key, dagster_event.step_key, mat.partition))
            layer = group_of(key)
            s = layers.setdefault(layer, LayerSummary(layer))
            s.assets.add(key.to_user_string())
            md = mat.metadata
            if mat.partition is None and ("hours_rewritten" in md or "hours_written" in md):
                continue  # the run-level materialization of an incremental step's partitioned output: its hours are counted
            s.files_read += int(_value(md, "files_read") or 0)
            s.rows_written += int(_value(md, "rows_written") or _value(md, "dagster/row_count") or 0)
            if not key.path[-1].endswith("quarantine"):
                s.quarantined += int(_value(md, "quarantined") or 0)
                reasons = _value(md, "quarantine_by_reason") or {}
                s.reasons.update({k: int(v) for k, v in dict(reasons).items()})
        elif etype == "ASSET_CHECK_EVALUATION":
            ev_data = dagster_event.event_specific_data
            checks[ev_data.asset_check_key] = ev_data
    for check_key, data in checks.items():
        layer = group_of(check_key.asset_key)
        s = layers.setdefault(layer, LayerSummary(layer))
        if data.passed:
            s.checks_passed += 1
        else:
            s.checks_failed.append(f"{check_key.asset_key.to_user_string()}:{check_key.name}")
    return dict(sorted(layers.items(), key=lambda kv: (LAYER_ORDER.index(kv[0]) if kv[0] in LAYER_ORDER else 99, kv[0])))


def format_summary(layers: dict[str, LayerSummary]) -> str:
    header = f"{'layer':<12}{'assets':>7}{'files read':>12}{'rows written':>15}{'quarantined':>13}  {'checks':<14}top quarantine reasons"
    lines = [header, "-" * len(header)]
    for s in layers.values():
        checks = f"{s.checks_passed} ok" + (f", {len(s.checks_failed)} FAILED" if s.checks_failed else "")
        top = ", ".join(f"{r} {n}" for r, n in s.reasons.most_common(3))
        lines.append(f"{s.layer:<12}{len(s.assets):>7}{s.files_read:>12,}{s.rows_written:>15,}{s.quarantined:>13,}  {checks:<14}{top}")
    failed = [c for s in layers.values() for c in s.checks_failed]
    if failed:
        lines.append("")
        lines.append("Failed checks: " + ", ".join(failed))
    return "\n".join(lines)


def group_lookup(defs: dg.Definitions):
    graph = defs.resolve_asset_graph()

    def group_of(key: dg.AssetKey) -> str:
        try:
            return graph.get(key).group_name or "default"
        except Exception:
            return "default"

    return group_of
