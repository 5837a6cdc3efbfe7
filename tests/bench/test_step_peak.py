"""bench.step_peak at a small size, as its users run it: a fresh process per selection on a data directory, the last
line a BENCH_RESULT with each step's time and the peak of the intervals it overlaps. (Figures are reported, never
asserted: only that they are there and consistent.)"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, platform_free_environ
from tests.helpers import generate


def _step_peak(data_dir, *args: str) -> dict:
    env = platform_free_environ(PYTHONPATH=str(ROOT), PERSONALIZATION_EVENTS_START="2026-01-01",
                                DAGSTER_HOME=str(data_dir / "dagster_home"))
    proc = subprocess.run([sys.executable, "-m", "bench.step_peak", str(data_dir), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("BENCH_RESULT ")
    return json.loads(last[len("BENCH_RESULT "):])


def test_each_step_gets_its_time_and_its_exact_peak(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "dagster_home").mkdir(parents=True)
    generate(data_dir / "landing", users=100, events=3_000, days=1)
    first = _step_peak(data_dir, "key:raw/events")
    assert set(first["steps"]) == {"raw_events"}
    again = _step_peak(data_dir, "key:privacy/consent_state", "--full-refresh")  # on the lake the first run built
    for result in (first, again):
        assert result["rss_sampling"].startswith(("VmHWM", "VmRSS"))
        for step in result["steps"].values():
            assert step["seconds"] > 0 and 0 < step["peak_mb"] <= result["peak_mb"]
        assert result["peak_mb"] >= result["rss_before_mb"] > 0
        assert result["peak_rss_mb"] >= result["peak_mb"]
    assert again["full_refresh"] and "privacy__consent_state" in again["steps"]
