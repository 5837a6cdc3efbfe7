"""Bytes the erasure run appends to `privacy/erasure_log` per run, with many requests in force.

    python -m bench.erasure_log_growth WORK_DIR [--requests 10000] [--events 100000] [--runs 3]

Generates a small landing zone (default generator, 2 days), adds `--requests` erasure requests with random ids in
the generator's format (`dsr_<16 hex>`, for users with no events), materializes everything once, then runs the erasure
run `--runs` times with nothing new and prints the bytes and seconds each appended. Runs whatever
`personalization_assets` is first on the path (cwd = a checkout), so the same script measures two checkouts.
Nothing is asserted in tests: figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("work_dir")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.work_dir).resolve()
    data, home = work / "data", work / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONALIZATION_")}
    env.update(PERSONALIZATION_DATA_DIR=str(data), DAGSTER_HOME=str(home), PERSONALIZATION_EVENTS_START="2026-01-01")

    def cli(*a: str) -> float:
        t = time.monotonic()
        subprocess.run([sys.executable, "-m", "personalization_assets.cli", *a], env=env, check=True, capture_output=True)
        return time.monotonic() - t

    cli("generate", "--events", str(args.events), "--users", str(max(1, args.events // 33)), "--days", "2", "--end", "2026-12-01",
        "--seed", "3")
    rng = random.Random(7)
    (data / "landing" / "privacy_requests" / "bulk.jsonl").write_text("".join(
        json.dumps({"request_id": f"dsr_{rng.getrandbits(64):016x}", "type": "erasure", "user_id": f"gone-user-{i:06d}",
                    "received_at": "2026-11-30T12:00:00Z", "jurisdiction": "EU"}) + "\n" for i in range(args.requests)))
    cli("materialize")
    log_dir = data / "lake" / "privacy" / "erasure_log"

    def size() -> int:
        return sum(p.stat().st_size for p in log_dir.rglob("*.parquet"))

    runs = []
    for i in range(args.runs):
        before = size()
        seconds = cli("materialize", "--select", "key:privacy/erasure_log")
        runs.append({"run": i, "bytes_appended": size() - before, "seconds": round(seconds, 1)})
    print(json.dumps({"requests": args.requests, "events": args.events, "runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
