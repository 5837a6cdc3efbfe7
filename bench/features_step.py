"""One `feature_tables` materialization on an existing lake (in process): step wall, process CPU, stage_seconds
and the per-person state's `partials` metadata, as one JSON line. Run it alternately with two code versions on
copies of the same lake to compare them under the same load (docs/ARCHITECTURE.md, "Incremental runs"):

    PYTHONPATH=<checkout> python -m bench.features_step <lake dir> <as_of>

A state-reusing tick needs a previous run of the new code on the same lake (e.g. at as_of - 1h).
Figures go to docs; nothing here is asserted in tests.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv=None) -> int:
    lake_dir, as_of = (argv or sys.argv[1:])[:2]
    import dagster as dg

    from personalization_assets.features import build_feature_assets
    from personalization_assets.resources import DuckDBEngine
    from personalization_assets.core.storage import LakeStorage

    lake = LakeStorage(url=lake_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    result = dg.materialize(build_feature_assets(), resources={"lake": lake, "duckdb": DuckDBEngine(database=":memory:")},
                            run_config={"ops": {"feature_tables": {"config": {"as_of": as_of}}}})
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    md = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
    out = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "stage_seconds": md["features/events_clean"]["stage_seconds"].value}
    if "partials" in md["features/sessions"]:
        out["partials"] = md["features/sessions"]["partials"].value
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
