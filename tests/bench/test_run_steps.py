"""bench.common.run_steps: the per-step timing read from a run's event log (bench/tick.py, bench/platform_path.py)."""

from __future__ import annotations

import time

import dagster as dg

from bench.common import run_steps

HOURS = dg.HourlyPartitionsDefinition(start_date="2026-11-28-00:00")


@dg.asset(partitions_def=HOURS)
def hourly():
    time.sleep(0.2)


@dg.asset
def slow():
    time.sleep(0.3)


@dg.asset(deps=[slow])
def after():
    return None


def test_run_steps_times_every_step_and_lists_partitions():
    with dg.instance_for_test() as instance:
        unpartitioned = dg.materialize([slow, after], instance=instance)
        partitioned = dg.materialize([hourly], instance=instance, partition_key="2026-11-28-05:00")
        timing = run_steps(instance, unpartitioned.run_id)
        assert set(timing.steps) == {"slow", "after"}
        assert timing.steps["slow"].seconds >= 0.3 and timing.steps["slow"].end <= timing.steps["after"].start
        assert timing.seconds()["slow"] >= 0.3 and timing.partitions == {}
        hourly_timing = run_steps(instance, partitioned.run_id)
        assert hourly_timing.partitions == {"hourly": ["2026-11-28-05:00"]}
        assert hourly_timing.steps["hourly"].seconds >= 0.2
