"""bench.common.RssSampler: a peak shorter than the sampling interval is still seen, and attributed to its time."""

from __future__ import annotations

import time

import pytest

from bench.common import RssSampler

MB = 1024 * 1024


def test_a_spike_between_two_samples_is_caught():
    with RssSampler(interval=1.0) as rss:
        if not rss.exact:
            pytest.skip("no /proc/self/clear_refs here: the sampler falls back to VmRSS reads")
        start = time.time()
        spike = b"x" * (300 * MB)  # written (resident), then freed long before the first sample at 1 s
        del spike
        end = time.time()
        time.sleep(0.2)
    # a VmRSS read (the sampler before) sees only the end state: the 300 MB are gone by then
    assert rss.peak_mb >= 300
    assert rss.peak_between(start, end) >= 300
    assert rss.peak_between(end + 10, end + 20) is None
    assert rss.method.startswith("VmHWM")
