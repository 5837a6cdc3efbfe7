"""bench.erasure_log_growth at a small size, as its users run it (figures are reported, never asserted: only that
they are there, and that the runs it measures left one valid log naming each bulk request once)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, platform_free_environ


def test_erasure_log_growth_reports_the_bytes_of_each_run(tmp_path):
    env = platform_free_environ(PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "bench.erasure_log_growth", str(tmp_path), "--events", "3000", "--requests", "25",
                           "--runs", "2"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["requests"] == 25 and [r["run"] for r in result["runs"]] == [0, 1]
    assert all(r["bytes_appended"] > 0 and r["seconds"] > 0 for r in result["runs"])
    from personalization_assets.core.hash_chain import HashChainedLog
    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.privacy.erasure import ERASURE_LOG_SCHEMA

    log = HashChainedLog(lake=LakeStorage(url=str(tmp_path / "data" / "lake")), name="erasure_log", schema=ERASURE_LOG_SCHEMA)
    assert log.verify().ok
    rows = log.read_all(["run_id", "request_ids"]).to_pylist()
    per_run = {r["run_id"]: r["request_ids"] for r in rows}  # one value per run, on each of its rows
    assert len(per_run) == 3 and len({(r["run_id"], r["request_ids"]) for r in rows}) == 3
    named = [i for ids in per_run.values() for i in ids.split(",") if i]
    assert len([i for i in named if i.startswith("dsr_")]) >= 25
    assert len(named) == len(set(named)), "a request named in more than one run"
