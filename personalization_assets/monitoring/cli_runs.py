"""Runs executed in-process by the `personalization` CLI, and what happens when that process dies.

Dagster's run monitoring (the daemon, `run_monitoring` in dagster.yaml) checks the workers of runs started
through a run launcher. A run the CLI executes in-process (`execute_in_process`) has no launcher, so a
SIGKILLed or OOM-killed CLI left its run STARTED forever. Each CLI run carries its host, pid and process
start time as tags; `fail_dead_cli_runs` reports failed (through the instance, so failure sensors and
alerts fire) every unfinished run of this host whose process is gone or whose pid now belongs to another
process. It runs at every CLI start and in the `fail_dead_cli_runs` sensor (local `make dev`).
Runs of other hosts are left alone: their process cannot be checked from here.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

CLI_HOST_TAG = "personalization/cli_host"
CLI_PID_TAG = "personalization/cli_pid"
CLI_PROCESS_START_TAG = "personalization/cli_process_start"  # tells a reused pid from the original process
UNFINISHED = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def _process_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux /proc), None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def cli_run_tags() -> dict[str, str]:
    """Tags naming the process that executes a run in-process, so a later CLI can tell it died."""
    return {CLI_HOST_TAG: socket.gethostname(), CLI_PID_TAG: str(os.getpid()), CLI_PROCESS_START_TAG: _process_start(os.getpid()) or ""}


def fail_dead_cli_runs(instance) -> list[str]:
    """Report FAILURE for every unfinished CLI run of this host whose process is gone (see the module
    docstring). Returns the run ids marked failed."""
    host = socket.gethostname()
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED, tags={CLI_HOST_TAG: host})):
        try:
            pid = int(run.tags.get(CLI_PID_TAG, ""))
        except ValueError:
            continue
        started = run.tags.get(CLI_PROCESS_START_TAG) or None
        current = _process_start(pid)
        if current is not None and (started is None or current == started):
            continue  # still running
        instance.report_run_failed(run, message=f"The CLI process executing this run (pid {pid} on {host}) died without finishing it "
                                                "(killed or out of memory); marked failed when a later CLI or the fail_dead_cli_runs sensor "
                                                "found its process gone.")
        failed.append(run.run_id)
    return failed


@dg.sensor(
    name="fail_dead_cli_runs",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed the runs that a `personalization` CLI on this host executed in-process and that were "
    "left unfinished when its process died (Dagster's run monitoring only watches launched runs).",
)
def fail_dead_cli_runs_sensor(context: dg.SensorEvaluationContext):
    failed = fail_dead_cli_runs(context.instance)
    return dg.SkipReason(f"marked {len(failed)} run(s) of dead CLI processes failed: {', '.join(failed)}" if failed
                         else "no unfinished run of a dead CLI process")
