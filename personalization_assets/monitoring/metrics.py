"""Run metrics in Prometheus format, pushed to a Pushgateway after every run (when configured).

Names and labels are the contract of infra/monitoring/alerts.yml:

| metric | labels | meaning |
|---|---|---|
| `personalization_rows_in_total` | asset, partition | records read by the asset in its last run for that partition |
| `personalization_rows_out_total` | asset, partition | rows written |
| `personalization_rows_quarantined_total` | asset, partition, reason | rows quarantined, by reason |
| `personalization_run_duration_seconds` | job, status | wall time of the last run of the job |
| `personalization_runs_failed_total` | job | failed runs of the job since the instance started (monotone) |
| `personalization_last_success_timestamp_seconds` | job | end time of the job's last successful run |
| `personalization_freshness_lag_seconds` | asset | now − last materialization, for assets with a freshness policy |
| `personalization_dp_budget_remaining_epsilon` | period | ε left in the current DP budget period |
| `personalization_anomaly_check_failed` | asset, check, partition, severity | 1 when the data-anomaly check failed for the partition in the run, else 0 (checks/anomalies.yaml; raw/events, consented/events per hour; features/* with partition "") |
| `personalization_anomaly_score` | asset, check, partition | the check's robust score (median/MAD z; segment sizes: largest relative change) |
| `personalization_landing_to_fresh_lag_seconds` | layer | now − end of the newest landing hour the layer has processed (raw, consented, features, segments) |

Each run pushes its own group (`job`, `run_id` grouping key is NOT used: a group per job keeps the
gateway bounded), so the gateway always holds the latest value per job and series.
"""


import time
from typing import Optional

import dagster as dg
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from pydantic import Field

from personalization_assets.core.asset_keys import CONSENTED_EVENTS, RAW_EVENTS, USER_RFM, USER_SEGMENTS
from personalization_assets.core.storage import LakeStorage

EVENT_MATERIALIZATION = dg.DagsterEventType.ASSET_MATERIALIZATION


class MetricsPusher(dg.ConfigurableResource):
    """Pushes to PROMETHEUS_PUSHGATEWAY_URL; a no-op when it is not set."""

    pushgateway_url: Optional[str] = Field(default=None, description="e.g. http://pushgateway:9091")
    job_label: str = "personalization"

    def push(self, registry: CollectorRegistry, grouping_key: dict[str, str]) -> bool:
        if not self.pushgateway_url:
            return False
        push_to_gateway(self.pushgateway_url, job=self.job_label, registry=registry, grouping_key=grouping_key, timeout=10)
        return True


def _md(md, key, default=None):
    v = md.get(key)
    return default if v is None else getattr(v, "value", v)


def build_registry(instance: dg.DagsterInstance, run: dg.DagsterRun, freshness_assets: list[dg.AssetKey], dp_remaining: dict[str, float] | None = None) -> CollectorRegistry:
    reg = CollectorRegistry()
    rows_in = Gauge("personalization_rows_in_total", "Records read by the asset's last run", ["asset", "partition"], registry=reg)
    rows_out = Gauge("personalization_rows_out_total", "Rows written by the asset's last run", ["asset", "partition"], registry=reg)
    quarantined = Gauge("personalization_rows_quarantined_total", "Rows quarantined by the asset's last run", ["asset", "partition", "reason"], registry=reg)
    duration = Gauge("personalization_run_duration_seconds", "Wall time of the job's last run", ["job", "status"], registry=reg)
    failed = Gauge("personalization_runs_failed_total", "Failed runs of the job (monotone)", ["job"], registry=reg)
    last_ok = Gauge("personalization_last_success_timestamp_seconds", "End of the job's last successful run", ["job"], registry=reg)
    lag = Gauge("personalization_freshness_lag_seconds", "Seconds since the asset's last materialization", ["asset"], registry=reg)
    budget = Gauge("personalization_dp_budget_remaining_epsilon", "Epsilon left in the DP budget period", ["period"], registry=reg)
    anomaly_failed = Gauge("personalization_anomaly_check_failed", "1 if the data-anomaly check failed for the partition",
                           ["asset", "check", "partition", "severity"], registry=reg)
    anomaly_score = Gauge("personalization_anomaly_score", "Robust score of the data-anomaly check", ["asset", "check", "partition"], registry=reg)
    layer_lag = Gauge("personalization_landing_to_fresh_lag_seconds", "Now minus the end of the newest landing hour the layer has processed",
                      ["layer"], registry=reg)

    seen = set()
    for record in instance.get_records_for_run(run.run_id, of_type=EVENT_MATERIALIZATION).records:
        mat = record.event_log_entry.dagster_event.event_specific_data.materialization
        asset = mat.asset_key.to_user_string()
        partition = mat.partition or ""
        md = mat.metadata
        # each partition records its own figures (also in range runs): one series per partition
        if (asset, partition) in seen:
            continue
        seen.add((asset, partition))
        label = partition
        rows_out.labels(asset, label).set(float(_md(md, "rows_written", _md(md, "dagster/row_count", 0)) or 0))
        if _md(md, "records_read") is not None:
            rows_in.labels(asset, label).set(float(_md(md, "records_read")))
        reasons = _md(md, "quarantine_by_reason")
        if reasons and not asset.endswith("_quarantine"):
            for reason, n in dict(reasons).items():
                quarantined.labels(asset, label, reason).set(float(n))
    stats = instance.get_run_stats(run.run_id)
    if stats.start_time and stats.end_time:
        duration.labels(run.job_name, run.status.value).set(stats.end_time - stats.start_time)
        if run.status == dg.DagsterRunStatus.SUCCESS:
            last_ok.labels(run.job_name).set(stats.end_time)
    failed.labels(run.job_name).set(instance.get_runs_count(dg.RunsFilter(job_name=run.job_name, statuses=[dg.DagsterRunStatus.FAILURE])))
    now = time.time()
    for key in freshness_assets:
        event = instance.get_latest_materialization_event(key)
        if event is not None:
            lag.labels(key.to_user_string()).set(max(0.0, now - event.timestamp))
    for period, eps in (dp_remaining or {}).items():
        budget.labels(period).set(eps)
    for asset, check, partition, failed_, severity, score in anomaly_results(instance, run.run_id):
        anomaly_failed.labels(asset, check, partition, severity).set(1.0 if failed_ else 0.0)
        if score is not None:
            anomaly_score.labels(asset, check, partition).set(score)
    for layer, seconds in landing_to_fresh_lag(instance, now).items():
        layer_lag.labels(layer).set(seconds)
    return reg


def anomaly_results(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str, str, bool, str, float | None]]:
    """(asset, check, partition, failed, severity, score) of the run's data-anomaly check evaluations."""
    out = []
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records:
        ev = record.event_log_entry.dagster_event.event_specific_data
        if not ev.check_name.startswith("anomaly_"):
            continue
        score = ev.metadata.get("score")
        out.append((ev.asset_key.to_user_string(), ev.check_name, ev.partition or "", not ev.passed, ev.severity.value.lower(),
                    None if score is None else float(getattr(score, "value", score))))
    return out


# the asset whose materializations stand for each layer's freshness
LAYER_ASSETS = {
    "raw": RAW_EVENTS,
    "consented": CONSENTED_EVENTS,
    "features": USER_RFM,
    "segments": USER_SEGMENTS,
}


def landing_to_fresh_lag(instance: dg.DagsterInstance, now: float) -> dict[str, float]:
    """Per layer: now − end of the newest landing hour it has processed. Partitioned layers: their newest
    materialized hour; unpartitioned ones: the newest raw/events hour materialized before their own latest
    materialization (what they were built from). A few indexed event-log reads, no data scan."""
    from personalization_assets.core.partitions import partition_start

    def newest_hour(key: dg.AssetKey, before: float | None = None) -> float | None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, before_timestamp=before), limit=200, ascending=False
        ).records
        hours = [partition_start(r.asset_materialization.partition).timestamp() + 3600 for r in records
                 if r.asset_materialization is not None and r.asset_materialization.partition]
        return max(hours) if hours else None

    out = {}
    for layer, key in LAYER_ASSETS.items():
        if layer in ("raw", "consented"):
            hour_end = newest_hour(key)
        else:
            latest = instance.get_latest_materialization_event(key)
            hour_end = newest_hour(LAYER_ASSETS["raw"], before=latest.timestamp) if latest is not None else None
        if hour_end is not None:
            out[layer] = max(0.0, now - hour_end)
    return out


def dp_budget_remaining(lake) -> dict[str, float]:
    from datetime import datetime, timezone

    from personalization_assets.privacy.dp import BudgetLedger, period_of
    from personalization_assets.core.policies import get_policy

    policy = get_policy()
    period = period_of(policy, datetime.now(timezone.utc))
    return {period: BudgetLedger.open(lake, policy, None).remaining(period)}


def push_run_metrics(instance, run, pusher: MetricsPusher, lake, freshness_assets) -> bool:
    if not pusher.pushgateway_url:
        return False
    registry = build_registry(instance, run, freshness_assets, dp_budget_remaining(lake))
    return pusher.push(registry, {"dagster_job": run.job_name})


def build_metrics_sensors(freshness_assets: list[dg.AssetKey]) -> list:

    @dg.run_status_sensor(
        name="metrics_on_success",
        run_status=dg.DagsterRunStatus.SUCCESS,
        description="Pushes the run's metrics (rows in/out/quarantined, duration, freshness lag, DP budget) to "
        "PROMETHEUS_PUSHGATEWAY_URL after every successful run.",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )
    def metrics_on_success(context: dg.RunStatusSensorContext, metrics: MetricsPusher, lake: LakeStorage):
        push_run_metrics(context.instance, context.dagster_run, metrics, lake, freshness_assets)

    @dg.run_failure_sensor(
        name="metrics_on_failure",
        description="Pushes the failed run's metrics (duration, failed-run total) to PROMETHEUS_PUSHGATEWAY_URL.",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )
    def metrics_on_failure(context: dg.RunFailureSensorContext, metrics: MetricsPusher, lake: LakeStorage):
        push_run_metrics(context.instance, context.dagster_run, metrics, lake, freshness_assets)

    return [metrics_on_success, metrics_on_failure]
