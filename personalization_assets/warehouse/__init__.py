"""The warehouse layer: feature tables -> dbt (staging views, segment marts) in DuckDB locally, Snowflake in prod.

    features/<table>  ──>  warehouse/features_loaded  ──>  warehouse/stg_<table>  ──>  segments/<mart>
         (lake)          (prod: write_pandas to Snowflake;       (dbt views)                  (dbt tables,
                          local: checks the lake in place)                                     contracts enforced)

`defs(settings)` returns the assets and the `dbt`, `snowflake` and `warehouse` resources
(see resources.py); the loader also uses the platform's `lake` resource
(personalization_assets.resources.build_resources), so merge it with the platform's definitions.
"""

from __future__ import annotations

import dagster as dg

from personalization_assets.settings import Settings, load_settings


def defs(settings: Settings) -> dg.Definitions:
    # imported here: building the dbt assets reads dbt/target/manifest.json (`make dbt-parse`)
    from personalization_assets.warehouse.assets import build_dbt_assets
    from personalization_assets.warehouse.loader import build_features_loaded_asset
    from personalization_assets.warehouse.resources import (
        dbt_resource,
        read_segment_sizes,
        warehouse_resources,
    )

    dbt_env: tuple[tuple[str, str], ...] = ()
    if settings.is_local:
        # dbt runs inside dbt/ and reads PERSONALIZATION_DATA_DIR (profiles.yml) and PERSONALIZATION_LAKE_URL
        # (source locations): hand the dbt subprocess the absolute paths the settings resolved (a relative
        # one would resolve against dbt/, an unset lake URL would not follow a custom data dir). Scoped to
        # the dbt invocation, so nothing leaks into the process environment.
        dbt_env = (("PERSONALIZATION_DATA_DIR", str(settings.data_dir)), ("PERSONALIZATION_LAKE_URL", settings.lake_url))
    from personalization_assets.checks.anomalies import build_segment_size_check

    return dg.Definitions(
        asset_checks=[build_segment_size_check(lambda snowflake: read_segment_sizes(load_settings(), snowflake))],
        assets=[
            build_features_loaded_asset(settings.env),
            build_dbt_assets(settings.env, dbt_env, str(settings.warehouse_path) if settings.is_local else None,
                             str(settings.data_dir / "dbt_state")),
        ],
        resources={"dbt": dbt_resource(settings), **warehouse_resources(settings)},
    )


__all__ = ["defs"]
