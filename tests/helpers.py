"""Helpers for materializing the real definitions on the environment the test configured."""

from __future__ import annotations

import dagster as dg

from personalization_assets.definitions import build_definitions
from personalization_assets.settings import load_settings


def defs_for_env() -> dg.Definitions:
    return build_definitions(load_settings())


def materialize(defs: dg.Definitions, selection: str, partitions: tuple[str, str] | None = None, instance=None, raise_on_error=True):
    graph = defs.resolve_asset_graph()
    keys = dg.AssetSelection.from_string(selection).required_multi_asset_neighbors().resolve(graph)
    tags = {}
    if partitions:
        tags = {"dagster/asset_partition_range_start": partitions[0], "dagster/asset_partition_range_end": partitions[1]}
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(), asset_selection=list(keys), tags=tags, raise_on_error=raise_on_error
    )


def check_results(result) -> dict[str, bool]:
    out = {}
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            d = ev.event_specific_data
            out[d.asset_check_key.to_user_string()] = d.passed
    return out


def materializations(result) -> dict[str, dict]:
    out = {}
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_MATERIALIZATION":
            m = ev.event_specific_data.materialization
            out[m.asset_key.to_user_string()] = {k: getattr(v, "value", v) for k, v in m.metadata.items()}
    return out
