"""A run the CLI executes in-process whose process is SIGKILLed ends FAILURE (issue #15, item 8)."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg

from personalization_assets.monitoring.cli_runs import CLI_PID_TAG, fail_dead_cli_runs, fail_dead_cli_runs_sensor
from tests.conftest import ROOT

# a run executed in-process with the CLI's tags, whose process is killed (SIGKILL) in the middle of a step
KILLED_MID_RUN = """
import os, signal
import dagster as dg
from personalization_assets.monitoring.cli_runs import cli_run_tags

@dg.op
def step():
    os.kill(os.getpid(), signal.SIGKILL)

@dg.job
def victim():
    step()

victim.execute_in_process(instance=dg.DagsterInstance.get(), tags=cli_run_tags())
"""


def test_the_sensor_marks_the_run_of_a_killed_cli_process_failed(data_dir):
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_RUN], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == -9
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED  # what Dagster alone leaves behind
        result = fail_dead_cli_runs_sensor(dg.build_sensor_context(instance=instance))
        assert "marked 1 run" in result.skip_message
        run = instance.get_run_by_id(run.run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert fail_dead_cli_runs(instance) == []  # once


def test_a_run_whose_process_is_alive_is_left_alone(data_dir):
    from personalization_assets.monitoring.cli_runs import cli_run_tags

    with dg.DagsterInstance.get() as instance:
        job = dg.JobDefinition(graph_def=dg.GraphDefinition(name="alive", node_defs=[]))
        run = instance.create_run_for_job(job, tags=cli_run_tags())  # owned by this (live) process
        assert run.tags[CLI_PID_TAG] == str(os.getpid())
        assert fail_dead_cli_runs(instance) == []
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.NOT_STARTED


def test_a_cli_run_of_another_host_fails_once_its_heartbeat_is_stale(data_dir):
    """A CLI in another pod cannot be checked by pid: its heartbeat tag tells whether it still runs."""
    import time

    from personalization_assets.monitoring.cli_runs import CLI_HEARTBEAT_TAG, CLI_HOST_TAG, STALE_AFTER_SECONDS, heartbeat

    job = dg.JobDefinition(graph_def=dg.GraphDefinition(name="elsewhere", node_defs=[]))
    base = {CLI_HOST_TAG: "another-pod", CLI_PID_TAG: "7"}
    with dg.DagsterInstance.get() as instance:
        stale = instance.create_run_for_job(job, tags={**base, CLI_HEARTBEAT_TAG: str(int(time.time() - STALE_AFTER_SECONDS - 60))})
        fresh = instance.create_run_for_job(job, tags={**base, CLI_HEARTBEAT_TAG: str(int(time.time() - STALE_AFTER_SECONDS + 60))})
        # a live CLI keeps its run fresh: the heartbeat thread refreshes the tag
        with heartbeat(instance, fresh.run_id, interval=0.2):
            time.sleep(1.0)
        assert float(instance.get_run_by_id(fresh.run_id).tags[CLI_HEARTBEAT_TAG]) > time.time() - 5
        assert fail_dead_cli_runs(instance) == [stale.run_id]
        assert instance.get_run_by_id(stale.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(fresh.run_id).status == dg.DagsterRunStatus.NOT_STARTED
