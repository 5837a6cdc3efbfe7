"""How dbt resources become Dagster assets.

* sources keep the key in their `meta.dagster.asset_key` (`["features", "<table>"]`), so the dbt graph hangs
  off the features layer's assets;
* models are keyed `[<layer>, <model>]` and grouped by layer, the layer coming from their folder:
  `models/staging` -> `warehouse`, `models/marts` -> `segments`;
* every model that reads a source also depends on `warehouse/features_loaded`, which makes the feature
  tables visible to the warehouse (Snowflake) before dbt reads them;
* kinds and storage kind name the warehouse of the environment (the manifest is parsed for `local`, so
  its adapter type is always duckdb);
* `meta.privacy.purpose` on a model becomes the tag `privacy/purpose`;
* `privacy/erasure` (the privacy layer's erasure handler, personalization_assets/privacy/erasure.py): views
  store no rows (`none`); tables declare theirs in `meta.privacy.erasure`, and a `warehouse` handler gets
  the model's relation (`<schema>.<table>`) filled in. A table without a declaration gets no handler, so
  the erasure plan refuses to load until someone decides how to erase from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtProject

from personalization_assets.warehouse.loader import FEATURES_LOADED, OWNERS

LAYER_BY_FOLDER = {"staging": "warehouse", "marts": "segments"}
WAREHOUSE_BY_ENV = {"local": "duckdb", "prod": "snowflake"}


def _meta(props: Mapping[str, Any]) -> Mapping[str, Any]:
    return props.get("config", {}).get("meta") or props.get("meta") or {}


def erasure_handler(props: Mapping[str, Any]) -> dict | None:
    if props.get("config", {}).get("materialized") == "view":
        return {"kind": "none", "reason": "dbt view: stores no rows, reads the feature tables (erased where they are stored)"}
    declared = _meta(props).get("privacy", {}).get("erasure")
    if not declared:
        return None
    handler = dict(declared)
    if handler.get("kind") == "warehouse":
        handler["relation"] = f"{props['schema']}.{props.get('alias') or props['name']}"
    return handler


def model_layer(props: Mapping[str, Any]) -> str:
    """`warehouse` (staging) or `segments` (marts), from the model's folder (fqn: [project, folder, ..., name])."""
    fqn = props.get("fqn") or []
    folder = fqn[1] if len(fqn) > 2 else ""
    try:
        return LAYER_BY_FOLDER[folder]
    except KeyError:
        raise ValueError(
            f"dbt model {props.get('unique_id')} is in folder {folder!r}; models must live under "
            f"{', '.join('models/' + f for f in LAYER_BY_FOLDER)} (the folder decides the Dagster layer)."
        ) from None


class WarehouseDbtTranslator(DagsterDbtTranslator):
    def __init__(self, env: str = "local"):
        # dbt tests become asset checks (the default, spelled out because the platform relies on it)
        super().__init__(DagsterDbtTranslatorSettings(enable_asset_checks=True))
        if env not in WAREHOUSE_BY_ENV:
            raise ValueError(f"unknown environment {env!r}")
        self.env = env
        self.warehouse = WAREHOUSE_BY_ENV[env]

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source" or _meta(dbt_resource_props).get("dagster", {}).get("asset_key"):
            return super().get_asset_key(dbt_resource_props)
        return dg.AssetKey([model_layer(dbt_resource_props), dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_group_name(dbt_resource_props)
        return model_layer(dbt_resource_props)

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> list[str] | None:
        return super().get_owners(dbt_resource_props) or list(OWNERS)

    def get_tags(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, str]:
        tags = dict(super().get_tags(dbt_resource_props))
        purpose = _meta(dbt_resource_props).get("privacy", {}).get("purpose")
        if purpose:
            tags["privacy/purpose"] = purpose
        if dbt_resource_props["resource_type"] == "model":
            tags["privacy/sensitivity"] = "pseudonymized"
        return tags

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props["resource_type"] == "source":
            return spec
        metadata = {"dagster/storage_kind": self.warehouse, "privacy/tier": model_layer(props)}
        handler = erasure_handler(props)
        if handler is not None:
            metadata["privacy/erasure"] = handler
        spec = spec.replace_attributes(kinds={"dbt", self.warehouse}).merge_attributes(metadata=metadata)
        reads_source = any(node.startswith("source.") for node in props.get("depends_on", {}).get("nodes", []))
        if reads_source and FEATURES_LOADED not in {dep.asset_key for dep in spec.deps}:
            spec = spec.merge_attributes(deps=[FEATURES_LOADED])
        return spec
