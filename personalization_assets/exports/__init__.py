"""The exports layer (group `exports`): differentially private releases of warehouse aggregates."""

from personalization_assets.exports.assets import build_export_assets

__all__ = ["build_export_assets"]
