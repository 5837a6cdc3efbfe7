"""The single entry point: `dagster dev`, `dg`, the webserver, the CLI and the tests load `defs` from here.

Local and production differ only in the resources (chosen by PERSONALIZATION_ENV); the asset graph is
identical. Settings and privacy policies are validated while this module loads, so a misconfiguration
fails here with a message naming the setting (or policy file and key) and the fix.
"""

from __future__ import annotations

import dagster as dg

from personalization_assets.automation import conditions, freshness
from personalization_assets.automation.schedules import build_schedules
from personalization_assets.automation.sensors import AlertWebhook, build_landing_sensor, run_failure_alert
from personalization_assets.consented.assets import build_consented_assets
from personalization_assets.features import build_feature_assets
from personalization_assets.jobs import OPERATIONS, build_jobs
from personalization_assets.monitoring.cli_runs import fail_dead_cli_runs_sensor
from personalization_assets.monitoring.metrics import MetricsPusher, build_metrics_sensors
from personalization_assets.privacy.assets import build_privacy_assets
from personalization_assets.exports import build_export_assets
from personalization_assets.privacy.operations import build_erasure_asset, key_rotation_log, retention_log
from personalization_assets.core.policies import get_policy
from personalization_assets.raw.assets import build_raw_assets
from personalization_assets.core.partitions import events_partitions
from personalization_assets.resources import build_resources
from personalization_assets.settings import Settings, load_settings
from personalization_assets.warehouse import build_warehouse_defs


def _automate(spec: dg.AssetSpec) -> dg.AssetSpec:
    """Freshness policies and automation conditions, from the defaults in `automation/` (one place)."""
    return spec.replace_attributes(
        freshness_policy=freshness.policy_for(spec.key) or spec.freshness_policy,
        automation_condition=conditions.condition_for(spec.key) or spec.automation_condition,
    )


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    get_policy()  # validate privacy_policies/ at load time: a bad file fails here, naming file and key
    partitions = events_partitions(settings.events_start)
    storage_kind = "s3" if settings.lake_url.startswith("s3://") else "local"
    warehouse = build_warehouse_defs(settings)
    resources = {**build_resources(settings), **warehouse.resources}
    resources["alert_webhook"] = AlertWebhook(url=dg.EnvVar("PERSONALIZATION_ALERT_WEBHOOK_URL") if settings.alert_webhook_url else None)
    resources["metrics"] = MetricsPusher(pushgateway_url=settings.pushgateway_url)

    assets = [
        *build_raw_assets(partitions, storage_kind),
        *build_privacy_assets(),
        *build_consented_assets(partitions, storage_kind),
        *build_feature_assets(),
        *warehouse.assets,
        *build_export_assets(settings),
    ]
    # the erasure plan is derived from the lineage of everything above
    lineage = dg.Definitions(assets=assets, resources=resources).resolve_asset_graph()
    operations = [build_erasure_asset(lineage, warehouse_eraser_key="warehouse"), retention_log, key_rotation_log]

    automation_sensors = [
        dg.AutomationConditionSensorDefinition(
            f"automation_{name}", target=selection, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=5,
            description=f"Evaluates the declarative automation conditions of the {name} layer (see automation/conditions.py).",
        )
        for name, selection in (
            ("privacy", dg.AssetSelection.groups("privacy", "consented") - OPERATIONS),
            # one sensor for everything downstream of the consented tier, so that features, the warehouse load,
            # the marts and the exports requested in the same tick go in one run
            ("features_and_segments", dg.AssetSelection.groups("features", "warehouse", "segments", "exports")),
        )
    ]
    rebuild = dg.AssetSelection.groups("features", "segments", "warehouse")
    defs = dg.Definitions(
        assets=[*assets, *operations],
        asset_checks=list(warehouse.asset_checks or []),  # segments/segment_sizes:anomaly_segment_sizes
        resources=resources,
        jobs=build_jobs(),
        schedules=build_schedules(partitions, rebuild),
        sensors=[build_landing_sensor(partitions), run_failure_alert, fail_dead_cli_runs_sensor, *automation_sensors],
        # steps run in the run's own process: our steps are few and heavy (DuckDB uses the cores); the
        # multiprocess executor's per-step process start (≈3 s each here) dominated small runs
        executor=dg.in_process_executor,
    )
    defs = defs.map_resolved_asset_specs(func=_automate)
    fresh = [k for k in defs.resolve_asset_graph().get_all_asset_keys() if freshness.policy_for(k) is not None]
    return dg.Definitions.merge(defs, dg.Definitions(sensors=build_metrics_sensors(sorted(fresh, key=lambda k: k.to_user_string()))))


defs = build_definitions()
