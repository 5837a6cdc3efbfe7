"""A real Pushgateway on 127.0.0.1 receives the metrics of a materialization; read back over HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from personalization_assets.monitoring.metrics import MetricsPusher
from tests.conftest import free_port
from tests.helpers import anomaly_config_file, block_on_event_anomalies, defs_for_env, materialize
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


def test_materialization_metrics_reach_the_pushgateway(landing, pushgateway, monkeypatch, tmp_path):
    write_hostile_landing(landing)
    monkeypatch.setenv("PROMETHEUS_PUSHGATEWAY_URL", pushgateway)
    # blocking anomaly checks record their pass on an hour still warming up (non-blocking ones record nothing there)
    monkeypatch.setenv("PERSONALIZATION_ANOMALY_CONFIG", anomaly_config_file(tmp_path, block_on_event_anomalies))
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
    # alerts on data: one anomaly result per check for the hour (warming up: a blocking check's pass), and the raw layer's lag
    anomaly = [ln for ln in lines if ln.startswith("personalization_anomaly_check_failed{")]
    assert len(anomaly) == 4 and all(f'partition="{PARTITION}"' in ln and ln.endswith(" 0") for ln in anomaly), anomaly
    lag = [float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith("personalization_landing_to_fresh_lag_seconds{") and 'layer="raw"' in ln]
    assert len(lag) == 1 and lag[0] > 3600  # the hour ended long ago (2026-11-28 13:00)
    # rows per partition: the hour's own figures, labelled with the hour (not a run range)
    assert any(f'partition="{PARTITION}"' in ln for ln in lines if ln.startswith("personalization_rows_out_total"))


DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "monitoring" / "grafana-dashboard.json"
RULES = DASHBOARD.with_name("alerts.yml")


def test_grafana_dashboard_queries_only_metrics_the_code_pushes(landing):
    """Every metric a dashboard panel queries is one build_registry publishes (from a real run), every
    recording rule it queries exists in alerts.yml, and lag, throughput, quarantine and anomaly panels exist."""
    import json
    import re

    import yaml

    from personalization_assets.monitoring.metrics import build_registry

    write_hostile_landing(landing)
    defs = defs_for_env()
    with dg.instance_for_test() as instance:
        result = materialize(defs, "key:raw/events", (PARTITION, PARTITION), instance=instance)
        registry = build_registry(instance, instance.get_run_by_id(result.run_id), [dg.AssetKey(["raw", "events"])], {"2026-11": 4.0})
    published = {family.name for family in registry.collect()}
    assert {"personalization_anomaly_check_failed", "personalization_anomaly_score", "personalization_landing_to_fresh_lag_seconds"} <= published
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(personalization_[a-z_]+)\b", e)}
    assert used and used <= published, used - published
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    assert {m for e in exprs for m in re.findall(r"\b(personalization:[a-z_:0-9]+)", e)} <= recorded
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("lag", "rows read", "quarantine", "anomaly"):
        assert topic in titles, topic
    # the anomaly and lag metrics the rules alert on are on the dashboard
    assert {"personalization_anomaly_check_failed", "personalization_landing_to_fresh_lag_seconds"} <= used
