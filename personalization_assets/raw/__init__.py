"""The raw layer (group `raw`): landing zone -> raw lake (tracking-plan validation, quarantine, dedup).

`defs(settings)` returns its assets and the `ingest` job."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Dagster is imported by defs(): importing a module of the package stays light
    import dagster as dg

    from personalization_assets.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    import dagster as dg

    from personalization_assets.core.partitions import events_partitions
    from personalization_assets.raw.assets import build_raw_assets

    ingest = dg.define_asset_job(
        "ingest",
        selection=dg.AssetSelection.groups("raw"),
        description="Landing zone -> raw lake (new or changed event objects into the hours they hold, reference sources in full).",
    )
    return dg.Definitions(assets=build_raw_assets(events_partitions(settings.events_start), settings.lake_kind), jobs=[ingest])
