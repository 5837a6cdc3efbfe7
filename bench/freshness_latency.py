"""Freshness latency: with the daemon running (sensors and automation on), land the next hour's object and
measure the time until the segments reflect it, split into Dagster overhead and work.

    python -m bench.freshness_latency [--history-events 1000000] [--users 20000] [--workdir bench/work/latency]

1. A landing zone (`--history-events` over the 2 days ending yesterday, seeded: the same data whatever the time of
   day) is generated; the hour after H (H = yesterday 22:00) is held back, and the rest is fully materialized
   once (the steady state).
2. `dagster dev` (webserver + daemon) starts on the same Dagster home with
   PERSONALIZATION_FRESHNESS_SCALE small, so a settled pipeline is "stale" and reacts to new data at once.
3. Hour H+1 (yesterday 23:00, ≈ 17.7k events of a 1M history) lands as one object; the landing sensor, the
   declarative automation and the freshness policies take it from there, with nobody clicking.
4. Done when `segments/user_segments` is materialized by a run started after the drop and
   `features/events_clean` contains hour H's messages. The features' cutoff is data, not the clock (`as_of` =
   the start of the newest landing hour): at steady state hour H is landed but after the cutoff; the new
   hour moves the cutoff to H+1 and completes H. That is what "fresh" means for a consumer of the segments.

Overhead = latency − the summed duration of the steps that did the work (sensor intervals, run queue,
run launch and process start-up are overhead).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(data: Path, home: Path, scale: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONALIZATION_", "SNOWFLAKE_"))}
    env.update(PERSONALIZATION_DATA_DIR=str(data), DAGSTER_HOME=str(home), PERSONALIZATION_FRESHNESS_SCALE=scale,
               PERSONALIZATION_EVENTS_START=(datetime.now(timezone.utc) - timedelta(days=10)).date().isoformat())
    return env


def _cli(env, *args):
    subprocess.run([sys.executable, "-m", "personalization_assets.cli", *args], cwd=ROOT, env=env, check=True, capture_output=True)


def _hour_start(folder: Path) -> datetime:
    return datetime.strptime(f"{folder.parent.name[5:]} {folder.name[5:]}", "%Y-%m-%d %H").replace(tzinfo=timezone.utc)


def _message_ids(folder: Path) -> set[str]:
    return {json.loads(line)["messageId"] for f in sorted(folder.glob("*.jsonl.gz")) for line in gzip.decompress(f.read_bytes()).splitlines()}


def run(workdir: Path, history_events: int = 1_000_000, users: int = 20_000, timeout_s: float = 900) -> dict:
    if workdir.exists():
        shutil.rmtree(workdir)
    data, home, held = workdir / "data", workdir / "home", workdir / "held"
    home.mkdir(parents=True)
    env = _env(data, home, "0.02")
    # the same data in every run, whatever the time of day: two whole days ending yesterday (seeded), of which H =
    # yesterday 22:00 is the steady state's newest landing hour and H+1 = yesterday 23:00 the hour that lands. (It
    # was "the last complete hour" of today: the history then held only the hours of today so far — 58 % of
    # `history_events` at 05:00 UTC — and the landed hour 7k to 27k events, following the generator's day curve.)
    end = datetime.now(timezone.utc).date() - timedelta(days=1)
    newest = datetime(end.year, end.month, end.day, 22, tzinfo=timezone.utc)
    landing_hour = newest + timedelta(hours=1)
    # every landing hour after H is held back (H+1 lands during the measurement)
    _cli(env, "generate", "--users", str(users), "--events", str(history_events), "--seed", "5", "--days", "2",
         "--end", end.isoformat(), "--all-consent")
    events_root = data / "landing" / "events"
    for folder in sorted(events_root.glob("date=*/hour=*")):
        if _hour_start(folder) > newest:
            target = held / folder.relative_to(events_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), target)
    _cli(env, "materialize")
    # the features take as_of = the start of the newest landing hour (data, not the clock): at steady state hour H's
    # events are landed but not yet in the features; when H+1 lands, as_of moves to its start and they must appear
    waiting_ids = _message_ids(events_root / f"date={newest:%Y-%m-%d}" / f"hour={newest:%H}")
    if not waiting_ids or _reflects(data, waiting_ids):
        raise SystemExit(f"steady state: hour {newest:%Y-%m-%d %H}:00 must be landed and not yet in the features")
    incoming = held / f"date={landing_hour:%Y-%m-%d}" / f"hour={landing_hour:%H}"
    files = sorted(incoming.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no generated file for {landing_hour:%Y-%m-%d %H}:00")
    # the hour lands as one object, as a CDP destination's batch would
    payload = b"".join(gzip.decompress(f.read_bytes()) for f in files)
    dest = events_root / f"date={landing_hour:%Y-%m-%d}" / f"hour={landing_hour:%H}" / f"batch-{int(time.time())}.jsonl.gz"

    port = 3311
    log = open(workdir / "dagster_dev.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import dagster as dg

        os.environ["DAGSTER_HOME"] = str(home)
        instance = dg.DagsterInstance.get()
        _wait_for_daemon(instance, 180)
        time.sleep(75)  # let the freshness windows (scaled) lapse: the settled pipeline is now stale
        dest.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        dest.write_bytes(gzip.compress(payload))
        key = dg.AssetKey(["segments", "user_segments"])
        done_at = None
        while time.time() - t0 < timeout_s:
            event = instance.get_latest_materialization_event(key)
            if event is not None and event.timestamp > t0 and _reflects(data, waiting_ids):
                done_at = event.timestamp
                break
            time.sleep(2)
        if done_at is None:
            raise SystemExit(f"segments did not reflect the new file within {timeout_s} s (see {workdir}/dagster_dev.log)")
        latency = done_at - t0
        # let the runs that did the work finish, so their step times are complete
        settle = time.time() + 60
        while time.time() < settle and any(
            not r.dagster_run.is_finished for r in instance.get_run_records(dg.RunsFilter(created_after=datetime.fromtimestamp(t0, timezone.utc)))
        ):
            time.sleep(1)
        work, stages = 0.0, []
        for record in instance.get_run_records(dg.RunsFilter(created_after=datetime.fromtimestamp(t0, timezone.utc))):
            run = record.dagster_run
            stats = instance.get_run_stats(run.run_id)
            step_time = sum((s.end_time or 0) - (s.start_time or 0) for s in instance.get_run_step_stats(run.run_id) if s.end_time)
            stages.append({"run": run.run_id[:8], "job": run.job_name, "assets": sorted(k.to_user_string() for k in (run.asset_selection or [])),
                           "created": round(record.create_timestamp.timestamp() - t0, 1), "start": round((stats.start_time or t0) - t0, 1),
                           "end": round((stats.end_time or t0) - t0, 1), "step_seconds": round(step_time, 1)})
            if (stats.start_time or 0) <= done_at:
                work += step_time
        return {"history_events": history_events, "users": users, "newest_hour_before": f"{newest:%Y-%m-%d %H}:00",
                "hour_landed": f"{landing_hour:%Y-%m-%d %H}:00", "events_now_visible": len(waiting_ids), "latency_seconds": round(latency, 1), "work_seconds": round(work, 1), "dagster_overhead_seconds": round(latency - work, 1),
                "events_in_file": len(payload.splitlines()), "runs": sorted(stages, key=lambda s: s["created"])}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_for_daemon(instance, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if instance.get_daemon_heartbeats():
                return
        except Exception:
            pass
        time.sleep(2)
    raise SystemExit("the Dagster daemon did not start")


def _reflects(data: Path, ids: set[str]) -> bool:
    import duckdb

    path = data / "lake" / "features" / "events_clean" / "data.parquet"
    if not path.exists():
        return False
    con = duckdb.connect()
    quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
    return con.execute(f"select count(*) from read_parquet('{path}') where message_id in ({quoted})").fetchall()[0][0] > 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--history-events", type=int, default=1_000_000, help="events of the settled history (issue #12: 1M)")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--workdir", default=str(ROOT / "bench" / "work" / "latency"))
    a = p.parse_args(argv)
    result = run(Path(a.workdir), a.history_events, a.users)
    out = ROOT / "bench" / "results" / f"{datetime.now(timezone.utc):%Y-%m-%dT%H%M%SZ}-freshness-latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
