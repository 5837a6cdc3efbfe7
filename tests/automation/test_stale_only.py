"""`personalization materialize` with no selection runs the root steps, then only what their changes (or an earlier
partial run) made stale (automation/staleness.py), through `run_materialize` itself on a small graph with a real
Dagster instance:

    root (versioned by a file's content) -> mid0 -> middle (blocking check) -> pair_a ┐ one step that cannot
    root ---------------------------------------------------------------------> pair_b ┘ run a subset -> after_b
                                                    middle -> after_middle

`pair_b` comes before `middle` in the key order but must run whenever `pair_a` does (the same step), and then so
must `after_b`: the case that a one-pass plan gets wrong when `middle` turns stale after the step was looked at."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dagster as dg
import pytest

from personalization_assets.automation import staleness
from personalization_assets.core.asset_keys import RETENTION_LOG
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


@dg.asset(key="after_b", deps=["pair_b"])
def after_b():
    return None


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


def _run(instance, select=None):
    ok, text, result = run_materialize(select=select, defs=DEFS, instance=instance, echo=lambda *a, **k: None)
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


def test_a_failed_blocking_check_holds_what_reads_the_asset_until_it_passes(world):
    tmp_path, instance = world
    _run(instance)
    (tmp_path / "make_check_fail").touch()
    (tmp_path / "landing.txt").write_text("v2")
    ok, _, _, built = _run(instance)
    # in the run, Dagster holds what follows middle's failed check; pair_b (root only) runs with its step... which
    # Dagster skips as a whole because pair_a's input failed its check
    assert not ok and "middle" in built and "after_middle" not in built

    ok, text, result, built = _run(instance)  # nothing new, but middle's check still failed: no later run bypasses it
    assert not ok and built == ROOTS and "(blocking check valid of middle failed)" in text
    held = {k.to_user_string(): why for k, why in result.plan.held.items()}
    assert held["after_middle"] == "blocking check valid of middle failed"
    assert held["pair_a"] == held["pair_b"] and "after_b" in held
    assert not result.plan.stale

    (tmp_path / "make_check_fail").unlink()
    assert _run(instance, select="key:middle")[0]
    ok, _, _, built = _run(instance)
    assert ok and built == {*ROOTS, "pair_a", "pair_b", "after_b", "after_middle"}


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
    ok, _, result, built = _run(instance)
    assert ok and built == {*ROOTS, *ALL_BUT_ROOT}
    assert result.plan.stale[dg.AssetKey("after_b")] == "last built by other code, policies or settings"


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
