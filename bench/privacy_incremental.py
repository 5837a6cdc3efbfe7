"""Step times of privacy/identity_links and privacy/consent_ledger on a tick that brings one new landing hour.

    python bench/privacy_incremental.py WORK_DIR [--events 1000000 --days 7 --users N]

Generates a landing zone once (WORK_DIR/landing_src), then in a fresh data dir (WORK_DIR/run-<ts>, landing
hard-linked) holds back the last landing hour, materializes raw + the two steps (first run), reruns them with
nothing new, then lands the held-back hour (raw for that partition only) and reruns them. Prints one JSON object
with wall and step times (s). Runs whatever `personalization_assets` is first on PYTHONPATH, so the same script
measures two checkouts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _step_seconds(result) -> dict:
    out = {}
    for ev in result.all_events:
        if ev.event_type_value == "STEP_SUCCESS":
            out[ev.step_key] = round(ev.event_specific_data.duration_ms / 1000, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("work_dir")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--users", type=int, default=None)
    args = ap.parse_args()
    work = Path(args.work_dir).resolve()
    src = work / "landing_src"
    if not (src / "events").exists():
        cmd = [sys.executable, "-m", "personalization_assets.cli", "generate", "--events", str(args.events), "--days", str(args.days)]
        if args.users:
            cmd += ["--users", str(args.users)]
        gen_dir = work / "gen"
        gen_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(cmd, check=True, env={**os.environ, "PERSONALIZATION_DATA_DIR": str(gen_dir)})
        shutil.move(str(gen_dir / "landing"), src)
    data = work / f"run-{int(time.time())}"
    data.mkdir()
    subprocess.run(["cp", "-al", str(src), str(data / "landing")], check=True)
    home = data / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ.update(PERSONALIZATION_DATA_DIR=str(data), DAGSTER_HOME=str(home))

    hours = sorted((data / "landing" / "events").glob("date=*/hour=*"))
    last = hours[-1]
    held = data / "held_hour"
    shutil.move(str(last), held)

    import dagster as dg

    import personalization_assets
    from personalization_assets.cli import landing_partition_keys
    from personalization_assets.definitions import build_definitions
    from personalization_assets.settings import load_settings

    defs = build_definitions(load_settings())
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    raw = dg.AssetSelection.from_string("key:raw/events or key:raw/crm_profiles or key:raw/privacy_requests").required_multi_asset_neighbors().resolve(graph)
    report = {"code": str(Path(personalization_assets.__file__).parent.parent), "events": args.events, "days": args.days}

    def run(keys, partitions=None):
        tags = {"dagster/asset_partition_range_start": partitions[0], "dagster/asset_partition_range_end": partitions[1]} if partitions else {}
        with dg.DagsterInstance.ephemeral() as instance:
            t = time.perf_counter()
            result = job.execute_in_process(instance=instance, asset_selection=list(keys), tags=tags)
            return round(time.perf_counter() - t, 2), _step_seconds(result)

    def privacy_steps(label):
        for key in ("privacy/identity_links", "privacy/consent_ledger"):
            wall, steps = run([dg.AssetKey(key.split("/"))])
            report[f"{label}:{key}"] = {"wall_s": wall, "step_s": steps.get(key.replace("/", "__"))}

    keys = landing_partition_keys(defs, None)
    report["raw_hours"] = len(keys)
    report["raw_initial_s"], _ = run(raw, (keys[0], keys[-1]))
    privacy_steps("first_run")
    privacy_steps("no_new_hour")
    shutil.move(str(held), last)
    new = landing_partition_keys(defs, None)[-1]
    report["new_hour"] = new
    raw_events = dg.AssetSelection.from_string("key:raw/events").required_multi_asset_neighbors().resolve(graph)
    report["raw_new_hour_s"], _ = run(raw_events, (new, new))
    privacy_steps("one_new_hour")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
