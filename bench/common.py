"""Shared definitions of the benchmark: the cutoff and the feature rules all three paths implement."""

from __future__ import annotations

import json
import resource
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

# the same parameters as the platform's FeatureConfig defaults
SESSION_GAP_MINUTES = 30
MAX_SESSION_HOURS = 24
LATE_BOUND_DAYS = 3
RFM_WINDOW_DAYS = 90
CONVERSIONS = ("Order Completed", "Subscription Started")
ENGAGEMENT_EVENTS = ("Content Viewed", "Content Shared", "Product Added", "Order Completed", "Subscription Started")


def as_of_for(end: str) -> datetime:
    """The cutoff: the end of the last generated day."""
    return datetime.combine(date.fromisoformat(end) + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)


@dataclass
class Timer:
    stages: dict = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - t, 3)


def free_port() -> int:
    """A TCP port free on loopback now (for a server the benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(at_least: float = 0.0) -> float:
    """Peak RSS of this process and (separately) of its largest child, in MB; the larger of the two, and of
    `at_least` (an RssSampler's peak: the sampler resets the kernel's high-water mark, which ru_maxrss reads)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own / 1024, kids / 1024, at_least), 1)


def _status_mb(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_high_water_mark() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: "5" to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """This process's peak resident set per `interval` seconds, so a peak can be attributed to the step running at
    the time (ru_maxrss only gives the peak of the whole process).

    Each sample is the kernel's high-water mark (VmHWM) since the previous sample, which is then reset: the exact
    peak of the interval, even of a spike shorter than it, or of one while a C call holds the GIL and this thread
    cannot run (a VmRSS read sees neither). Where the mark cannot
    be reset (not Linux, no /proc), the sample is the current VmRSS, as before. `samples` holds (time, MB): the
    peak of the interval that ended at that time."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started, self.exact = time.time(), False

    def _sample(self) -> None:
        mb = _status_mb("VmHWM" if self.exact else "VmRSS")
        if self.exact:
            _reset_high_water_mark()
        if mb is not None:
            self.samples.append((time.time(), mb))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._started = time.time()
        self.exact = _reset_high_water_mark()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def method(self) -> str:
        """How the samples were taken (recorded in result files, so figures from the two methods are not mixed)."""
        return f"VmHWM reset every {self.interval} s (exact)" if self.exact else f"VmRSS every {self.interval} s (misses short peaks)"

    @property
    def peak_mb(self) -> float:
        return round(max((mb for _, mb in self.samples), default=0.0), 1)

    def peak_between(self, start: float, end: float) -> float | None:
        """The peak of the intervals that overlap [start, end] (a sample covers the time since the previous one)."""
        inside, previous = [], self._started
        for t, mb in self.samples:
            if t >= start and previous <= end:
                inside.append(mb)
            previous = t
        return round(max(inside), 1) if inside else None


@dataclass
class StepTiming:
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class RunSteps:
    """Per-step timings of one Dagster run, from its STEP_START / STEP_SUCCESS events, and the partitions its
    asset materializations named."""

    steps: dict[str, StepTiming] = field(default_factory=dict)
    partitions: dict[str, list[str]] = field(default_factory=dict)

    def seconds(self, ndigits: int = 2) -> dict[str, float]:
        return {k: round(t.seconds, ndigits) for k, t in self.steps.items()}


def run_steps(instance, *run_ids: str) -> RunSteps:
    """Read the runs' event logs once: when each successful step started and ended, and which partitions they
    materialized per asset (sorted). Several runs: those of one `personalization materialize` (MaterializeRuns.run_ids:
    the landing sources' run, then the stale steps' run), whose steps are disjoint."""
    starts: dict[str, float] = {}
    out = RunSteps()
    for entry in (e for run_id in run_ids for e in instance.all_logs(run_id)):
        ev = entry.dagster_event
        if ev is None:
            continue
        if ev.event_type_value == "STEP_START":
            starts[ev.step_key] = entry.timestamp
        elif ev.event_type_value == "STEP_SUCCESS":
            out.steps[ev.step_key] = StepTiming(starts.get(ev.step_key, entry.timestamp), entry.timestamp)
        elif ev.event_type_value == "ASSET_MATERIALIZATION":
            m = ev.event_specific_data.materialization
            if m.partition:
                out.partitions.setdefault(m.asset_key.to_user_string(), []).append(m.partition)
    out.partitions = {k: sorted(v) for k, v in out.partitions.items()}
    return out


def emit(result: dict) -> None:
    """Print the path's result as the last line of stdout (the harness parses it)."""
    result["peak_rss_mb"] = peak_rss_mb(result.pop("sampled_peak_rss_mb", 0.0))
    sys.stdout.write("\nBENCH_RESULT " + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
