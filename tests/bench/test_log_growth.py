"""bench.log_growth at a small size, as its users run it (figures are reported, never asserted: only that they are
there, and that the checkpointed verification it measures stays incremental and the chain valid)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, platform_free_environ


def test_log_growth_reports_both_ways_for_each_size(tmp_path):
    env = platform_free_environ(PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "bench.log_growth", "--sizes", "5,20", "--repeats", "2", "--workdir", str(tmp_path)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1][len("BENCH_RESULT "):])
    assert result["store"] == "local" and [r["segments"] for r in result["rows"]] == [5, 20]
    for r in result["rows"]:
        for k in ("append_with_hint_s", "append_listing_s", "verify_whole_s", "append_and_verify_from_checkpoint_s"):
            assert r[k] > 0, r
    # what it left behind is one valid chain: every append of every mode is in it
    from personalization_assets.core.audit import audit_log
    from personalization_assets.core.storage import LakeStorage

    status = audit_log(LakeStorage(url=str(tmp_path / "lake")), None).verify()
    assert status.ok and status.rows == 20 + 3 * 2, status  # built up to the last size, then 2 appends per mode
