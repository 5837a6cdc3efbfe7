"""The features layer: consented events -> person-level feature tables (definitions: docs/ARCHITECTURE.md, "Features")."""

from personalization_assets.features.assets import FeatureConfig, build_feature_assets

__all__ = ["FeatureConfig", "build_feature_assets"]
