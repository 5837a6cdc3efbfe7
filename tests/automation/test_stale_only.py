"""`personalization materialize` with no selection runs the root steps, then only what their changes (or an earlier
partial run) made stale (automation/staleness.py), through `run_materialize` itself on a small graph with a real
Dagster instance:

    root (versioned by a file's content) -> mid0 -> middle (blocking check) -> pair_a ┐ one step that cannot
    root ---------------------------------------------------------------------> pair_b ┘ run a subset -> after_b
                                                    middle -> after_middle

`pair_b` comes before `middle` in the key order but must run whenever `pair_a` does (the same step), and then so
must `after_b`: the case that a one-pass plan gets wrong when `middle` turns stale after the step was looked at."""


import hashlib
import os
from pathlib import Path

import dagster as dg
import pytest

from personalization_assets.automation import staleness
from personalization_assets.core.asset_keys import RETENTION_LOG, STALE_AFTER_METADATA
from personalization_assets.cli import run_materialize

pytestmark = pytest.mark.integration

DIR_ENV = "STALE_TEST_DIR"


def _dir() -> Path:
    return Path(os.environ[DIR_ENV])


@dg.asset(key="root")
def root():
    content = (_dir() / "landing.txt").read_bytes()
    return dg.MaterializeResult(data_version=dg.DataVersion(hashlib.sha256(content).hexdigest()))


@dg.asset(key="mid0", deps=["root"])
def mid0():
    return None


@dg.asset(key="middle", deps=["mid0"], check_specs=[dg.AssetCheckSpec("valid", asset="middle", blocking=True)])
def middle():
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(check_name="valid", passed=not (_dir() / "make_check_fail").exists())


@dg.multi_asset(specs=[dg.AssetSpec("pair_a", deps=["middle"]), dg.AssetSpec("pair_b", deps=["root"])], can_subset=False)
def pair():
    yield dg.MaterializeResult(asset_key="pair_a")
    yield dg.MaterializeResult(asset_key="pair_b")


class AfterConfig(dg.Config):
    cutoff: str = "default"
    full_refresh: bool = False  # as the platform's incremental steps have: how it builds, not what


@dg.asset(key="after_b", deps=["pair_b"])
def after_b(config: AfterConfig):
    return dg.MaterializeResult(metadata={"cutoff": config.cutoff})


@dg.asset(key="after_middle", deps=["middle"])
def after_middle():
    return None


@dg.asset(key="other_root")
def other_root():
    if (_dir() / "make_other_root_fail").exists():
        raise RuntimeError("the other source's landing cannot be read")
    return dg.MaterializeResult(data_version=dg.DataVersion((_dir() / "other.txt").read_text()))


@dg.asset(key="after_other", deps=["other_root"])
def after_other():
    return None


@dg.asset(key=RETENTION_LOG)
def retention_log():
    """Stands for the retention job's log asset (privacy/operations.py): deletes hours in place, read by nothing."""
    return dg.MaterializeResult(metadata={"partitions_removed": int((_dir() / "removed").read_text())})


DEFS = dg.Definitions(assets=[root, mid0, middle, pair, after_b, after_middle, other_root, after_other, retention_log])
# the same graph with the platform's executor (definitions.py), which tags a run launched without our tag
PLATFORM_EXECUTOR_DEFS = dg.Definitions(
    assets=[root, mid0, middle, pair, after_b, after_middle, other_root, after_other, retention_log],
    executor=staleness.fingerprinting_executor,
    jobs=[dg.define_asset_job("materialize_all", selection=dg.AssetSelection.all() - dg.AssetSelection.assets(RETENTION_LOG)),
          # a job of ours: its runs carry the tag the code server computed (`staleness.run_tags`), whatever their config
          dg.define_asset_job("rebuild_after_b", selection=dg.AssetSelection.assets("after_b"), tags=staleness.run_tags())],
)
ROOTS = {"root", "other_root"}
ALL_BUT_ROOT = {"mid0", "middle", "pair_a", "pair_b", "after_b", "after_middle", "after_other"}


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv(DIR_ENV, str(tmp_path))
    (tmp_path / "landing.txt").write_text("v1")
    (tmp_path / "other.txt").write_text("o1")
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        yield tmp_path, instance


def _run(instance, select=None, defs=DEFS, run_config=None):
    ok, text, result = run_materialize(select=select, defs=defs, instance=instance, echo=lambda *a, **k: None, run_config=run_config)
    built = {ev.event_specific_data.materialization.asset_key.to_user_string()
             for ev in result.all_events if ev.event_type_value == "ASSET_MATERIALIZATION"}
    return ok, text, result, built


def test_a_run_with_nothing_new_runs_only_the_root_steps(world):
    _, instance = world
    ok, _, result, built = _run(instance)
    assert ok and built == {*ROOTS, *ALL_BUT_ROOT} and len(result.run_ids) == 2
    assert set(map(dg.AssetKey.to_user_string, result.plan.stale)) == ALL_BUT_ROOT  # never materialized

    ok, text, result, built = _run(instance)
    assert ok and built == ROOTS, "the root re-ran on unchanged input: its data version is the same, nothing is stale"
    assert len(result.run_ids) == 1 and not result.plan.stale and "every asset is up to date" not in text
    assert {k.to_user_string() for k in result.plan.fresh} == ALL_BUT_ROOT


def test_a_changed_root_rebuilds_everything_downstream(world):
    tmp_path, instance = world
    _run(instance)
    (tmp_path / "landing.txt").write_text("v2")
    ok, _, result, built = _run(instance)
    assert ok and built == {*ROOTS, *ALL_BUT_ROOT} - {"after_other"}, "after_other reads only the other, unchanged root"
    assert result.plan.stale[dg.AssetKey("mid0")] == "root changed"


def test_an_asset_rebuilt_alone_makes_exactly_its_downstream_stale_including_its_steps_other_output(world):
    _, instance = world
    _run(instance)
    assert _run(instance, select="key:mid0")[3] == {"mid0"}
    ok, _, result, built = _run(instance)
    # middle reads mid0, pair_a reads middle; pair_b is written by the same step, so after_b must follow too
    assert ok and built == {*ROOTS, "middle", "pair_a", "pair_b", "after_b", "after_middle"}
    assert result.plan.stale[dg.AssetKey("middle")] == "mid0 changed"
    assert result.plan.stale[dg.AssetKey("pair_b")] == "written by the same step as pair_a"
    assert result.plan.stale[dg.AssetKey("after_b")] == "pair_b is rebuilt"
    assert _run(instance)[3] == ROOTS  # and then it is settled


def test_a_failed_blocking_check_holds_what_reads_the_asset_and_the_asset_is_tried_again(world):
    tmp_path, instance = world
    _run(instance)
    (tmp_path / "make_check_fail").touch()
    (tmp_path / "landing.txt").write_text("v2")
    ok, _, _, built = _run(instance)
    # in the run, Dagster holds what follows middle's failed check (the pair step as a whole: pair_a reads middle)
    assert not ok and "middle" in built and not built & {"after_middle", "pair_a", "pair_b", "after_b"}

    # nothing new, but middle's check failed: middle is tried again, and what reads it is not run past the failure
    ok, text, result, built = _run(instance)
    assert not ok and built == {*ROOTS, "middle"}
    assert result.plan.stale[dg.AssetKey("middle")] == "blocking check valid of middle failed: run again"
    assert "(blocking check valid of middle failed: run again)" in text

    # a failure held until the check passes, even when the failed asset is not run again (a selection elsewhere)
    ok, _, result, _ = _run(instance, select="key:root")
    plan = staleness.stale_assets(instance, DEFS.resolve_asset_graph(), {dg.AssetKey(k) for k in ALL_BUT_ROOT} - {dg.AssetKey("middle")},
                                  staleness.platform_fingerprint())
    assert plan.held[dg.AssetKey("after_middle")] == "blocking check valid of middle failed"
    assert plan.held[dg.AssetKey("pair_a")] == plan.held[dg.AssetKey("pair_b")] and dg.AssetKey("after_b") in plan.held

    (tmp_path / "make_check_fail").unlink()
    ok, _, _, built = _run(instance)
    assert ok and built == {*ROOTS, "middle", "pair_a", "pair_b", "after_b", "after_middle"}
    assert _run(instance)[3] == ROOTS


def test_other_code_or_settings_rebuild_everything_the_fingerprint_covers(world, monkeypatch):
    _, instance = world
    _run(instance)
    before = staleness.platform_fingerprint()
    monkeypatch.setenv("PERSONALIZATION_STALE_TEST_SETTING", "1")
    assert staleness.platform_fingerprint() != before
    monkeypatch.setenv("PERSONALIZATION_STALE_TEST_SECRET_KEY", "1")  # a secret's value is not part of it
    with_secret = staleness.platform_fingerprint()
    monkeypatch.setenv("PERSONALIZATION_STALE_TEST_SECRET_KEY", "2")
    assert staleness.platform_fingerprint() == with_secret
    # how fast it is read does not decide the tables, nor how the data dir is spelled (`make demo` sets the one the CLI
    # defaults to); another data dir does locally (the warehouse file lives there); what a setting's file says does
    monkeypatch.setenv("PERSONALIZATION_LANDING_READ_CONCURRENCY", "3")
    assert staleness.platform_fingerprint() == with_secret
    monkeypatch.chdir(_dir())
    monkeypatch.delenv("PERSONALIZATION_DATA_DIR", raising=False)
    default_dir = staleness.platform_fingerprint()
    monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(_dir() / ".data"))
    assert staleness.platform_fingerprint() == default_dir
    monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(_dir() / "elsewhere"))
    assert staleness.platform_fingerprint() != default_dir
    monkeypatch.setenv("PERSONALIZATION_ENV", "prod")
    prod = staleness.platform_fingerprint()
    monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(_dir() / ".data"))
    assert staleness.platform_fingerprint() == prod, "in production the data dir holds no table"
    monkeypatch.delenv("PERSONALIZATION_ENV")
    config = _dir() / "anomalies.yaml"
    config.write_text("a: 1\n")
    monkeypatch.setenv("PERSONALIZATION_ANOMALY_CONFIG", str(config))
    named = staleness.platform_fingerprint()
    config.write_text("a: 2\n")
    assert staleness.platform_fingerprint() != named
    ok, _, result, built = _run(instance)
    assert ok and built == {*ROOTS, *ALL_BUT_ROOT}
    assert result.plan.stale[dg.AssetKey("after_b")] == "last built by other code, policies, settings or configuration"


def test_a_selection_runs_what_it_names_even_when_up_to_date(world):
    _, instance = world
    _run(instance)
    ok, _, result, built = _run(instance, select="key:after_b")
    assert ok and built == {"after_b"} and result.plan is None


def test_a_retention_run_that_removed_partitions_makes_everything_built_before_it_stale(world):
    tmp_path, instance = world
    _run(instance)
    (tmp_path / "removed").write_text("0")
    assert _run(instance, select="key:privacy/retention_log")[0]
    assert _run(instance)[3] == ROOTS, "a retention run that removed nothing changes nothing"
    (tmp_path / "removed").write_text("3")
    assert _run(instance, select="key:privacy/retention_log")[0]
    ok, _, result, built = _run(instance)
    assert ok and built == {*ROOTS, *ALL_BUT_ROOT}
    assert result.plan.stale[dg.AssetKey("mid0")] == "the retention run removed old partitions since"
    assert _run(instance)[3] == ROOTS


def test_a_root_step_that_fails_holds_what_reads_it_and_the_rest_goes_on(world):
    tmp_path, instance = world
    _run(instance)
    (tmp_path / "make_other_root_fail").touch()
    (tmp_path / "other.txt").write_text("o2")
    (tmp_path / "landing.txt").write_text("v2")
    ok, _, result, built = _run(instance)
    assert not ok and built == {"root", *ALL_BUT_ROOT} - {"after_other"}
    assert result.plan.held == {dg.AssetKey("after_other"): "the step of other_root failed"}
    (tmp_path / "make_other_root_fail").unlink()
    ok, _, result, built = _run(instance)
    assert ok and built == {*ROOTS, "after_other"}


def test_a_run_given_a_configuration_leaves_what_it_built_stale_for_the_default_configuration(world):
    _, instance = world
    _run(instance)
    ok, _, result, built = _run(instance, run_config={"ops": {"after_b": {"config": {"cutoff": "2026-11-01"}}}})
    assert ok and result.plan is None  # an explicit configuration runs everything it names
    ok, _, result, built = _run(instance)
    assert ok and built == {*ROOTS, *ALL_BUT_ROOT}, "the tables of --as-of are not those of the default cutoff"
    assert _run(instance)[3] == ROOTS


# --- an input partitioned by hour and versioned as a whole (raw/events), with few partitions ---------------------------

HOURS = dg.HourlyPartitionsDefinition(start_date="2026-11-28-00:00", end_date="2026-11-28-10:00")  # 10 partitions


@dg.multi_asset(specs=[dg.AssetSpec("manifest"), dg.AssetSpec("events", partitions_def=HOURS, skippable=True, deps=["manifest"])])
def ingest(context: dg.AssetExecutionContext):
    content = (_dir() / "landing.txt").read_text()
    version = dg.DataVersion(hashlib.sha256(content.encode()).hexdigest())
    if content != (_dir() / "ingested.txt").read_text() if (_dir() / "ingested.txt").exists() else True:
        (_dir() / "ingested.txt").write_text(content)
        context.log_event(dg.AssetMaterialization(asset_key="events", partition="2026-11-28-03:00"))
    yield dg.MaterializeResult(asset_key="manifest", data_version=version)
    yield dg.MaterializeResult(asset_key="events", data_version=version)


@dg.asset(key="reads_events", deps=["events"])
def reads_events():
    due = (_dir() / "due_at").read_text() if (_dir() / "due_at").exists() else None
    return dg.MaterializeResult(metadata={STALE_AFTER_METADATA: due} if due else {})


HOURLY = dg.Definitions(assets=[ingest, reads_events])


def test_an_input_with_few_partitions_versioned_as_a_whole_settles(world):
    """With fewer than 100 partitions Dagster records a hash of the per-partition versions as the input's version;
    the version of the materialization the asset read is what compares."""
    tmp_path, instance = world
    assert _run(instance, defs=HOURLY)[3] == {"manifest", "events", "reads_events"}
    assert _run(instance, defs=HOURLY)[3] == {"manifest", "events"}
    (tmp_path / "landing.txt").write_text("v2")
    assert _run(instance, defs=HOURLY)[3] == {"manifest", "events", "reads_events"}
    assert _run(instance, defs=HOURLY)[3] == {"manifest", "events"}


def test_a_materialization_due_again_at_a_time_runs_again_from_then_on(world):
    tmp_path, instance = world
    (tmp_path / "due_at").write_text("2999-01-01T00:00:00+00:00")
    _run(instance, defs=HOURLY)
    assert _run(instance, defs=HOURLY)[3] == {"manifest", "events"}, "not due yet"
    (tmp_path / "due_at").write_text("2000-01-01T00:00:00+00:00")
    _run(instance, defs=HOURLY, select="key:reads_events")
    ok, _, result, built = _run(instance, defs=HOURLY)
    assert ok and built == {"manifest", "events", "reads_events"}
    assert result.plan.stale[dg.AssetKey("reads_events")] == "due again since 2000-01-01T00:00:00+00:00"


def _platform_executor_job():
    return PLATFORM_EXECUTOR_DEFS.resolve_job_def("materialize_all")


def _rebuild_after_b_job():
    return PLATFORM_EXECUTOR_DEFS.resolve_job_def("rebuild_after_b")


def _launched_without_our_tag(instance, run_config=None, job=_platform_executor_job) -> dg.DagsterRun:
    """A run as the UI or `dagster asset materialize` launch one: the job's own executor, no tag of ours (not the
    CLI's `execute_in_process`, which tags its runs itself)."""
    with dg.execute_job(dg.reconstructable(job), instance=instance, run_config=run_config) as result:
        assert result.success
        return instance.get_run_by_id(result.run_id)


def test_what_a_run_launched_from_the_ui_built_is_not_rebuilt(world):
    """Materialize all in the UI, then `personalization materialize`: nothing is stale. Runs without our tag counted as
    built by other code, and the CLI rebuilt everything they had built."""
    _, instance = world
    _run(instance, defs=PLATFORM_EXECUTOR_DEFS)
    run = _launched_without_our_tag(instance)
    assert run.tags.get(staleness.FINGERPRINT_TAG) == staleness.platform_fingerprint(), "the run process tagged its run"
    ok, _, result, built = _run(instance, defs=PLATFORM_EXECUTOR_DEFS)
    assert ok and built == ROOTS and not result.plan.stale

    # a run given a configuration builds what the default configuration would not: the next plain run rebuilds it
    run = _launched_without_our_tag(instance, run_config={"ops": {"after_b": {"config": {"cutoff": "earlier"}}}})
    assert run.tags[staleness.FINGERPRINT_TAG].startswith(staleness.platform_fingerprint() + "+config:")
    ok, _, result, built = _run(instance, defs=PLATFORM_EXECUTOR_DEFS)
    assert ok and "after_b" in built
    assert result.plan.stale[dg.AssetKey("after_b")] == "last built by other code, policies, settings or configuration"


def test_a_job_launched_with_a_configuration_is_tagged_with_it(world):
    """Our jobs carry the tag the code server computed when it loaded them; a run of one launched with a configuration
    (the launchpad) built other tables than the default configuration would. It kept the plain tag, and the next
    `personalization materialize` found its tables up to date for good. A field that changes how, not what
    (`full_refresh`), leaves the plain tag."""
    _, instance = world
    _run(instance, defs=PLATFORM_EXECUTOR_DEFS)
    plain = staleness.platform_fingerprint()
    run = _launched_without_our_tag(instance, {"ops": {"after_b": {"config": {"full_refresh": True}}}}, job=_rebuild_after_b_job)
    assert run.tags[staleness.FINGERPRINT_TAG] == plain
    assert _run(instance, defs=PLATFORM_EXECUTOR_DEFS)[3] == ROOTS

    run = _launched_without_our_tag(instance, {"ops": {"after_b": {"config": {"cutoff": "earlier"}}}}, job=_rebuild_after_b_job)
    assert run.tags[staleness.FINGERPRINT_TAG].startswith(plain + "+config:")
    ok, _, result, built = _run(instance, defs=PLATFORM_EXECUTOR_DEFS)
    assert ok and built == {*ROOTS, "after_b"}
    assert result.plan.stale[dg.AssetKey("after_b")] == "last built by other code, policies, settings or configuration"
