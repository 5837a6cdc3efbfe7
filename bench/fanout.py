"""Fan-out of an hourly backfill: the consented tier's N hours rebuilt by 1 run vs by 2 concurrent runs.

    python -m bench.fanout [--events 1000000] [--days 2] [--runs 1,2] [--pin] [--workdir bench/work/fanout]

What it does, on the default generator's gzipped landing (privacy cases and requests included):

1. builds raw/events and the privacy tier once (`personalization materialize`), and keeps that lake;
2. for each fan-out k: copies the lake, removes the consented tier (`consented/events` and its state: what a
   backfill after a lost bucket, a policy change or a rotation without the job has to redo), and starts k
   `personalization materialize --select key:consented/events_state --partitions A..B` processes at once,
   each over a contiguous 1/k of the hours, with its own Dagster run (one sqlite Dagster home per k);
3. checks the outcome: every hour's rows (an order-insensitive checksum per hour) equal across k, and the
   state the runs committed together leaves nothing stale (one more run with no partitions builds 0 hours).

Runs are processes, as the run launcher starts them (one pod each in production); the state is committed
under its writer lock (`consented.state.commit`). Figures go to docs/BENCHMARKS.md and docs/SCALING.md;
nothing here is asserted in tests.
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

import threading

STATE = "key:consented/events_state"
UPSTREAM = " or ".join(f"key:{k}" for k in (
    "raw/events", "raw/crm_profiles", "raw/privacy_requests", "raw/content_catalog", "privacy/identity_links",
    "privacy/consent_ledger", "privacy/consent_state", "privacy/suppression_list"))


def _env(data: Path, home: Path) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {**os.environ, "PERSONALIZATION_DATA_DIR": str(data), "DAGSTER_HOME": str(home),
            "PERSONALIZATION_EVENTS_START": os.environ.get("PERSONALIZATION_EVENTS_START", "2025-01-01")}


def _cli(args: list[str], env: dict, core: int | None = None) -> subprocess.Popen:
    """A CLI process; `core`: pinned to that CPU (`taskset`), as a 1-core pod would be."""
    pin = ["taskset", "-c", str(core)] if core is not None else []
    return subprocess.Popen([*pin, sys.executable, "-m", "personalization_assets.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait(procs: list[subprocess.Popen], what: str) -> None:
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{what} failed:\n{out.decode()[-4000:]}")


def _hours(data: Path) -> list[str]:
    """The raw/events partition keys present (YYYY-MM-DD-HH:00), sorted."""
    out = []
    for f in (data / "lake" / "raw" / "events").glob("date=*/hour=*"):
        out.append(f"{f.parent.name[5:]}-{f.name[5:]}:00")
    return sorted(out)


def _split(hours: list[str], k: int) -> list[tuple[str, str]]:
    size = -(-len(hours) // k)
    chunks = [hours[i:i + size] for i in range(0, len(hours), size)]
    return [(c[0], c[-1]) for c in chunks]


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), 0.0)
    except OSError:
        return 0.0


def _watch(procs: list[subprocess.Popen], peaks: dict, stop: threading.Event) -> None:
    """Peak RSS of each run process and of all of them together (sampled every 0.25 s)."""
    while not stop.is_set():
        now = {p.pid: _rss_mb(p.pid) for p in procs}
        for pid, mb in now.items():
            peaks[pid] = max(peaks.get(pid, 0.0), mb)
        peaks["together"] = max(peaks.get("together", 0.0), sum(now.values()))
        stop.wait(0.25)


def _checksums(data: Path) -> dict[str, tuple[int, int]]:
    """hour folder -> (rows, order-insensitive checksum of the rows) of consented/events."""
    import duckdb

    con = duckdb.connect()
    rows = con.execute(
        f"""select hour, count(*), sum(hash(t)::hugeint)::varchar
            from (select regexp_extract(filename, 'date=[^/]+/hour=[^/]+') as hour, columns(* exclude (filename))
                  from read_parquet('{data}/lake/consented/events/**/*.parquet', filename = true, union_by_name = true)) t
            group by 1"""
    ).fetchall()
    return {h: (n, s) for h, n, s in rows}


def _stale_after(env: dict) -> int:
    """Hours one more run with no partitions would build (0: the committed state is complete)."""
    code = (
        "import json, os\n"
        "from personalization_assets.cli import ensure_dagster_home, open_instance, run_materialize\n"
        "from personalization_assets.definitions import build_definitions\n"
        "ensure_dagster_home(); defs = build_definitions(); instance = open_instance()\n"
        f"ok, text, result = run_materialize(defs=defs, instance=instance, echo=lambda *_: None, select={STATE!r})\n"
        "assert ok, text\n"
        "ev = [e for e in instance.all_logs(result.run_id) if e.dagster_event and e.dagster_event.event_type_value == 'ASSET_MATERIALIZATION']\n"
        "md = [e.dagster_event.event_specific_data.materialization for e in ev]\n"
        "state = [m for m in md if m.asset_key.to_user_string() == 'consented/events_state'][0]\n"
        "print('HOURS_BUILT', state.metadata['hours_built'].value)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
    return int(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("HOURS_BUILT")))


def run(events: int, users: int, days: int, fanouts: list[int], workdir: Path, seed: int = 7, pin: bool = False) -> dict:
    end = (date.today() - timedelta(days=1)).isoformat()
    if workdir.exists():
        shutil.rmtree(workdir)
    base = workdir / "base"
    env = _env(base, workdir / "home-base")
    subprocess.run([sys.executable, "-m", "personalization_assets.cli", "generate", "--events", str(events), "--users", str(users),
                    "--days", str(days), "--end", end, "--seed", str(seed)],
                   check=True, env={**env, "PERSONALIZATION_LANDING_URL": str(base / "landing")}, stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    _wait([_cli(["materialize", "--select", UPSTREAM], env)], "raw + privacy build")
    hours = _hours(base)
    out: dict = {"events": events, "users": users, "days": days, "hours": len(hours), "upstream_build_s": round(time.perf_counter() - t0, 2),
                 "cpus": os.cpu_count(), "pinned_one_core_per_run": pin, "fanout": {}}
    reference = None
    for k in fanouts:
        data = workdir / f"k{k}"
        shutil.copytree(base, data)  # keeps mtimes: the raw fingerprints the state records are the same in every copy
        for table in ("events", "events_state"):
            shutil.rmtree(data / "lake" / "consented" / table, ignore_errors=True)
        env_k = _env(data, workdir / f"home-k{k}")
        ranges = _split(hours, k)
        t0 = time.perf_counter()
        procs = [_cli(["materialize", "--select", STATE, "--partitions", f"{a}..{b}"], env_k, (i % (os.cpu_count() or 1)) if pin else None)
                 for i, (a, b) in enumerate(ranges)]
        peaks: dict = {}
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(procs, peaks, stop), daemon=True)
        watcher.start()
        try:
            _wait(procs, f"backfill with {k} runs")
        finally:
            stop.set()
            watcher.join()
        wall = time.perf_counter() - t0
        sums = _checksums(data)
        reference = reference or sums
        out["fanout"][k] = {"runs": k, "ranges": ranges, "wall_s": round(wall, 2),
                            "peak_rss_mb_per_run": [round(peaks.get(p.pid, 0.0)) for p in procs],
                            "peak_rss_mb_together": round(peaks.get("together", 0.0)),
                            "hours_written": len(sums), "rows": sum(n for n, _ in sums.values()),
                            "same_rows_as_first": sums == reference, "hours_stale_afterwards": _stale_after(env_k)}
    walls = {k: v["wall_s"] for k, v in out["fanout"].items()}
    if 1 in walls:
        out["speedup_vs_1"] = {k: round(walls[1] / w, 2) for k, w in walls.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--runs", default="1,2", help="fan-outs to measure, e.g. 1,2")
    ap.add_argument("--workdir", default="bench/work/fanout")
    ap.add_argument("--pin", action="store_true", help="pin run i to CPU i (taskset): each run a 1-core 'pod', as on a cluster")
    args = ap.parse_args(argv)
    result = run(args.events, args.users, args.days, [int(x) for x in args.runs.split(",")], Path(args.workdir).resolve(), pin=args.pin)
    print(json.dumps(result, indent=2))
    path = Path("bench/results") / f"fanout-{args.events}{'-pinned' if args.pin else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
