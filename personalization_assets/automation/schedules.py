"""Schedules (all defined here, running by default in local dev):

| schedule | cron (UTC) | what |
|---|---|---|
| `landing_extraction_every_5_minutes` | `*/5 * * * *` | ingest the hours of the last 3 days (and reference sources) whose landing files changed and have no run yet — the backstop of the landing sensor |
| `retention_daily` | `15 3 * * *` | delete partitions older than `privacy_policies/retention.yaml` |
| `segments_nightly_rebuild` | `30 2 * * *` | full rebuild of the features and warehouse marts |
"""

from __future__ import annotations

import dagster as dg

from personalization_assets.automation.carried import Carried
from personalization_assets.automation.sensors import (
    LANDING_TARGET,
    landing_state,
    run_requests_for,
)
from personalization_assets.resources import PlatformConfig
from personalization_assets.core.storage import LandingZone


def build_schedules(partitions_def: dg.PartitionsDefinition, rebuild_selection: dg.AssetSelection, carried: Carried | None = None,
                    tags: dict[str, str] | None = None) -> list:
    @dg.schedule(
        name="landing_extraction_every_5_minutes",
        cron_schedule="*/5 * * * *",
        execution_timezone="UTC",
        target=LANDING_TARGET,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every 5 minutes: the sensor's backstop. Requests an incremental ingestion run when the landing objects "
        "changed and no successful or running ingestion covers them yet (and the changed reference sources). Stateless; "
        "de-duplicated with the sensor by a digest tag.",
    )
    def landing_extraction(context: dg.ScheduleEvaluationContext, landing: LandingZone, platform: PlatformConfig):
        state = landing_state(landing, events_layout=getattr(platform, "events_layout", "auto"))
        requests = run_requests_for(state, {}, context.instance, with_followers=True, carried=carried, tags=tags)
        if not requests:
            return dg.SkipReason("no changed landing files without an ingestion run")
        return requests

    retention = dg.ScheduleDefinition(
        name="retention_daily",
        cron_schedule="15 3 * * *",
        execution_timezone="UTC",
        job_name="retention",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Daily retention per privacy_policies/retention.yaml.",
    )
    rebuild = dg.define_asset_job("segments_rebuild", selection=rebuild_selection, tags=tags,
                                  description="Full rebuild of features and warehouse segments.")
    nightly = dg.ScheduleDefinition(
        name="segments_nightly_rebuild",
        cron_schedule="30 2 * * *",
        execution_timezone="UTC",
        job=rebuild,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Nightly full rebuild of the features and the warehouse marts.",
    )
    return [landing_extraction, retention, nightly]
