"""Declarative automation, evaluated tick by tick with the cursor carried over: a stale asset with new
upstream data is requested once; one whose run is in progress, or whose upstream failed a blocking
check, is not. Uses the product's own conditions (automation/conditions.py) on a small graph, and checks
that the real definitions carry them."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest

from personalization_assets.automation.conditions import consented_follows_upstream, freshness_driven

# No public helper sets an asset's freshness state; the FreshnessDaemon does it in a deployment. Dagster's own
# tests report FreshnessStateChange events, and so do we, to put the asset in the FAIL/WARN state on demand.
from tests.dagster_internals import FreshnessState, report_freshness_state

CHECK_OK = {"value": True}


@dg.asset(check_specs=[dg.AssetCheckSpec("valid", asset="up", blocking=True)])
def up():
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(check_name="valid", passed=CHECK_OK["value"])


@dg.asset(deps=[up], automation_condition=freshness_driven(),
          freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=30), warn_window=timedelta(minutes=20)))
def down():
    return None


DEFS = dg.Definitions(assets=[up, down])


def _set_freshness(instance, state, previous=FreshnessState.UNKNOWN):
    report_freshness_state(instance, dg.AssetKey("down"), state, previous)


def _requested(result) -> bool:
    return result.get_num_requested(dg.AssetKey("down")) > 0


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        CHECK_OK["value"] = True
        yield inst


def test_stale_asset_with_new_upstream_data_is_requested_once(instance):
    dg.materialize([up, down], instance=instance)
    _set_freshness(instance, FreshnessState.FAIL)
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance)  # first tick only initializes the cursor
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance, cursor=r.cursor)
    assert not _requested(r), "stale but no new upstream data: nothing to do"
    dg.materialize([up], instance=instance)
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance, cursor=r.cursor)
    assert _requested(r), "stale and upstream has new data: requested"
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance, cursor=r.cursor)
    assert not _requested(r), "requested once, not on every tick"


def test_fresh_asset_waits_even_with_new_upstream_data(instance):
    dg.materialize([up, down], instance=instance)
    _set_freshness(instance, FreshnessState.PASS)
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance)
    dg.materialize([up], instance=instance)
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance, cursor=r.cursor)
    assert not _requested(r)
    _set_freshness(instance, FreshnessState.WARN, FreshnessState.PASS)  # about to fail -> go
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance, cursor=r.cursor)
    assert _requested(r)


def test_in_progress_asset_is_not_requested(instance):
    dg.materialize([up, down], instance=instance)
    _set_freshness(instance, FreshnessState.FAIL)
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance)
    job = DEFS.resolve_implicit_global_asset_job_def()
    # a queued, not yet finished run targeting `down` (as the run queue holds it while the daemon works)
    instance.create_run_for_job(job_def=job, asset_selection=frozenset({dg.AssetKey("down")}), status=dg.DagsterRunStatus.STARTED)
    dg.materialize([up], instance=instance)
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance, cursor=r.cursor)
    assert not _requested(r), "a run of the asset is in progress"


def test_failed_blocking_check_upstream_stops_automation(instance):
    dg.materialize([up, down], instance=instance)
    _set_freshness(instance, FreshnessState.FAIL)
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance)
    CHECK_OK["value"] = False
    dg.materialize([up], instance=instance, raise_on_error=False)
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance, cursor=r.cursor)
    assert not _requested(r), "never past a failed blocking check"
    CHECK_OK["value"] = True
    dg.materialize([up], instance=instance)
    r = dg.evaluate_automation_conditions(defs=DEFS, instance=instance, cursor=r.cursor)
    assert _requested(r)



def test_definitions_wiring(data_dir):
    from tests.helpers import defs_for_env

    g = defs_for_env().resolve_asset_graph()
    node = g.get(dg.AssetKey(["consented", "events_state"]))
    assert node.automation_condition.get_label() == consented_follows_upstream().get_label()
    # the hourly consented/events has none: requesting it would request every hour of history
    assert g.get(dg.AssetKey(["consented", "events"])).automation_condition is None
    assert g.get(dg.AssetKey(["consented", "events"])).freshness_policy is not None
    assert g.get(dg.AssetKey(["raw", "events"])).automation_condition is None  # the landing sensor drives raw


@pytest.mark.parametrize("scale", ["0.0001", "0.02", "1", "25"])
def test_freshness_policies_respect_dagster_minimums_at_any_scale(scale, monkeypatch):
    from personalization_assets.automation import freshness

    monkeypatch.setenv("PERSONALIZATION_FRESHNESS_SCALE", scale)
    for layer in freshness.LAYER_DEFAULTS:
        policy = freshness.policy_for(dg.AssetKey([layer, "x"]))
        assert policy.fail_window.to_timedelta() > policy.warn_window.to_timedelta() >= timedelta(minutes=1)


def test_runtime_raw_hour_requests_the_unpartitioned_consented_step(data_dir):
    """The ingestion step logs `AssetMaterialization(raw/events, partition=hour)` at runtime: the next tick
    requests consented/events_state (the step that finds its stale hours) once, and no hour of consented/events;
    never past a failed blocking check of a privacy input."""
    from tests.helpers import defs_for_env

    defs = defs_for_env()
    graph = defs.resolve_asset_graph()
    state, events = dg.AssetKey(["consented", "events_state"]), dg.AssetKey(["consented", "events"])
    selection = dg.AssetSelection.assets(state, events)

    def report(instance, key, passed=True):
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key))
        for check in graph.get(key).check_keys:
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(asset_key=key, check_name=check.name, passed=passed))

    def tick(instance, cursor):
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor, asset_selection=selection)

    with dg.instance_for_test() as instance:
        for key in graph.get(state).parent_keys:
            if key.path[0] == "privacy":
                report(instance, key)
        r = tick(instance, tick(instance, None).cursor)
        assert r.get_num_requested(state) == 0, "nothing new upstream"
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey(["raw", "events"]), partition="2026-11-28-13:00"))
        r = tick(instance, r.cursor)
        assert r.get_num_requested(state) == 1
        assert r.get_num_requested(events) == 0
        r = tick(instance, r.cursor)
        assert r.get_num_requested(state) == 0, "requested once"
        report(instance, dg.AssetKey(["privacy", "consent_state"]), passed=False)
        r = tick(instance, r.cursor)
        assert r.get_num_requested(state) == 0, "never past a failed blocking check of consent_state"


# ------------------------------------------------------------------------------------------------
# a step that writes several assets (features/* are one step) runs only when no input OF THE STEP is in progress

@dg.asset(key=["upstream", "writer_state"])
def writer_state():  # stands for consented/events_state: written by a long step of another run
    return None


@dg.asset(key=["upstream", "side_input"], check_specs=[dg.AssetCheckSpec("valid", asset=["upstream", "side_input"], blocking=True)])
def side_input():  # stands for privacy/consent_state: materialized early in that same run
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(check_name="valid", passed=CHECK_OK["value"])


FIRST, SECOND = dg.AssetKey(["features", "first_output"]), dg.AssetKey(["features", "second_output"])


@dg.multi_asset(specs=[dg.AssetSpec(FIRST, deps=[writer_state]), dg.AssetSpec(SECOND, deps=[FIRST, side_input])])
def one_step():  # not subsettable: requesting one output requests the step
    yield dg.MaterializeResult(asset_key=FIRST)
    yield dg.MaterializeResult(asset_key=SECOND)


def _automated(defs: dg.Definitions) -> dg.Definitions:
    """The product's wiring (definitions.py): conditions by layer, each step output also waiting for its step's inputs."""
    from personalization_assets.automation import automate, step_inputs

    inputs = step_inputs(defs)
    return defs.map_resolved_asset_specs(func=lambda spec: automate(spec, inputs))


STEP_DEFS = _automated(dg.Definitions(assets=[writer_state, side_input, one_step]))


def _step_tick(instance, cursor=None):
    return dg.evaluate_automation_conditions(defs=STEP_DEFS, instance=instance, cursor=cursor)


def _materialize_all(instance):
    for key in (writer_state, side_input):
        dg.materialize([key], instance=instance)
    dg.materialize([one_step], instance=instance, selection=[FIRST, SECOND])
    for key in (FIRST, SECOND):
        report_freshness_state(instance, key, FreshnessState.FAIL, FreshnessState.UNKNOWN)


def test_a_multi_asset_step_waits_while_an_input_of_any_of_its_outputs_is_in_progress(instance):
    """features/events_clean reads consented/events_state; features/purpose_eligibility (same step) does not, but reads
    privacy/consent_state, which the consented run materializes before its long consented step. Each output's
    condition looked at its own deps only, so the second output let the whole step through, and the step read the
    consented hours while they were being rewritten (bench/freshness_latency: the features run was requested at
    21.4 s, the consented run ended at 33.3 s)."""
    _materialize_all(instance)
    r = _step_tick(instance)
    job = STEP_DEFS.resolve_implicit_global_asset_job_def()
    run = instance.create_run_for_job(job_def=job, asset_selection=frozenset({writer_state.key}), status=dg.DagsterRunStatus.STARTED)
    dg.materialize([side_input], instance=instance)  # new data for the second output, whose own deps are not in progress
    r = _step_tick(instance, r.cursor)
    assert [r.get_num_requested(k) for k in (FIRST, SECOND)] == [0, 0], "an input of the step is being written"
    # the writer's run ends and its asset is materialized: now the step is requested, as one step
    instance.report_run_canceled(run)
    dg.materialize([writer_state], instance=instance)
    r = _step_tick(instance, r.cursor)
    assert [r.get_num_requested(k) for k in (FIRST, SECOND)] == [1, 1]


def test_a_multi_asset_step_waits_while_an_input_of_any_of_its_outputs_failed_a_blocking_check(instance):
    _materialize_all(instance)
    r = _step_tick(instance)
    CHECK_OK["value"] = False
    dg.materialize([side_input], instance=instance, raise_on_error=False)
    dg.materialize([writer_state], instance=instance)  # new data for the first output, whose own deps passed their checks
    r = _step_tick(instance, r.cursor)
    assert [r.get_num_requested(k) for k in (FIRST, SECOND)] == [0, 0], "never past a failed blocking check of a step input"


def test_the_real_features_step_waits_for_the_consented_step(data_dir):
    """On the real definitions: every features output carries the inputs of the whole features step."""
    from personalization_assets.automation import step_inputs
    from tests.helpers import defs_for_env

    defs = defs_for_env()
    graph = defs.resolve_asset_graph()
    inputs = step_inputs(defs)
    eligibility = dg.AssetKey(["features", "purpose_eligibility"])
    assert dg.AssetKey(["consented", "events_state"]) in inputs[eligibility]
    assert "whole_step_inputs_safe" in str(graph.get(eligibility).automation_condition.get_snapshot())


def test_the_real_features_step_runs_when_its_inputs_settle_and_waits_while_the_consented_step_runs(data_dir):
    """On the real definitions, ticks with runless events: the whole-step rule does not stop the features for good (its
    hourly input consented/events included), and a run writing consented/events_state holds every features output."""
    from tests.helpers import defs_for_env

    defs = defs_for_env()
    graph = defs.resolve_asset_graph()
    features = [k for k in graph.get_all_asset_keys() if k.path[0] == "features"]
    state = dg.AssetKey(["consented", "events_state"])

    def materialized(instance, key):
        node = graph.get(key)
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition="2026-11-28-13:00" if node.partitions_def else None))
        for check in node.check_keys:
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(asset_key=key, check_name=check.name, passed=True))

    def tick(instance, cursor):
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=dg.AssetSelection.groups("features"), cursor=cursor)

    def new_upstream_data(instance):
        materialized(instance, dg.AssetKey(["privacy", "consent_state"]))
        materialized(instance, state)

    with dg.instance_for_test() as instance:
        for key in graph.get_all_asset_keys():
            materialized(instance, key)
        for key in features:
            report_freshness_state(instance, key, FreshnessState.FAIL, FreshnessState.UNKNOWN)
        r = tick(instance, tick(instance, None).cursor)
        assert r.total_requested == 0, "nothing new upstream"
        run = instance.create_run_for_job(job_def=defs.resolve_implicit_global_asset_job_def(), asset_selection=frozenset({state}),
                                          status=dg.DagsterRunStatus.STARTED)
        materialized(instance, dg.AssetKey(["privacy", "consent_state"]))  # updated early in that run
        r = tick(instance, r.cursor)
        assert [r.get_num_requested(k) for k in features] == [0] * len(features), "consented/events_state is being written"
        instance.report_run_canceled(run)
        new_upstream_data(instance)
        r = tick(instance, r.cursor)
        assert [r.get_num_requested(k) for k in features] == [1] * len(features), "settled: the whole step, once"
