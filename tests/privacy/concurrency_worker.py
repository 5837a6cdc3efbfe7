"""A separate process for the concurrency tests (tests/privacy/test_concurrency.py, test_dp.py).

    python -m tests.privacy.concurrency_worker ledger   (rounds: one per `go` line, see `ledger`)
    python -m tests.privacy.concurrency_worker dp INTERVAL TRIALS EPSILON
    python -m tests.privacy.concurrency_worker init

Each prepares (imports, definitions), prints READY and waits for the test to send a wall-clock instant
on stdin: the test sends the same instant to all its workers once all are ready, so they collide on
purpose however long their start-up took. Then it does its part with the product code on the environment
given by the PERSONALIZATION_* variables and prints one JSON line with what happened.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone


def _wait(start_at: float) -> None:
    while time.time() < start_at:
        time.sleep(0.0005)


def _ready() -> float:
    print("READY", flush=True)
    return float(sys.stdin.readline())


def ledger() -> None:
    """Materialize privacy/consent_ledger once as a warm-up (imports, DuckDB, keys), then once per `go`
    line on stdin (printing one RESULT line each), until `stop`."""
    import dagster as dg

    from tests.helpers import check_results, defs_for_env, materializations

    defs = defs_for_env()
    job = defs.resolve_implicit_global_asset_job_def()
    keys = dg.AssetSelection.from_string("key:privacy/consent_ledger").resolve(defs.resolve_asset_graph())

    def run() -> dict:
        with dg.DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(instance=instance, asset_selection=list(keys), raise_on_error=False)
        md = materializations(result).get("privacy/consent_ledger", {})
        return {"success": result.success, "checks": check_results(result), "appended": md.get("appended")}

    run()
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            return
        _wait(float(line))
        print("RESULT " + json.dumps(run(), default=str), flush=True)


def env_lake():
    """The lake of the environment (PERSONALIZATION_* variables), outside a Dagster run."""
    import os

    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.settings import load_settings

    s = load_settings()
    return LakeStorage(url=s.lake_url, s3_endpoint_url=s.s3_endpoint_url, aws_region=s.aws_region,
                       aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"), aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))


def dp(interval: float, trials: int, epsilon: float) -> dict:
    from personalization_assets.privacy.dp import BudgetLedger, DpBudgetExceeded
    from personalization_assets.core.policies import DpRelease, get_policy
    lake = env_lake()
    policy = get_policy()
    outcomes = []
    start_at = _ready()
    for i in range(trials):
        ledger = BudgetLedger.open(lake, policy, None)
        _wait(start_at + i * interval)
        try:
            ledger.charge(DpRelease("segment_sizes", epsilon, 1), f"worker-{i}", datetime(2030 + i // 12, i % 12 + 1, 15, tzinfo=timezone.utc))
            outcomes.append("charged")
        except DpBudgetExceeded:
            outcomes.append("refused")
    return {"outcomes": outcomes}


def init() -> dict:
    import dagster  # noqa: F401 - imported before the barrier, like a CLI that is about to open its instance

    from personalization_assets.cli import open_instance

    _wait(_ready())
    try:
        instance = open_instance()
        return {"ok": True, "runs": len(instance.get_runs(limit=1))}
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "ledger":
        ledger()
        raise SystemExit(0)
    if mode == "dp":
        out = dp(float(args[0]), int(args[1]), float(args[2]))
    elif mode == "init":
        out = init()
    else:
        raise SystemExit(f"unknown mode {mode}")
    print("RESULT " + json.dumps(out, default=str), flush=True)
