"""The single entry point: `dagster dev`, `dg`, the webserver, the CLI and the tests load `defs` from here.

Local and production differ only in the resources (chosen by PERSONALIZATION_ENV); the asset graph is
identical. Settings are validated while this module loads, so a misconfiguration fails here with a
message naming the setting and the fix.
"""

from __future__ import annotations

import dagster as dg

from personalization_assets.jobs import build_jobs
from personalization_assets.privacy.assets import build_privacy_assets
from personalization_assets.privacy.operations import build_erasure_asset, key_rotation_log, retention_log
from personalization_assets.privacy.policies import get_policy
from personalization_assets.raw.assets import build_raw_assets
from personalization_assets.raw.partitions import events_partitions
from personalization_assets.resources import build_resources
from personalization_assets.settings import Settings, load_settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    partitions = events_partitions(settings.events_start)
    storage_kind = "s3" if settings.lake_url.startswith("s3://") else "local"
    get_policy()  # validate privacy_policies/ at load time: a bad file fails here, naming file and key
    assets = [*build_raw_assets(partitions, storage_kind), *build_privacy_assets(partitions, storage_kind)]
    # the erasure plan is derived from the lineage of everything above
    resources = build_resources(settings)
    lineage = dg.Definitions(assets=assets, resources=resources).resolve_asset_graph()
    operations = [build_erasure_asset(lineage), retention_log, key_rotation_log]
    return dg.Definitions(assets=[*assets, *operations], resources=resources, jobs=build_jobs())


defs = build_definitions()
