"""Declarative automation: which assets materialize on their own, and when.

* raw/*              — not automated here: the landing-arrival sensor requests exactly the changed hours.
* privacy/* (state)  — `derived_state`: as soon as an upstream raw table changed, not while one is running,
                       never past a failed blocking check (consent state must follow the ledger quickly).
* consented/events   — `partition_follows_raw`: the hour whose raw partition changed, and only that hour.
* features/*, segments/* — `freshness_driven`: when the asset's freshness policy is failing or about to
                       fail (WARN) AND an upstream has new data since the asset was last requested, never
                       while it or an upstream is in progress, never past a failed blocking check.
"""

from __future__ import annotations

import dagster as dg

AC = dg.AutomationCondition

_SAFE = (~AC.in_progress() & ~AC.any_deps_in_progress() & AC.all_deps_blocking_checks_passed()).with_label("safe_to_run")
_NEW_UPSTREAM = AC.any_deps_updated().since(AC.newly_requested() | AC.newly_updated()).with_label("upstream_has_new_data")


def derived_state() -> dg.AutomationCondition:
    return ((_NEW_UPSTREAM | AC.missing().newly_true()) & ~AC.any_deps_missing() & _SAFE).with_label("derived_state")


def partition_follows_raw() -> dg.AutomationCondition:
    raw_updated = (
        AC.any_deps_match(AC.newly_updated())
        .allow(dg.AssetSelection.assets(["raw", "events"]))
        .since(AC.newly_requested() | AC.newly_updated())
    ).with_label("raw_partition_updated")
    return (raw_updated & _SAFE).with_label("partition_follows_raw")


def freshness_driven() -> dg.AutomationCondition:
    stale = (AC.freshness_failed() | AC.freshness_warned() | AC.missing()).with_label("stale_or_about_to_be")
    # an upstream requested in the same tick counts as new data: features, warehouse and segments then go
    # in ONE run instead of one run (and one launch) per layer
    new_data = (_NEW_UPSTREAM | AC.any_deps_match(AC.will_be_requested())).with_label("upstream_has_or_gets_new_data")
    return (stale & new_data & _SAFE).with_label("freshness_driven")


def condition_for(key: dg.AssetKey) -> dg.AutomationCondition | None:
    layer = key.path[0]
    name = key.to_user_string()
    if layer == "raw" or name in ("privacy/erasure_log", "privacy/retention_log", "privacy/key_rotation_log", "privacy/access_audit_log"):
        return None
    if name == "consented/events":
        return partition_follows_raw()
    if layer in ("privacy", "consented"):
        return derived_state()
    if layer in ("features", "segments", "warehouse", "exports"):
        return freshness_driven()
    return None
