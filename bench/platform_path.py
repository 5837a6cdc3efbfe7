"""The platform: the full path through the Dagster definitions — landing -> raw -> privacy -> features
-> dbt segments — in one in-process run on a sqlite Dagster home, timed per layer from the step events.

    python -m bench.platform_path DATA_DIR END_DATE   (the landing zone is DATA_DIR/landing)
    python -m bench.platform_path DATA_DIR END_DATE --after-ingestion

`--after-ingestion` reruns, on a lake this command already built, every step but the events' ingestion as a full
refresh (every privacy table, the consented tier and the features rebuilt from raw, as on a first build), in one
run and one process like the whole path: at 100M events that measures the steps after ingestion in under an hour
instead of two.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict

from bench.common import RssSampler, Timer, as_of_for, emit, run_steps


def run(data_dir: str, end: str, after_ingestion: bool = False) -> dict:
    os.environ["PERSONALIZATION_DATA_DIR"] = data_dir
    os.environ["DAGSTER_HOME"] = os.path.join(data_dir, "dagster_home")
    os.environ.setdefault("PERSONALIZATION_EVENTS_START", "2025-01-01")
    timer = Timer()
    with timer.stage("load_definitions"):
        from personalization_assets.cli import ensure_dagster_home, run_materialize
        from personalization_assets.definitions import build_definitions
        from personalization_assets.settings import load_settings

        ensure_dagster_home()
        settings = load_settings()
        defs = build_definitions(settings)
    as_of = as_of_for(end).isoformat()
    everything_but_operations = "not (key:privacy/erasure_log or key:privacy/retention_log or key:privacy/key_rotation_log or group:exports)"
    if after_ingestion:
        # the whole multi-asset of the events' ingestion: selecting any of its keys runs it (as a full refresh here,
        # which deletes every raw hour before re-reading the landing zone)
        everything_but_operations += " and not (key:raw/events or key:raw/events_quarantine or key:raw/landing_manifest)"
    t0 = time.perf_counter()
    with RssSampler() as rss:
        ok, text, result = run_materialize(everything_but_operations, defs=defs, echo=lambda *_: None,
                                           run_config={"ops": {"feature_tables": {"config": {"as_of": as_of}}}},
                                           full_refresh=after_ingestion)
    wall = time.perf_counter() - t0
    if not ok:
        raise SystemExit("platform run failed:\n" + text)
    graph = defs.resolve_asset_graph()
    step_group = {}
    for node in graph.asset_nodes:
        step_group.setdefault(node.assets_def.node_def.name, node.group_name)
    import dagster as dg

    timing = run_steps(dg.DagsterInstance.get(), result.run_id)
    layers = defaultdict(float)
    for step, t in timing.steps.items():
        layers[step_group.get(step, step)] += t.seconds
    steps = timing.seconds()
    step_rss = {step: rss.peak_between(t.start, t.end) for step, t in timing.steps.items()}
    stages = {**timer.stages, **{f"layer_{k}": round(v, 3) for k, v in layers.items()}, "run_wall": round(wall, 3),
              "dagster_overhead": round(wall - sum(layers.values()), 3)}
    lake = defs.resources["lake"]
    totals = _totals(lake)
    raw_events = sum(lake.parquet_metadata("raw", "events", p).num_rows for p in lake.partitions("raw", "events"))
    return {"path": "platform", "events": raw_events, "stages": stages, "steps": steps, "step_peak_rss_mb": step_rss, "totals": totals,
            "sampled_peak_rss_mb": rss.peak_mb, "rss_sampling": rss.method}


def _totals(lake) -> dict:
    """The figures the paths must agree on, read from the features without holding a table in memory: row counts
    from the Parquet footers and sums over three numeric columns (reading the 100M message ids of events_clean to
    count them took a fresh process to 8,641 MB, more than any step of the run)."""
    import pyarrow.compute as pc

    rfm = lake.read_table("features", "user_rfm", columns=["frequency", "monetary", "orders"])
    return {
        "sessions": lake.parquet_metadata("features", "sessions").num_rows,
        "persons": rfm.num_rows, "frequency": int(pc.sum(rfm["frequency"]).as_py() or 0),
        "monetary": round(float(pc.sum(rfm["monetary"]).as_py() or 0.0), 2),
        "orders": int(pc.sum(rfm["orders"]).as_py() or 0),
        "affinity_rows": lake.parquet_metadata("features", "content_affinity").num_rows,
        "clean_events": lake.parquet_metadata("features", "events_clean").num_rows,
    }


if __name__ == "__main__":
    emit(run(sys.argv[1], sys.argv[2], after_ingestion="--after-ingestion" in sys.argv[3:]))
