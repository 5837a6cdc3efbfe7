"""The asset graph as a whole: one connected lineage from landing to segments, and a reviewed snapshot
of every asset (key, group, dependencies, kinds, partitioning, checks, automation, freshness, owners, tags
and the KEYS of its definition metadata: values such as the dbt manifest or column schemas are left to their
own tests) so an accidental change of a key,
a group or an edge shows up in review (`pytest --snapshot-update` after an intended change)."""

from __future__ import annotations

import dagster as dg

from tests.helpers import defs_for_env


def _upstream(graph, key) -> set:
    seen, stack = set(), [key]
    while stack:
        for parent in graph.get(stack.pop()).parent_keys:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def test_every_mart_and_export_reaches_the_raw_landing_assets(data_dir):
    graph = defs_for_env().resolve_asset_graph()
    marts = [k for k in graph.get_all_asset_keys() if k.path[0] in ("segments", "exports")]
    assert {k.path[-1] for k in marts} >= {"user_segments", "segment_membership", "advertising_audience", "segment_sizes"}
    for mart in marts:
        up = _upstream(graph, mart)
        assert dg.AssetKey(["raw", "events"]) in up, mart
        assert dg.AssetKey(["privacy", "consent_state"]) in up, mart
        if mart.path[0] == "segments":
            assert dg.AssetKey(["features", "user_rfm"]) in up, mart


def test_asset_graph_snapshot(data_dir, snapshot):
    defs = defs_for_env()
    graph = defs.resolve_asset_graph()
    rows = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        rows.append({
            "key": key.to_user_string(),
            "group": node.group_name,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "kinds": sorted(node.kinds),
            "partitioned": node.partitions_def is not None,
            "checks": sorted(c.name for c in node.check_keys),
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
            "freshness": node.freshness_policy is not None,
            "owners": sorted(node.owners),
            # kinds are tags too (dagster/kind/*): listed above
            "tags": {k: v for k, v in sorted(node.tags.items()) if not k.startswith("dagster/kind/")},
            "metadata_keys": sorted(node.metadata),
        })
    assert rows == snapshot


def test_side_inputs_are_declared_with_the_reason_they_are_not_dependencies(data_dir):
    """Raw ingestion drops the records of erased subjects with privacy/suppression_list, read from its last
    materialization. It cannot be a dependency, so every raw asset declares it as a side input in its metadata:
    - the steps of raw/events, raw/crm_profiles and raw/privacy_requests produce assets the list is derived from
      (raw -> privacy/identity_links -> privacy/suppression_list): the edge would be a cycle, which Dagster refuses;
    - raw/content_catalog holds no personal data: the edge would put it downstream of the personal sources, and the
      erasure plan (privacy/erasure.py plan_targets, driven by the lineage) would then treat it as holding subjects' data."""
    from personalization_assets.core.asset_keys import SIDE_INPUTS_METADATA, SUPPRESSION_LIST

    graph = defs_for_env().resolve_asset_graph()
    declared = {}
    for key in graph.get_all_asset_keys():
        value = graph.get(key).metadata.get(SIDE_INPUTS_METADATA)
        if value is not None:
            declared[key] = sorted(getattr(value, "value", value))
    tables = ["events", "crm_profiles", "privacy_requests", "content_catalog"]
    readers = {dg.AssetKey(["raw", t]) for t in tables} | {dg.AssetKey(["raw", f"{t}_quarantine"]) for t in tables}
    # the events also read the raw cutoff the retention run recorded (a message in an hour it removed is quarantined):
    # not a dependency either, since ingestion must not wait for, nor be made stale by, the daily retention run
    events = {dg.AssetKey(["raw", "events"]), dg.AssetKey(["raw", "events_quarantine"])}
    assert declared == {k: sorted([SUPPRESSION_LIST.to_user_string()] + (["privacy/retention_log"] if k in events else []))
                        for k in readers}
    derived_from = _upstream(graph, SUPPRESSION_LIST)
    cyclic = {k for k in readers if graph.get(k).execution_set_asset_keys & derived_from}
    assert cyclic == readers - {dg.AssetKey(["raw", "content_catalog"]), dg.AssetKey(["raw", "content_catalog_quarantine"])}
    assert not _upstream(graph, dg.AssetKey(["raw", "content_catalog"])) & {dg.AssetKey(["raw", "events"])}
