"""Jobs a user launches from the UI (or the CLI): ingest, privacy requests, retention, key rotation, full refresh."""

from __future__ import annotations

import dagster as dg

# steps that find their own stale work and take `full_refresh: true` to rebuild everything
INCREMENTAL_OPS = ("raw_events", "privacy__identity_links", "privacy__consent_ledger", "privacy__consent_state", "consented_events")
OPERATIONS = dg.AssetSelection.assets(["privacy", "erasure_log"], ["privacy", "retention_log"], ["privacy", "key_rotation_log"])


def build_jobs() -> list:
    ingest = dg.define_asset_job(
        "ingest",
        selection=dg.AssetSelection.groups("raw") - OPERATIONS,
        description="Landing zone -> raw lake (new or changed event objects into the hours they hold, reference sources in full).",
    )
    privacy_requests = dg.define_asset_job(
        "privacy_requests",
        selection=dg.AssetSelection.assets(["raw", "privacy_requests"]).required_multi_asset_neighbors()
        | dg.AssetSelection.assets(["privacy", "identity_links"], ["privacy", "suppression_list"], ["privacy", "erasure_log"]),
        description="Process data-subject requests: refresh the suppression list, then erase every suppressed subject "
        "from every asset (lineage-driven) and verify absence.",
    )
    retention = dg.define_asset_job("retention", selection=dg.AssetSelection.assets(["privacy", "retention_log"]),
                                    description="Delete partitions older than privacy_policies/retention.yaml allows.")
    rotation = dg.define_asset_job("rotate_pseudonym_keys", selection=dg.AssetSelection.assets(["privacy", "key_rotation_log"]),
                                   description="Re-key every pseudonym to PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION (add the new key first).")
    full_refresh = dg.define_asset_job("full_refresh", selection=dg.AssetSelection.all() - OPERATIONS,
                                       config={"ops": {op: {"config": {"full_refresh": True}} for op in INCREMENTAL_OPS}},
                                       description="Rebuild everything from the whole landing zone: the incremental steps forget "
                                       "what they read and rebuild every hour (`personalization materialize --full-refresh`).")
    return [ingest, privacy_requests, retention, rotation, full_refresh]
