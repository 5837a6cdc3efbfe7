"""core.memory.release_freed_memory: what a step freed leaves the process's resident set before the next step.

A naive version (nothing, or only Arrow's pool, or only a garbage collection) keeps the freed heap resident: the
drop measured here would be about zero."""

from __future__ import annotations

import gc

import pyarrow as pa
import pytest

from personalization_assets.core.memory import _malloc_trim, release_freed_memory

pytestmark = pytest.mark.unit

MB = 1024 * 1024


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(_malloc_trim() is None, reason="no glibc malloc_trim (the release is then Arrow's pool only)")
def test_freed_heap_with_survivors_is_returned():
    # 200 MB of 1 kB blocks from malloc, one in a hundred kept: the freed runs sit between live blocks, where free()
    # cannot shrink the heap (it only trims its top)
    blocks = [bytes(1000) for _ in range(200_000)]
    survivors = blocks[::100]
    del blocks
    gc.collect()
    before = _rss()
    release_freed_memory()
    after = _rss()
    assert len(survivors) == 2_000
    assert before - after > 100 * MB, f"resident set {before / MB:.0f} MB -> {after / MB:.0f} MB"


def test_arrow_pool_pages_are_released():
    # 320 MB of 16 kB Arrow buffers, one in fifty kept: Arrow's pool (mimalloc) keeps the freed pages for reuse
    buffers = [pa.allocate_buffer(16_000) for _ in range(20_000)]
    for b in buffers:  # one byte per page written: resident
        memoryview(b).cast("B")[::4096] = bytes(len(range(0, 16_000, 4096)))
    survivors = buffers[::50]
    del buffers
    before = _rss()
    release_freed_memory()
    after = _rss()
    assert len(survivors) == 400
    assert before - after > 100 * MB, f"resident set {before / MB:.0f} MB -> {after / MB:.0f} MB"
