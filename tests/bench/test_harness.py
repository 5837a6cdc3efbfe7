"""The benchmark harness at a small size: the three paths do the same work, and the result file is written.
(Timing is reported by `make bench`, never asserted here.)"""

from __future__ import annotations

import json

import bench.run as harness

EVENTS = 6_000  # every path still sees sessions, affinity and purchases; the size is make bench's business


def test_three_paths_agree_and_the_result_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(harness, "DOCS", tmp_path / "BENCHMARKS.md")
    report = harness.run(events=EVENTS, users=200, days=2, workdir=tmp_path / "work", paths=["floor", "peer", "platform"])
    assert report["equal_work"], report["mismatches"]
    totals = {name: r["totals"] for name, r in report["paths"].items()}
    assert totals["platform"]["sessions"] == totals["floor"]["sessions"] == totals["peer"]["sessions"] > 0
    assert totals["platform"]["affinity_rows"] == totals["peer"]["affinity_rows"] > 0
    assert totals["platform"]["monetary"] == totals["floor"]["monetary"] > 0
    assert all(r["events"] == EVENTS and r["peak_rss_mb"] > 0 for r in report["paths"].values())
    path = harness.write_result(report)
    saved = json.loads(path.read_text())
    assert saved["events"] == EVENTS and set(saved["paths"]) == {"floor", "peer", "platform"} and "ratios" in saved
    harness.update_docs(report)
    assert "platform/floor" in (tmp_path / "BENCHMARKS.md").read_text()
