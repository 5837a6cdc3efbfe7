"""DP releases go through OpenDP with a persistent budget; exhausting it fails with a clear error."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from personalization_assets.privacy.dp import BudgetLedger, DpBudgetExceeded, dp_counts
from personalization_assets.core.policies import DpRelease, get_policy
from personalization_assets.core.storage import LakeStorage


def test_noisy_counts_are_close_to_the_truth_and_keys_are_the_public_ones():
    keys = ["news"] * 4000 + ["sports"] * 2000 + ["tech"] * 1000
    released, scale, accuracy = dp_counts(keys, DpRelease("t", epsilon=1.0, max_contributions=1), "category")
    got = dict(zip(released["category"].to_list(), released["count"].to_list()))
    assert set(got) == {"news", "sports", "tech"}
    assert scale == pytest.approx(1.0) and accuracy > 0
    for k, true in {"news": 4000, "sports": 2000, "tech": 1000}.items():
        assert abs(got[k] - true) <= 40  # ≈ 13 × the 95% bound of Laplace(1)


def test_budget_is_persistent_and_exhaustion_fails_clearly(tmp_path):
    policy = get_policy()
    lake = LakeStorage(url=str(tmp_path / "lake"))
    when = datetime(2026, 11, 29, tzinfo=timezone.utc)
    big = DpRelease("segment_sizes", epsilon=policy.dp_total_epsilon / 2, max_contributions=1)
    BudgetLedger.open(lake, policy, None).charge(big, "run-1", when)
    # a fresh handle sees what the previous run spent
    ledger = BudgetLedger.open(lake, policy, None)
    assert ledger.remaining("2026-11") == pytest.approx(policy.dp_total_epsilon / 2)
    ledger.charge(big, "run-2", when)
    with pytest.raises(DpBudgetExceeded, match="only 0.000 of .* remains for 2026-11"):
        ledger.charge(DpRelease("content_popularity", 0.1, 5), "run-3", when)
    # next month starts fresh
    ledger.charge(big, "run-4", datetime(2026, 12, 1, tzinfo=timezone.utc))
    assert ledger.log.verify().ok


# --- idempotent releases, crash safety, concurrent CLIs (issue #15, items 4, 7, 8) ---------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pyarrow as pa  # noqa: E402

from tests.conftest import ROOT  # noqa: E402

EXPORT = "key:exports/content_popularity_dp"


def _write_export_inputs(lake, people: int = 400):
    """The two lake tables content_popularity_dp reads (features/content_affinity, consented/content_catalog)."""
    cats = ["news", "sports", "tech", "music", "film", "food", "travel"]
    rows = [(f"p{i}", cats[(i + j) % len(cats)], 1.0 / (j + 1)) for i in range(people) for j in range(1 + i % 4)]
    lake.write_table("features", "content_affinity", pa.table({"person_id": [r[0] for r in rows], "category": [r[1] for r in rows],
                                                               "affinity": [r[2] for r in rows]}))
    lake.write_table("consented", "content_catalog", pa.table({"category": cats}))


def _ledger(data_dir):
    return BudgetLedger.open(LakeStorage(url=str(data_dir / "lake")), get_policy(), None)


def _this_month() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m")


def test_rerunning_the_exports_on_unchanged_data_spends_once(data_dir):
    from tests.helpers import defs_for_env, materialize, materializations

    lake = LakeStorage(url=str(data_dir / "lake"))
    _write_export_inputs(lake)
    defs = defs_for_env()
    eps = get_policy().dp_releases["content_popularity"].epsilon
    first = materializations(materialize(defs, EXPORT))["exports/content_popularity_dp"]
    released = lake.read_table("exports", "content_popularity_dp")
    second = materializations(materialize(defs, EXPORT))["exports/content_popularity_dp"]
    assert first["epsilon_spent"] == eps and second["epsilon_spent"] == 0 and second["reused_stored_release"] is True
    assert second["release_id"] == first["release_id"]
    assert lake.read_table("exports", "content_popularity_dp").equals(released)  # the same noisy counts, not new noise
    ledger = _ledger(data_dir)
    assert ledger.spent(_this_month()) == pytest.approx(eps) and ledger.log.verify().rows == 1
    # different data within the release period (budget.min_release_interval_hours): still the stored release, no spend
    _write_export_inputs(lake, people=401)
    third = materializations(materialize(defs, EXPORT))["exports/content_popularity_dp"]
    assert third["epsilon_spent"] == 0 and third["release_id"] == first["release_id"] and third["release_period_open"] is False
    assert lake.read_table("exports", "content_popularity_dp").equals(released)
    assert ledger.spent(_this_month()) == pytest.approx(eps) and ledger.log.verify().rows == 1


def test_an_hourly_materialize_releases_each_export_once_per_release_period(data_dir):
    """Every tick of an hourly `personalization materialize` changes the exports' input (new events move the
    affinities). Before the release period existed, each tick spent ε again and the month's budget ran out after
    a few hours, failing the run. Now only the first release spends; the other runs keep it."""
    from tests.helpers import defs_for_env, materialize, materializations

    lake = LakeStorage(url=str(data_dir / "lake"))
    policy = get_policy()
    eps = policy.dp_releases["content_popularity"].epsilon
    defs = defs_for_env()
    _write_export_inputs(lake)
    first = materializations(materialize(defs, EXPORT))["exports/content_popularity_dp"]
    released = lake.read_table("exports", "content_popularity_dp")
    runs = int(policy.dp_total_epsilon / eps) + 1  # enough to exhaust the budget if every changed input spent
    for tick in range(1, runs):
        _write_export_inputs(lake, people=400 + tick)
        meta = materializations(materialize(defs, EXPORT))["exports/content_popularity_dp"]
        assert meta["epsilon_spent"] == 0 and meta["reused_stored_release"] is True, (tick, meta)
        assert meta["release_id"] == first["release_id"]
    assert _ledger(data_dir).spent(_this_month()) == pytest.approx(eps)
    assert lake.read_table("exports", "content_popularity_dp").equals(released)


def test_the_release_period_gates_on_the_previous_release_time(tmp_path):
    """BudgetLedger.release: a new input within min_release_interval_hours returns the previous release; at the
    interval it spends. One-off charges (no stored result) are not gated and do not open a period."""
    policy = get_policy()
    hours = policy.dp_min_release_interval_hours
    release = policy.dp_releases["segment_sizes"]
    ledger = BudgetLedger.open(LakeStorage(url=str(tmp_path / "lake")), policy, None)
    t0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
    a = ledger.release(release, "r1", "input-a", lambda: {"keys": ["new"], "dp_counts": [3]}, t0)
    b = ledger.release(release, "r2", "input-b", lambda: {"keys": ["new"], "dp_counts": [9]}, t0 + timedelta(hours=hours) - timedelta(seconds=1))
    assert (a.epsilon_spent, b.epsilon_spent, b.reused, b.release_id, b.payload) == (release.epsilon, 0.0, True, "input-a", a.payload)
    c = ledger.release(release, "r3", "input-c", lambda: {"keys": ["new"], "dp_counts": [7]}, t0 + timedelta(hours=hours))
    assert (c.epsilon_spent, c.reused, c.payload["dp_counts"]) == (release.epsilon, False, [7])
    # another release name has its own period; a one-off charge always spends
    other = ledger.release(policy.dp_releases["content_popularity"], "r4", "input-d", lambda: {"keys": [], "dp_counts": []}, t0)
    assert other.epsilon_spent == policy.dp_releases["content_popularity"].epsilon
    before = ledger.spent("2026-11")
    ledger.charge(release, "r5", t0 + timedelta(hours=hours))
    assert ledger.spent("2026-11") == pytest.approx(before + release.epsilon)


def _cli(args, env=None, **kw) -> subprocess.Popen:
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "personalization_assets.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def test_cli_killed_right_after_the_charge_reruns_without_double_spend_and_its_run_ends_failed(data_dir):
    lake = LakeStorage(url=str(data_dir / "lake"))
    _write_export_inputs(lake)
    eps = get_policy().dp_releases["content_popularity"].epsilon
    segment = data_dir / "lake" / "privacy" / "dp_budget_ledger" / "segment=000000000001" / "data.parquet"
    proc = _cli(["materialize", "--select", EXPORT])
    deadline = time.monotonic() + 50
    while not segment.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert segment.exists(), f"the CLI never charged the budget:\n{proc.communicate()[0][-3000:] if proc.poll() is not None else ''}"
    os.killpg(proc.pid, signal.SIGKILL)  # right after the charge: before the export is written or the run ends
    proc.wait(timeout=10)
    assert _ledger(data_dir).spent(_this_month()) == pytest.approx(eps)

    rerun = _cli(["materialize", "--select", EXPORT])
    out = rerun.communicate(timeout=120)[0]
    assert rerun.returncode == 0, out[-3000:]
    import json

    problems = []
    ledger = _ledger(data_dir)
    if ledger.spent(_this_month()) != pytest.approx(eps):
        problems.append(f"the rerun spent the budget again ({ledger.spent(_this_month())} spent)")
    stored = ledger.log.read_all(["release_payload"])["release_payload"].to_pylist() if "release_payload" in ledger.log.schema.names else []
    export = lake.read_table("exports", "content_popularity_dp")
    if len(stored) != 1 or not stored[0]:
        problems.append(f"expected one charge holding its release, found {len(stored)} rows")
    elif (export["category"].to_pylist(), export["dp_count"].to_pylist()) != (json.loads(stored[0])["keys"], json.loads(stored[0])["dp_counts"]):
        problems.append("the export differs from the release stored with the charge")
    # the killed run does not stay STARTED: the next CLI start marked it failed
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        statuses = sorted(r.status.value for r in runs)
        if statuses != ["FAILURE", "SUCCESS"]:
            problems.append(f"run statuses after kill + rerun: {statuses}")
        elif next(r for r in runs if r.status == dg.DagsterRunStatus.FAILURE).tags.get("personalization/cli_pid") != str(proc.pid):
            problems.append("the run marked failed is not the killed CLI's")
    assert not problems, problems


def test_two_clis_on_a_fresh_dagster_home_both_succeed_and_release_once(data_dir, tmp_path):
    lake = LakeStorage(url=str(data_dir / "lake"))
    _write_export_inputs(lake)
    home = tmp_path / "fresh_home"  # does not exist yet
    procs = [_cli(["materialize", "--select", EXPORT], env={"DAGSTER_HOME": str(home)}) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-2000:] for o in outs)
    ledger = _ledger(data_dir)
    assert ledger.spent(_this_month()) == pytest.approx(get_policy().dp_releases["content_popularity"].epsilon)
    assert ledger.log.verify().ok


def test_a_budget_ledger_written_before_release_ids_still_verifies_and_counts(tmp_path):
    """Segments written by the earlier schema (no release_id/release_payload) keep their hashes and spend."""
    from personalization_assets.privacy.dp import BUDGET_SCHEMA
    from personalization_assets.core.hash_chain import HashChainedLog

    lake = LakeStorage(url=str(tmp_path / "lake"))
    old_schema = pa.schema([f for f in BUDGET_SCHEMA if f.name not in ("release_id", "release_payload")])
    when = datetime(2026, 11, 29, tzinfo=timezone.utc)
    HashChainedLog(lake=lake, name="dp_budget_ledger", schema=old_schema).append(
        [{"period": "2026-11", "release": "segment_sizes", "epsilon": 0.4, "released_at": when, "run_id": "old"}])
    ledger = BudgetLedger.open(lake, get_policy(), None)
    assert ledger.log.verify().ok and ledger.spent("2026-11") == pytest.approx(0.4)
    ledger.charge(DpRelease("segment_sizes", 0.4, 1), "new", when)
    assert ledger.log.verify().ok and ledger.spent("2026-11") == pytest.approx(0.8)
