"""A landing run that carries the features, the warehouse load and the segments (automation/carried.py), executed
for real, and the declarative automation ticking before and after it as the daemon would: what the run carried is
not requested again, although it is stale by its freshness policy (the run wrote it after its inputs); a later new
input makes the automation request it (so the first assertion is not vacuous)."""

from __future__ import annotations

import dagster as dg

from personalization_assets.automation.carried import carried_downstream
from tests.automation.test_landing_sensor import _tick
from tests.dagster_internals import FreshnessState, report_freshness_state
from tests.helpers import defs_for_env, generate, materialize

FEATURES = dg.AssetKey(["features", "user_rfm"])
ELIGIBILITY = dg.AssetKey(["features", "purpose_eligibility"])  # a direct dependent of privacy/consent_state
SEGMENTS = dg.AssetKey(["segments", "user_segments"])


def test_what_the_landing_run_carried_the_automation_does_not_request_again(landing):
    generate(landing, users=60, events=1500, days=1)
    defs = defs_for_env()
    with dg.instance_for_test() as instance:
        requests, _ = _tick(defs, instance)
        events_run = next(r for r in requests if dg.AssetKey(["raw", "events"]) in r.asset_selection)
        assert FEATURES in events_run.asset_selection and SEGMENTS in events_run.asset_selection
        for r in requests:
            if r is not events_run:  # the reference sources' runs (CRM, catalog, requests), as the daemon runs them
                defs.resolve_implicit_global_asset_job_def().execute_in_process(
                    instance=instance, asset_selection=list(r.asset_selection), tags=r.tags)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the automation ticked before the run
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=list(events_run.asset_selection), tags=events_run.tags)
        assert result.success
        assert {FEATURES, SEGMENTS} <= {e.asset_key for e in result.get_asset_materialization_events()}
        carried = carried_downstream(defs).order
        for key in carried:  # stale by their policies, as a freshness daemon would find them
            report_freshness_state(instance, key, FreshnessState.FAIL)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert {k.to_user_string(): tick.get_num_requested(k) for k in carried if tick.get_num_requested(k)} == {}
        # new data upstream of the features (the consent state rebuilt): now the automation requests the features step
        materialize(defs, "key:privacy/consent_state", instance=instance)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert tick.get_num_requested(ELIGIBILITY) == 1
