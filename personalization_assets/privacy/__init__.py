"""The privacy layer (group `privacy`): identity links, consent ledger and state, suppression list, access audit log
(assets.py) and the privacy operations, each an asset of its own job (operations.py: erasure, retention, key rotation).

`defs(settings, lineage, job_tags)` returns them with the `privacy_requests`, `retention` and `rotate_pseudonym_keys`
jobs, whose runs carry `job_tags` (the code's fingerprint, so a later `personalization materialize` does not take what
they built for the work of other code). The erasure plan is derived from the lineage of every asset, so
`definitions.py` hands in the other layers' definitions (`lineage`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Dagster is imported by defs(): the collector imports privacy/consent.py without it
    import dagster as dg

    from personalization_assets.settings import Settings


def defs(settings: Settings, lineage: dg.Definitions, job_tags: Mapping[str, str]) -> dg.Definitions:
    import dagster as dg

    from personalization_assets.core.asset_keys import ERASURE_LOG, IDENTITY_LINKS, KEY_ROTATION_LOG, RAW_REQUESTS, RETENTION_LOG, SUPPRESSION_LIST
    from personalization_assets.privacy.assets import build_privacy_assets
    from personalization_assets.privacy.operations import build_erasure_asset, build_key_rotation_asset, build_retention_asset, lake_table_handlers

    assets = build_privacy_assets()
    # the erasure plan is derived from the lineage of everything, this layer included
    graph = dg.Definitions.merge(lineage, dg.Definitions(assets=assets)).resolve_asset_graph()
    privacy_requests = dg.define_asset_job(
        "privacy_requests",
        selection=dg.AssetSelection.assets(RAW_REQUESTS).required_multi_asset_neighbors()
        | dg.AssetSelection.assets(IDENTITY_LINKS, SUPPRESSION_LIST, ERASURE_LOG),
        tags=job_tags,
        description="Process data-subject requests: refresh the suppression list, then erase every suppressed subject "
        "from every asset (lineage-driven) and verify absence.",
    )
    retention = dg.define_asset_job("retention", selection=dg.AssetSelection.assets(RETENTION_LOG), tags=job_tags,
                                    description="Delete partitions older than privacy_policies/retention.yaml allows.")
    rotation = dg.define_asset_job("rotate_pseudonym_keys", selection=dg.AssetSelection.assets(KEY_ROTATION_LOG), tags=job_tags,
                                   description="Re-key every pseudonym to PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION (add the new key first).")
    handlers = lake_table_handlers(graph)  # the lake tables' erasure handlers: the locks their builders hold
    return dg.Definitions(
        assets=[*assets, build_erasure_asset(graph, warehouse_eraser_key="warehouse"), build_retention_asset(handlers),
                build_key_rotation_asset(handlers)],
        jobs=[privacy_requests, retention, rotation],
    )
