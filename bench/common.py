"""Shared definitions of the benchmark: the cutoff and the feature rules all three paths implement."""

from __future__ import annotations

import json
import resource
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


def peak_rss_mb() -> float:
    """Peak RSS of this process and (separately) of its largest child, in MB; the larger of the two."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


class RssSampler:
    """Samples this process's resident set (Linux /proc) every `interval` seconds in a thread, so a peak can be
    attributed to the step running at the time (ru_maxrss only gives the peak of the whole process)."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def current_mb() -> float | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            mb = self.current_mb()
            if mb is not None:
                self.samples.append((time.time(), mb))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak_between(self, start: float, end: float) -> float | None:
        inside = [mb for t, mb in self.samples if start <= t <= end]
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


def run_steps(instance, run_id: str) -> RunSteps:
    """Read a run's event log once: when each successful step started and ended, and which partitions it
    materialized per asset (sorted)."""
    starts: dict[str, float] = {}
    out = RunSteps()
    for entry in instance.all_logs(run_id):
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
    result["peak_rss_mb"] = peak_rss_mb()
    sys.stdout.write("\nBENCH_RESULT " + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
