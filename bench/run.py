"""`make bench`: generate a landing zone, then run the platform, the floor and the peer on the same files.

    BENCH_EVENTS=1000000 python -m bench.run        # sizes via env: BENCH_EVENTS, BENCH_USERS, BENCH_DAYS
    python -m bench.run --events 20000 --paths floor,peer,platform --workdir /tmp/b --no-docs

Each path runs in its own process (so its peak RSS is its own) on the same files. The result is written
to bench/results/<timestamp>-<events>.json and, unless --no-docs, as a table into docs/BENCHMARKS.md
(between the markers). The three paths must agree on sessions, RFM totals and affinity rows — the run
fails otherwise: the comparison is only meaningful for equal work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import shutil
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
COMPARED = ("sessions", "persons", "frequency", "monetary", "orders", "affinity_rows", "clean_events")
BEGIN, END = "<!-- bench:latest:begin -->", "<!-- bench:latest:end -->"


def _run_path(args: list[str], env: dict) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{args[0]} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    result = json.loads(lines[-1][len("BENCH_RESULT "):])
    result["wall_seconds"] = round(wall, 3)
    result["events_per_second"] = round(result["events"] / wall) if wall else None
    return result


def versions() -> dict:
    from importlib.metadata import version

    out = {"python": pyplatform.python_version()}
    try:  # which code was measured
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None
        out["dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    for pkg in ("dagster", "duckdb", "pyarrow", "pandas", "pandera", "dbt-core", "dbt-duckdb"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = None
    return out


def machine() -> dict:
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "memory_gb": mem, "cpu": cpu, "platform": pyplatform.platform()}


def run(events: int, users: int, days: int, workdir: Path, paths: list[str], seed: int = 7, gzip: bool = False,
        all_consent: bool = True, settings: dict[str, str] | None = None) -> dict:
    end = (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()
    data = workdir / "data"
    if workdir.exists():
        shutil.rmtree(workdir)
    data.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONALIZATION_", "SNOWFLAKE_", "DAGSTER_HOME"))}
    env.update(PERSONALIZATION_DATA_DIR=str(data), PERSONALIZATION_EVENTS_START=(date.fromisoformat(end) - timedelta(days=days + 3)).isoformat())
    env.update(settings or {})  # --setting: the platform's settings for a side-by-side run (recorded in the result)
    t = time.perf_counter()
    gen_cmd = [sys.executable, "-m", "personalization_assets.cli", "generate", "--users", str(users), "--events", str(events),
               "--seed", str(seed), "--end", end, "--days", str(days)] + (["--all-consent"] if all_consent else []) + ([] if gzip else ["--no-gzip"])
    subprocess.run(gen_cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    generate_s = round(time.perf_counter() - t, 1)
    landing = data / "landing"
    landing_bytes = sum(f.stat().st_size for f in (landing / "events").rglob("*") if f.is_file())
    results = {}
    for name in paths:
        out = workdir / name
        out.mkdir()
        if name == "platform":
            results[name] = _run_path(["bench.platform_path", str(data), end], env)
        else:
            results[name] = _run_path([f"bench.{name}", str(landing), str(out), end], env)
    totals = {name: r["totals"] for name, r in results.items()}
    reference = next(iter(totals.values()))
    mismatches = {name: {k: (t[k], reference[k]) for k in COMPARED if t[k] != reference[k]} for name, t in totals.items()}
    mismatches = {k: v for k, v in mismatches.items() if v}
    if not all_consent:
        # the default landing plants privacy cases (denials, withdrawals, erasures): the platform keeps fewer events
        # than the floor and the peer, which apply no consent; the totals are reported, not compared
        mismatches = {}
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "events": events, "users": users, "days": days, "landing_bytes": landing_bytes, "gzip": gzip, "generate_seconds": generate_s,
        "landing": "all-consent" if all_consent else "default (privacy cases and requests)",
        "machine": machine(), "versions": versions(), "paths": results,
        "equal_work": (not mismatches) if all_consent else None, "mismatches": mismatches,
    }
    if "platform" in results:
        p = results["platform"]["wall_seconds"]
        report["ratios"] = {
            "platform_over_floor": round(p / results["floor"]["wall_seconds"], 2) if "floor" in results else None,
            "peer_over_platform": round(results["peer"]["wall_seconds"] / p, 2) if "peer" in results else None,
        }
    return report


def write_result(report: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{report['date'].replace(':', '').replace('+0000', 'Z')}-{report['events']}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def markdown(report: dict) -> str:
    rows = ["| path | wall (s) | events/s | peak RSS (MB) | stages (s) |", "|---|---:|---:|---:|---|"]
    for name, r in report["paths"].items():
        stages = ", ".join(f"{k} {v}" for k, v in r["stages"].items())
        rows.append(f"| {name} | {r['wall_seconds']} | {r['events_per_second']:,} | {r['peak_rss_mb']} | {stages} |")
    ratios = report.get("ratios") or {}
    steps = report["paths"].get("platform", {}).get("steps") or {}
    step_rss = report["paths"].get("platform", {}).get("step_peak_rss_mb") or {}

    def step(k, v):
        return f"`{k}` {v}" + (f" ({step_rss[k]:,.0f} MB)" if step_rss.get(k) else "")

    step_line = ("Platform steps (s, peak RSS of the run process during the step): "
                 + ", ".join(step(k, v) for k, v in sorted(steps.items(), key=lambda kv: -kv[1]) if v >= 0.1)) if steps else ""
    lines = [
        f"**{report['events']:,} events**, {report['users']:,} users, {report['days']} days "
        f"({report['landing_bytes'] / 1e6:,.0f} MB of {'gzipped ' if report.get('gzip') else ''}NDJSON, {report.get('landing', 'all-consent')} landing) — "
        f"{report['date']}, {report['machine']['cpus']} CPUs, "
        f"{report['machine']['memory_gb']} GB, {report['machine']['cpu']}; dagster {report['versions']['dagster']}, "
        f"duckdb {report['versions']['duckdb']}",
        "",
        *rows,
        "",
        f"platform/floor = **{ratios.get('platform_over_floor')}×**, peer/platform = **{ratios.get('peer_over_platform')}×**; "
        + (f"equal work: **{report['equal_work']}** (sessions, RFM totals, affinity rows identical across paths)."
         if report["equal_work"] is not None else
         "equal work: not compared (the default landing's privacy cases make the platform keep fewer events than the paths that apply no consent)."),
        *(["", step_line] if step_line else []),
    ]
    return "\n".join(lines)


def update_docs(report: dict) -> None:
    text = DOCS.read_text() if DOCS.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    block = f"{BEGIN}\n{markdown(report)}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text += "\n" + block + "\n"
    DOCS.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", 1_000_000)))
    p.add_argument("--users", type=int, default=int(os.environ.get("BENCH_USERS", 0)) or None)
    p.add_argument("--days", type=int, default=int(os.environ.get("BENCH_DAYS", 7)))
    p.add_argument("--paths", default=os.environ.get("BENCH_PATHS", "floor,peer,platform"))
    p.add_argument("--workdir", default=str(ROOT / "bench" / "work"))
    p.add_argument("--gzip", action="store_true", default=os.environ.get("BENCH_GZIP") == "1",
                   help="land .jsonl.gz (as CDP S3 destinations do) instead of plain .jsonl; needed for 100M on a 250 GB disk")
    p.add_argument("--default-landing", action="store_true",
                   help="the default generator's landing (privacy cases and requests) instead of --all-consent; paths are then not compared")
    p.add_argument("--setting", action="append", default=[], metavar="PERSONALIZATION_NAME=VALUE",
                   help="a platform setting for this run (repeatable), e.g. PERSONALIZATION_LANDING_READ_CONCURRENCY=1")
    p.add_argument("--no-docs", action="store_true")
    a = p.parse_args(argv)
    settings = dict(item.split("=", 1) for item in a.setting)
    if any(not k.startswith("PERSONALIZATION_") for k in settings):
        p.error("--setting takes PERSONALIZATION_NAME=VALUE")
    users = a.users or max(200, a.events // 30)
    report = run(a.events, users, a.days, Path(a.workdir), a.paths.split(","), gzip=a.gzip, all_consent=not a.default_landing,
                 settings=settings)
    report["settings"] = settings
    path = write_result(report)
    if not a.no_docs:
        update_docs(report)
    print(markdown(report))
    print(f"\nresult: {path}")
    if report["equal_work"] is False:
        print(f"paths disagree: {report['mismatches']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
