"""Runs executed in-process by the `personalization` CLI, and what happens when that process dies.

Dagster's run monitoring (the daemon, `run_monitoring` in dagster.yaml) checks the workers of runs started
through a run launcher. A run the CLI executes in-process (`execute_in_process`) has no launcher, so a
SIGKILLed or OOM-killed CLI left its run STARTED forever. Each CLI run carries its host, pid and process
start time as tags; `fail_dead_cli_runs` reports failed (through the instance, so failure sensors and
alerts fire) every unfinished run of this host whose process is gone or whose pid now belongs to another
process. A run of another host (a CLI in a Kubernetes Job pod, a CI runner) cannot be checked that way:
the CLI refreshes a heartbeat tag every HEARTBEAT_SECONDS while its run executes, and such a run is
failed once its heartbeat is older than STALE_AFTER_SECONDS. It runs at every CLI start and in the
`fail_dead_cli_runs` sensor (wherever the daemon runs).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager

import dagster as dg

CLI_HOST_TAG = "personalization/cli_host"
CLI_PID_TAG = "personalization/cli_pid"
CLI_PROCESS_START_TAG = "personalization/cli_process_start"  # tells a reused pid from the original process
CLI_HEARTBEAT_TAG = "personalization/cli_heartbeat"  # unix time, refreshed while the run executes
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 300.0  # tolerates clock skew between hosts and a stalled process
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
    return {CLI_HOST_TAG: socket.gethostname(), CLI_PID_TAG: str(os.getpid()), CLI_PROCESS_START_TAG: _process_start(os.getpid()) or "",
            CLI_HEARTBEAT_TAG: str(int(time.time()))}


@contextmanager
def heartbeat(instance, run_id: str, interval: float = HEARTBEAT_SECONDS):
    """Refresh the run's heartbeat tag every `interval` seconds while the block runs (in a thread)."""
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            try:
                if instance.has_run(run_id):
                    instance.add_run_tags(run_id, {CLI_HEARTBEAT_TAG: str(int(time.time()))})
            except Exception:  # noqa: BLE001 - a missed beat must never fail the run
                pass

    thread = threading.Thread(target=beat, name="cli-run-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _dead(run, host: str, now: float) -> str | None:
    """Why the run's CLI process is considered dead, or None if it may be alive."""
    try:
        pid = int(run.tags.get(CLI_PID_TAG, ""))
    except ValueError:
        return None
    if run.tags.get(CLI_HOST_TAG) == host:
        started = run.tags.get(CLI_PROCESS_START_TAG) or None
        current = _process_start(pid)
        if current is not None and (started is None or current == started):
            return None
        return f"its CLI process (pid {pid} on {host}) is gone"
    try:
        beat = float(run.tags.get(CLI_HEARTBEAT_TAG, ""))
    except ValueError:
        return None  # another host and no heartbeat: cannot be judged from here
    if now - beat > STALE_AFTER_SECONDS:
        return f"its CLI process (pid {pid} on {run.tags.get(CLI_HOST_TAG)}) sent no heartbeat for {now - beat:.0f} s"
    return None


def fail_dead_cli_runs(instance) -> list[str]:
    """Report FAILURE for every unfinished CLI run whose process is gone (this host: pid check; other
    hosts: stale heartbeat; see the module docstring). Returns the run ids marked failed."""
    host, now = socket.gethostname(), time.time()
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED)):
        if CLI_PID_TAG not in run.tags:
            continue  # not a CLI run: launched runs are watched by Dagster's run monitoring
        reason = _dead(run, host, now)
        if reason is None:
            continue
        instance.report_run_failed(run, message=f"This run was executed in-process by a `personalization` CLI and never finished: {reason} "
                                                "(killed or out of memory). Marked failed by personalization_assets.monitoring.cli_runs.")
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
