"""One selection of the platform, alone in a fresh process, with the exact peak memory of each step: what the
per-step figures of docs/BENCHMARKS.md ("100M, exact peaks per step") are measured with.

    python -m bench.step_peak DATA_DIR SELECTION [--full-refresh] [--partitions START..END] [--as-of ISO]

DATA_DIR is a data directory a platform run already built (its lake, landing zone and Dagster home under it);
SELECTION is a `personalization materialize --select` string (e.g. `key:privacy/consent_state`). The run goes through
`personalization_assets.cli.run_materialize`, as the command line does, inside `bench.common.RssSampler` (the kernel's
high-water mark read and reset every 0.25 s: the exact peak of each interval). Prints, as the last line
(`BENCH_RESULT {...}`): the wall time, the run's peak, each step's time and the peak of the intervals it overlaps, and
the resident set after the run, then again after Arrow's pool and glibc's heap are handed back (what a following step
in the same process would start from).

Numbers are the machine's: run it on an idle machine for times (memory does not depend on the load).
"""

from __future__ import annotations

import argparse
import os
import time


def measure(data_dir: str, selection: str, full_refresh: bool = False, partitions: str | None = None, as_of: str | None = None) -> dict:
    os.environ["PERSONALIZATION_DATA_DIR"] = data_dir
    os.environ.setdefault("DAGSTER_HOME", os.path.join(data_dir, "dagster_home"))
    import dagster as dg

    from bench.common import RssSampler, _status_mb, run_steps
    from personalization_assets.cli import ensure_dagster_home, run_materialize
    from personalization_assets.core.memory import release_freed_memory
    from personalization_assets.definitions import build_definitions
    from personalization_assets.settings import load_settings

    ensure_dagster_home()
    defs = build_definitions(load_settings())
    run_config = {"ops": {"feature_tables": {"config": {"as_of": as_of}}}} if as_of else None
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    with RssSampler() as rss:
        ok, text, result = run_materialize(selection, partitions=partitions, defs=defs, echo=lambda *_: None,
                                           run_config=run_config, full_refresh=full_refresh)
    wall = time.perf_counter() - t0
    if not ok:
        raise SystemExit(f"run failed:\n{text[-4000:]}")
    timing = run_steps(dg.DagsterInstance.get(), result.run_id)
    after = _status_mb("VmRSS")
    release_freed_memory()
    return {
        "path": "step_peak", "selection": selection, "full_refresh": full_refresh, "partitions": partitions, "as_of": as_of,
        "wall_s": round(wall, 1), "peak_mb": rss.peak_mb, "rss_sampling": rss.method,
        "steps": {step: {"seconds": round(t.seconds, 1), "peak_mb": rss.peak_between(t.start, t.end)} for step, t in timing.steps.items()},
        "rss_before_mb": before, "rss_after_mb": after, "rss_after_release_mb": _status_mb("VmRSS"),
        "sampled_peak_rss_mb": rss.peak_mb,
    }


def main(argv=None) -> None:
    from bench.common import emit

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir")
    p.add_argument("selection")
    p.add_argument("--full-refresh", action="store_true")
    p.add_argument("--partitions", help="START..END hourly partition keys (a range run)")
    p.add_argument("--as-of", help="the features' cutoff (ISO); default: the platform's, from the landing zone")
    a = p.parse_args(argv)
    emit(measure(a.data_dir, a.selection, a.full_refresh, a.partitions, a.as_of))


if __name__ == "__main__":
    main()
