"""The consented layer (group `consented`): raw data pseudonymized per privacy_policies/classification.yaml and kept
where the subject's consent allows it (assets.py; the per-batch transform in transform.py, the incremental
bookkeeping of consented/events in state.py).

`defs(settings)` returns its assets (their checks are specs of the assets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Dagster is imported by defs(): importing a module of the package stays light
    import dagster as dg

    from personalization_assets.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    import dagster as dg

    from personalization_assets.consented.assets import build_consented_assets
    from personalization_assets.core.partitions import events_partitions

    return dg.Definitions(assets=build_consented_assets(events_partitions(settings.events_start), settings.lake_kind))
