"""The features layer: consented events -> person-level feature tables (definitions: docs/ARCHITECTURE.md, "Features").

`defs(settings)` returns its assets (the feature multi-asset and its checks)."""

import dagster as dg

from personalization_assets.features.assets import FeatureConfig, build_feature_assets
from personalization_assets.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(assets=build_feature_assets())


__all__ = ["FeatureConfig", "build_feature_assets", "defs"]
