"""The exports layer (group `exports`): differentially private releases of warehouse aggregates (assets.py; the
DP mechanism and budget ledger are privacy/dp.py).

`defs(settings)` returns its assets."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Dagster is imported by defs(): importing a module of the package stays light
    import dagster as dg

    from personalization_assets.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    import dagster as dg

    from personalization_assets.exports.assets import build_export_assets

    return dg.Definitions(assets=build_export_assets(settings))


__all__ = ["defs"]
