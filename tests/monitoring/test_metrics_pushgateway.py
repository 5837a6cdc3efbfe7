"""A real Pushgateway on 127.0.0.1 receives the metrics of a materialization; read back over HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request

import dagster as dg
import pytest

from personalization_assets.monitoring.metrics import MetricsPusher
from tests.conftest import free_port
from tests.helpers import defs_for_env, materialize
from tests.raw.hostile import PARTITION, write_hostile_landing


@pytest.fixture
def pushgateway(tmp_path):
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        if os.environ.get("PERSONALIZATION_REQUIRE_INFRA_TOOLS"):
            pytest.fail("prometheus-pushgateway missing: run infra/scripts/install-system-deps.sh")
        pytest.skip("prometheus-pushgateway not installed (Debian package prometheus-pushgateway)")
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={tmp_path / 'pg.db'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_materialization_metrics_reach_the_pushgateway(landing, pushgateway, monkeypatch):
    write_hostile_landing(landing)
    monkeypatch.setenv("PROMETHEUS_PUSHGATEWAY_URL", pushgateway)
    defs = defs_for_env()
    assert defs.resources["metrics"].pushgateway_url == pushgateway
    with dg.instance_for_test() as instance:
        result = materialize(defs, "key:raw/events", (PARTITION, PARTITION), instance=instance)
        run = instance.get_run_by_id(result.run_id)
        success = [e for e in result.all_events if e.event_type_value == "PIPELINE_SUCCESS"][0]
        sensor = defs.resolve_sensor_def("metrics_on_success")
        ctx = dg.build_run_status_sensor_context(
            sensor_name="metrics_on_success", dagster_instance=instance, dagster_run=run, dagster_event=success,
            resources={"metrics": MetricsPusher(pushgateway_url=pushgateway), "lake": defs.resources["lake"]},
        )
        sensor(ctx)
    body = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    lines = [ln for ln in body.splitlines() if ln.startswith("personalization_")]
    def value(prefix):
        return [float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(prefix)]
    out = value('personalization_rows_out_total{asset="raw/events"')
    inn = value('personalization_rows_in_total{asset="raw/events"')
    q = [ln for ln in lines if ln.startswith("personalization_rows_quarantined_total") and 'reason="malformed_json"' in ln]
    assert out and out[0] > 0 and inn and inn[0] > out[0]
    assert q, "quarantine counts by reason"
    assert value("personalization_run_duration_seconds") and value("personalization_runs_failed_total") == [0.0]
    assert value("personalization_dp_budget_remaining_epsilon") == [4.0]
