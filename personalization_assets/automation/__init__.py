"""The automation layer: what runs when. Freshness policies (freshness.py, one place) and declarative automation
conditions (conditions.py) applied to every asset, the landing sensor and its schedule backstop (sensors.py,
schedules.py), the declarative-automation sensors, run-failure alerts, run metrics and the dead-CLI-run sweeper,
and the cross-layer jobs (`full_refresh`, `segments_rebuild`).

`defs(settings, platform)` returns them with the `alert_webhook` and `metrics` resources; `platform` is the
definitions of the data layers (the sensors target their assets). `automate` is applied to every asset spec."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from personalization_assets.automation import conditions, freshness
from personalization_assets.settings import Settings

# steps that find their own stale work and take `full_refresh: true` to rebuild everything
INCREMENTAL_OPS = ("raw_events", "raw_crm_profiles", "raw_content_catalog", "raw_privacy_requests", "privacy__identity_links",
                   "privacy__consent_ledger", "privacy__consent_state", "consented_events", "feature_tables")


def step_inputs(platform: dg.Definitions) -> dict[dg.AssetKey, frozenset[dg.AssetKey]]:
    """For each output of a step that writes several assets and cannot run a subset: the step's inputs (deps of any
    of its outputs, outside the step) that are not that output's own deps."""
    graph = platform.resolve_asset_graph()
    out: dict[dg.AssetKey, frozenset[dg.AssetKey]] = {}
    for assets_def in {id(node.assets_def): node.assets_def for node in graph.asset_nodes}.values():
        keys = set(assets_def.keys)
        if len(keys) < 2 or assets_def.can_subset:
            continue
        inputs = {p for k in keys for p in graph.get(k).parent_keys} - keys
        for k in keys:
            out[k] = frozenset(inputs - set(graph.get(k).parent_keys))
    return out


def automate(spec: dg.AssetSpec, inputs_of_step: dict[dg.AssetKey, frozenset[dg.AssetKey]] | None = None) -> dg.AssetSpec:
    """Freshness policies and automation conditions, from the defaults in `automation/` (one place). `inputs_of_step`
    (`step_inputs`): an output of a step that cannot run a subset also waits for the inputs of the step's other outputs."""
    condition = conditions.condition_for(spec.key)
    if condition is not None and inputs_of_step:
        condition = conditions.for_step_output(condition, inputs_of_step.get(spec.key, frozenset()))
    return spec.replace_attributes(
        freshness_policy=freshness.policy_for(spec.key) or spec.freshness_policy,
        automation_condition=condition or spec.automation_condition,
    )


def defs(settings: Settings, platform: dg.Definitions, run_tags: Mapping[str, str]) -> dg.Definitions:
    from personalization_assets.automation.carried import carried_downstream
    from personalization_assets.automation.schedules import build_schedules
    from personalization_assets.automation.sensors import AlertWebhook, build_landing_sensor, run_failure_alert
    from personalization_assets.core.partitions import events_partitions
    from personalization_assets.monitoring.cli_runs import fail_dead_cli_runs_sensor
    from personalization_assets.monitoring.metrics import MetricsPusher, build_metrics_sensors
    from personalization_assets.privacy.operations import OPERATIONS

    partitions = events_partitions(settings.events_start)
    carried = carried_downstream(platform)  # what a landing run takes along when it is due
    # every run this code launches names the code, policies and settings it ran with (`run_tags`: automation/staleness.py)
    tags = dict(run_tags)
    automation_sensors = [
        dg.AutomationConditionSensorDefinition(
            f"automation_{name}", target=selection, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=5, run_tags=tags,
            description=f"Evaluates the declarative automation conditions of the {name} layer (see automation/conditions.py).",
        )
        for name, selection in (
            # the privacy layer's derived state and the consented tier (whose step follows it)
            ("privacy", dg.AssetSelection.groups("privacy", "consented") - OPERATIONS),
            # one sensor for everything downstream of the consented tier, so that features, the warehouse load,
            # the marts and the exports requested in the same tick go in one run
            ("features_and_segments", dg.AssetSelection.groups("features", "warehouse", "segments", "exports")),
        )
    ]
    full_refresh = dg.define_asset_job("full_refresh", selection=dg.AssetSelection.all() - OPERATIONS, tags=tags,
                                       config={"ops": {op: {"config": {"full_refresh": True}} for op in INCREMENTAL_OPS}},
                                       description="Rebuild everything from the whole landing zone: the incremental steps forget "
                                       "what they read and rebuild every hour (`personalization materialize --full-refresh`).")
    # run metrics carry the freshness lag of every asset with a policy
    fresh = sorted((k for k in platform.resolve_asset_graph().get_all_asset_keys() if freshness.policy_for(k) is not None),
                   key=lambda k: k.to_user_string())
    return dg.Definitions(
        jobs=[full_refresh],
        schedules=build_schedules(partitions, dg.AssetSelection.groups("features", "segments", "warehouse"), carried, tags),
        sensors=[build_landing_sensor(partitions, carried, tags), run_failure_alert, fail_dead_cli_runs_sensor, *automation_sensors,
                 *build_metrics_sensors(fresh)],
        resources={
            "alert_webhook": AlertWebhook(url=dg.EnvVar("PERSONALIZATION_ALERT_WEBHOOK_URL") if settings.alert_webhook_url else None),
            "metrics": MetricsPusher(pushgateway_url=settings.pushgateway_url),
        },
    )
