"""Tick cost: after a full build of D days, land ONE more hour and run `personalization materialize` (no
selection: the landing sources, then whatever their changes made stale), twice (two held-back hours: the first
tick also settles the hours the full build's erasure run rewrote; the second is the steady state), then once more
with nothing landed (`idle`, most ticks of a deployment). Reports the wall times, their ratios to the full build,
per-step seconds and which partitions each run touched.

    python -m bench.tick [--events 1000000] [--days 7] [--workdir bench/work/tick]

The landing is the default generator's (gzip, privacy cases and requests included); the newest hour's
objects are held back for the tick. Nothing here is asserted in tests: figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from bench.common import RssSampler, run_steps


def _generate(landing: Path, events: int, users: int, days: int, end: str, seed: int) -> None:
    env = {**os.environ, "PERSONALIZATION_LANDING_URL": str(landing)}
    subprocess.run([sys.executable, "-m", "personalization_assets.cli", "generate", "--events", str(events), "--users", str(users),
                    "--days", str(days), "--end", end, "--seed", str(seed)], check=True, env=env, stdout=subprocess.DEVNULL)


def run(events: int, users: int, days: int, workdir: Path, seed: int = 7) -> dict:
    end = (date.today() - timedelta(days=1)).isoformat()
    data = workdir / "data"
    staging = workdir / "staging"
    if workdir.exists():
        shutil.rmtree(workdir)
    staging.mkdir(parents=True)
    _generate(staging, events, users, days, end, seed)
    landing = data / "landing"
    shutil.copytree(staging, landing)
    # the last two hours are held back: the first tick also settles what the full build's erasure run rewrote
    # (raw hours of erased subjects), the second is a steady-state tick
    ticks = {"tick": sorted((landing / "events").glob(f"date={end}/hour=22/*")),
             "tick_2": sorted((landing / "events").glob(f"date={end}/hour=23/*"))}
    held_back = [f for fs in ticks.values() for f in fs]
    tick_dir = workdir / "tick_objects"
    tick_dir.mkdir()
    for f in held_back:
        shutil.move(str(f), tick_dir / f.name)
    os.environ["PERSONALIZATION_DATA_DIR"] = str(data)
    os.environ["DAGSTER_HOME"] = str(workdir / "dagster_home")
    os.environ.setdefault("PERSONALIZATION_EVENTS_START", "2025-01-01")
    from personalization_assets.cli import ensure_dagster_home, open_instance, run_materialize
    from personalization_assets.definitions import build_definitions

    ensure_dagster_home()
    defs = build_definitions()
    instance = open_instance()
    out = {"events": events, "users": users, "days": days, "held_back_objects": len(held_back)}
    # "idle": one more run with nothing landed (most ticks of a deployment): the landing sources' ingestion only
    for phase in ("full_build", "tick", "tick_2", "idle"):
        for f in ticks.get(phase, []):
            shutil.move(str(tick_dir / f.name), f)
        t0 = time.perf_counter()
        with RssSampler() as rss:
            ok, text, result = run_materialize(defs=defs, instance=instance, echo=lambda *_: None)
        wall = time.perf_counter() - t0
        if not ok:
            raise SystemExit(f"{phase} failed:\n{text}")
        timing = run_steps(instance, *result.run_ids)
        out[phase] = {"wall_s": round(wall, 2), "peak_rss_mb": max((mb for _, mb in rss.samples), default=None), "rss_sampling": rss.method,
                      "steps_s": timing.seconds(),
                      "partitions_materialized": {k: (len(v), v[:6]) for k, v in timing.partitions.items()},
                      "runs": len(result.run_ids),
                      "assets_stale": len(result.plan.stale) if result.plan else None,
                      "assets_up_to_date": len(result.plan.fresh) if result.plan else None}
    out["tick_over_full"] = round(out["tick"]["wall_s"] / out["full_build"]["wall_s"], 3)
    out["tick_2_over_full"] = round(out["tick_2"]["wall_s"] / out["full_build"]["wall_s"], 3)
    out["idle_over_full"] = round(out["idle"]["wall_s"] / out["full_build"]["wall_s"], 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--workdir", default="bench/work/tick")
    args = ap.parse_args(argv)
    result = run(args.events, args.users, args.days, Path(args.workdir).resolve())
    print(json.dumps(result, indent=2))
    out = Path("bench/results") / f"tick-{args.events}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
