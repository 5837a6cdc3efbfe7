"""The collector benchmark at a small size: every message sent is counted in the landing zone and the result
file is written. (Timing is reported by `make bench-collector`, never asserted here.)"""

from __future__ import annotations

import json

import bench.collector as collector_bench


def test_collector_bench_lands_every_message_and_writes_its_result(tmp_path):
    out = tmp_path / "collector.json"
    assert collector_bench.main(["--messages", "2000", "--clients", "2", "--batch", "100", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["collector"]["messages"] == result["bare_write"]["messages"] == 2000  # equal work (counted in the landing zone)
    assert result["collector"]["requests"] == 20 and result["collector"]["p99_ms"] >= result["collector"]["p50_ms"] > 0
