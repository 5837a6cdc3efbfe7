"""Declarative automation: which assets materialize on their own, and when.

* raw/*              — not automated here: the landing-arrival sensor requests exactly the changed hours.
* privacy/* (state)  — `derived_state`: as soon as an upstream raw table changed, not while one is running,
                       never past a failed blocking check (consent state must follow the ledger quickly).
* consented/events_state — `consented_follows_upstream`: the unpartitioned step that writes consented/events
                       (consented/assets.py `consented_events`) runs as soon as a raw/events hour is materialized
                       (also runtime materializations logged by the unpartitioned ingestion step) or a privacy
                       input changed; it finds its own stale hours. consented/events itself (hourly,
                       skippable) has no condition: requesting it would request every hour.
* features/*, segments/* — `freshness_driven`: when the asset's freshness policy is failing or about to
                       fail (WARN) AND an upstream has new data since the asset was last requested, never
                       while it or an upstream is in progress, never past a failed blocking check.
* an output of a step that writes several assets and cannot run a subset (features/* are one step) — its condition
                       `& whole_step_inputs_safe`: requesting one output runs the whole step, so no input of ANY of
                       the step's outputs may be in progress or past a failed blocking check (`for_step_output`).
"""

from __future__ import annotations

import dagster as dg

from personalization_assets.core.asset_keys import (
    ACCESS_AUDIT_LOG,
    CONSENTED_EVENTS,
    CONSENTED_EVENTS_STATE,
    ERASURE_LOG,
    KEY_ROTATION_LOG,
    RAW_EVENTS,
    RETENTION_LOG,
)

AC = dg.AutomationCondition

_SAFE = (~AC.in_progress() & ~AC.any_deps_in_progress() & AC.all_deps_blocking_checks_passed()).with_label("safe_to_run")
_NEW_UPSTREAM = AC.any_deps_updated().since(AC.newly_requested() | AC.newly_updated()).with_label("upstream_has_new_data")


def derived_state() -> dg.AutomationCondition:
    return ((_NEW_UPSTREAM | AC.missing().newly_true()) & ~AC.any_deps_missing() & _SAFE).with_label("derived_state")


def consented_follows_upstream() -> dg.AutomationCondition:
    """For the unpartitioned state of the consented step. `any_deps_updated` of an unpartitioned asset sees every
    partition of raw/events, so an hour ingested at runtime (`AssetMaterialization(partition=...)`) counts.
    Not `derived_state`: `any_deps_missing` is true as long as one hour of raw/events was never ingested."""
    raw_or_privacy_updated = AC.any_deps_updated().since(AC.newly_requested() | AC.newly_updated()).with_label("raw_hour_or_privacy_input_updated")
    # blocking checks of the privacy inputs (ledger chain, consent state) must have passed; raw/events is left out:
    # over an unpartitioned target it means every hour of history, most of which was never ingested
    checks = AC.all_deps_blocking_checks_passed().ignore(dg.AssetSelection.assets(RAW_EVENTS)).with_label("privacy_inputs_checks_passed")
    safe = (~AC.in_progress() & ~AC.any_deps_in_progress() & checks).with_label("safe_to_run")
    return ((raw_or_privacy_updated | AC.missing().newly_true()) & safe).with_label("consented_follows_upstream")


def freshness_driven() -> dg.AutomationCondition:
    stale = (AC.freshness_failed() | AC.freshness_warned() | AC.missing()).with_label("stale_or_about_to_be")
    # an upstream requested in the same tick counts as new data: features, warehouse and segments then go
    # in ONE run instead of one run (and one launch) per layer
    new_data = (_NEW_UPSTREAM | AC.any_deps_match(AC.will_be_requested())).with_label("upstream_has_or_gets_new_data")
    return (stale & new_data & _SAFE).with_label("freshness_driven")


def for_step_output(condition: dg.AutomationCondition, other_inputs) -> dg.AutomationCondition:
    """`condition` of one output of a step that cannot run a subset, where `other_inputs` are the step's inputs that are
    not this output's own deps. Dagster evaluates each output's condition over its own deps, and requesting one output
    runs the whole step: without this, an output whose deps were settled launched the step while an input of another
    output was still being written (features/purpose_eligibility, whose deps are settled, launched the features step
    while consented/events_state, read by features/events_clean, was being rewritten)."""
    if not other_inputs:
        return condition
    blocking_ok = AC.all_checks_match(AC.check_passed() | AC.will_be_requested(), blocking_only=True)
    safe = None
    for key in sorted(other_inputs, key=lambda k: k.to_user_string()):
        one = AC.asset_matches(key, ~AC.in_progress() & blocking_ok)
        safe = one if safe is None else safe & one
    return (condition & safe.with_label("whole_step_inputs_safe")).with_label(condition.get_label())


def condition_for(key: dg.AssetKey) -> dg.AutomationCondition | None:
    layer = key.path[0]
    if layer == "raw" or key in (ERASURE_LOG, RETENTION_LOG, KEY_ROTATION_LOG, ACCESS_AUDIT_LOG):
        return None
    if key == CONSENTED_EVENTS_STATE:
        return consented_follows_upstream()
    if key == CONSENTED_EVENTS:
        return None  # written by the step of consented/events_state (see above)
    if layer in ("privacy", "consented"):
        return derived_state()
    if layer in ("features", "segments", "warehouse", "exports"):
        return freshness_driven()
    return None
