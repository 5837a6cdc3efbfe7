"""Same arguments => byte-identical files; generation streams in bounded memory."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from tests.generator.zone import all_files, event_files, generate


def test_same_arguments_give_identical_bytes(tmp_path):
    kw = {"users": 300, "events": 6000, "seed": 42, "days": 2, "bad_fraction": 0.05}
    generate(tmp_path / "a", **kw)
    generate(tmp_path / "b", **kw)
    a, b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 10
    assert [k for k in a if a[k] != b[k]] == []
    # gzip members carry no timestamp
    first = next(k for k in a if k.endswith(".gz"))
    assert a[first][4:8] == b"\x00\x00\x00\x00"


def test_different_seed_differs(tmp_path):
    kw = {"users": 300, "events": 6000, "days": 2}
    generate(tmp_path / "a", seed=1, **kw)
    generate(tmp_path / "b", seed=2, **kw)
    a, b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    differing = [k for k in a if k in b and a[k] != b[k]]
    assert len(differing) >= len(a) * 0.9


def test_uncompressed_and_files_per_hour(tmp_path):
    s = generate(tmp_path, users=100, events=3000, days=1, gzip=False, files_per_hour=4)
    files = event_files(tmp_path)
    assert files and all(p.name.endswith(".jsonl") for p in files)
    assert max(sum(1 for _ in p.parent.iterdir()) for p in files) == 4
    assert sum(p.read_bytes().count(b"\n") for p in files) == s.events_written == 3000


@pytest.mark.timeout(60)
@pytest.mark.integration  # 300k events under tracemalloc: not a unit-tier cost
def test_streaming_memory_and_speed(tmp_path):
    tracemalloc.start()
    try:
        t = time.perf_counter()
        s = generate(tmp_path, users=5000, events=300_000, days=7, seed=3, bad_fraction=0.01)
        elapsed = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n300k events in {elapsed:.1f}s under tracemalloc ({s.events_written / elapsed:,.0f} events/s), "
          f"Python heap peak {peak / 2**20:.1f} MiB, {s.event_bytes / s.events_written:.0f} bytes/event")
    assert s.events_written == 300_000 and s.event_files == len(event_files(tmp_path))
    assert peak < 100 * 2**20


@pytest.mark.timeout(30)
def test_write_errors_surface_without_hanging(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(RuntimeError, match="writing the landing zone failed"):
        generate(blocker / "landing", users=50, events=2000, days=1)
