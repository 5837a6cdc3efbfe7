"""DP releases go through OpenDP with a persistent budget; exhausting it fails with a clear error."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from personalization_assets.core.asset_keys import STALE_AFTER_METADATA

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
        # kept without reading its inputs: due again when the period comes round, whatever the inputs then
        # (`personalization materialize` without a selection runs it then: automation/staleness.py)
        assert meta[STALE_AFTER_METADATA] == meta["next_release_not_before"] and STALE_AFTER_METADATA not in first
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


# --- one measurement per release, not one scale search per release (profile: ≈4,600 OpenDP checks per world) ---

import math  # noqa: E402

import opendp.core  # noqa: E402
import opendp.extras.polars  # noqa: E402
import opendp.measurements  # noqa: E402

from personalization_assets.privacy import dp as dp_lib  # noqa: E402


@pytest.fixture
def opendp_calls(monkeypatch):
    """Counts the measurements OpenDP builds (make_private_lazyframe) and checks (measurement_check); the real
    functions still run (the counters wrap them)."""
    calls = {"built": 0, "checked": 0}

    def spy(fn, what):
        def wrapper(*args, **kwargs):
            calls[what] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(opendp.core, "measurement_check", spy(opendp.core.measurement_check, "checked"))
    for module in (opendp.measurements, opendp.extras.polars):
        monkeypatch.setattr(module, "make_private_lazyframe", spy(opendp.measurements.make_private_lazyframe, "built"))
    return calls


def _forget_built_measurements():
    cache = getattr(dp_lib, "count_measurement", None)
    if cache is not None:
        cache.cache_clear()


def test_a_release_builds_a_bounded_number_of_measurements_whatever_the_number_of_groups(tmp_path, opendp_calls):
    """Each export release used to let OpenDP binary-search the noise scale twice (summarize + release): ≈2,300
    measurements built and checked per release. Now a release builds a few at most, the same number for 7 groups
    as for 700, none for a later release of the same shape, and charges what it charged before: the policy's ε,
    Laplace noise of scale K/ε per released count."""
    from personalization_assets.core.platform import PlatformConfig
    from personalization_assets.exports.assets import release_counts

    policy = get_policy()
    release = policy.dp_releases["content_popularity"]
    lake = LakeStorage(url=str(tmp_path / "lake"))
    platform = PlatformConfig(data_dir=str(tmp_path))
    t0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
    costs = {}
    for n_groups, month in ((7, 0), (700, 1)):
        cats = [f"c{i:04d}" for i in range(n_groups)]
        keys = [cats[(p + j) % n_groups] for p in range(3000) for j in range(1 + p % release.max_contributions)]
        _forget_built_measurements()
        before = dict(opendp_calls)
        when = t0 + timedelta(days=31 * month)  # a new month: a fresh budget, no release period in force
        outcome, dropped = release_counts(lake, platform, f"run-{n_groups}", "content_popularity", keys, cats, "category", when)
        costs[n_groups] = (opendp_calls["built"] - before["built"], opendp_calls["checked"] - before["checked"])
        assert outcome.payload["keys"] == sorted(set(keys)) and dropped == 0
        assert outcome.epsilon_spent == release.epsilon and not outcome.reused
        assert BudgetLedger.open(lake, policy, None).spent(when.strftime("%Y-%m")) == pytest.approx(release.epsilon)
        assert outcome.payload["noise_scale"] == pytest.approx(release.max_contributions / release.epsilon, rel=1e-12)
        assert (outcome.payload["epsilon"], outcome.payload["max_contributions"]) == (release.epsilon, release.max_contributions)
    assert costs[7] == costs[700], costs
    assert all(built <= 8 and checked <= 8 for built, checked in costs.values()), costs
    # a later release of the same shape reuses the measurement: nothing built or checked at all
    before = dict(opendp_calls)
    dp_counts(["c0001"] * 50 + ["c0002"] * 20, release, "category")
    assert opendp_calls == before


@pytest.mark.parametrize("epsilon,contributions", [(0.4, 1), (0.4, 5), (0.3, 3)])  # the policy's two; K/ε rounded
def test_the_single_measurement_is_the_one_opendps_context_resolves(epsilon, contributions):
    """Same privacy semantics as the Context query it replaces: the same noise scale (to the last float), the same
    95% accuracy, the same privacy map at the contribution bound (≤ ε), the same output schema and keys."""
    import warnings

    import opendp.prelude as dp
    import polars as pl
    from opendp.accuracy import summarize_polars_measurement

    dp.enable_features("contrib")
    keys = ["news"] * 300 + ["sports"] * 200 + ["tech"] * 5
    ctx = dp.Context.compositor(data=pl.LazyFrame({"category": pl.Series(keys, dtype=pl.String)}),
                                privacy_unit=dp.unit_of(contributions=contributions), privacy_loss=dp.loss_of(epsilon=epsilon),
                                split_evenly_over=1, margins=[dp.polars.Margin(by=["category"], invariant="keys")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        query = ctx.query().group_by("category").agg(dp.len().alias("count"))
        searched = query.resolve()  # OpenDP's binary search of the scale (once: summarize/release would redo it)
        expected = summarize_polars_measurement(searched, 0.05)
        via_context = ctx(searched).collect().sort("category")
    _forget_built_measurements()
    m = dp_lib.count_measurement("category", epsilon, contributions)
    assert m.scale == float(expected["scale"][0]) and m.accuracy_95 == float(expected["accuracy"][0])
    assert m.privacy_loss == searched.map(contributions) and m.privacy_loss <= epsilon
    assert math.isclose(m.scale, contributions / epsilon, rel_tol=1e-12)
    released, scale, accuracy = dp_counts(keys, DpRelease("t", epsilon=epsilon, max_contributions=contributions), "category")
    assert (scale, accuracy) == (m.scale, m.accuracy_95)
    assert released.schema == via_context.schema and released["category"].to_list() == via_context["category"].to_list()


def test_every_group_gets_its_own_laplace_noise_of_the_declared_scale():
    """Applying one measurement to all groups must not share noise between them. OpenDP draws from the OS CSPRNG
    and offers no seed, so this checks the noise's distribution over 3,000 groups with wide (≥5σ) margins: mean 0,
    the variance of the discrete Laplace of scale K/ε, the probability of exactly 0, and no correlation between groups."""
    release = DpRelease("t", epsilon=0.4, max_contributions=1)
    n, true = 3000, 40
    cats = [f"g{i:05d}" for i in range(n)]
    released, scale, _ = dp_counts([c for c in cats for _ in range(true)], release, "category")
    assert released["category"].to_list() == cats
    noise = [int(c) - true for c in released["count"].to_list()]
    t = math.exp(-1 / scale)
    variance = 2 * t / (1 - t) ** 2
    mean = sum(noise) / n
    sample_var = sum((x - mean) ** 2 for x in noise) / (n - 1)
    assert abs(mean) < 5 * math.sqrt(variance / n)
    assert abs(sample_var / variance - 1) < 0.25
    assert abs(sum(x == 0 for x in noise) / n - (1 - t) / (1 + t)) < 0.04
    lag = sum((a - mean) * (b - mean) for a, b in zip(noise, noise[1:])) / ((n - 1) * sample_var)
    assert abs(lag) < 0.1


def test_a_spent_budget_fails_the_export_and_never_skips_the_erasure(data_dir):
    """The erasure run came after every asset of its plan, the DP exports included, though they hold nothing to erase:
    once the month's budget was spent, the failed export made Dagster skip the erasure in every run that built both
    (every plain `personalization materialize`), and erasure requests waited for the next month."""
    from tests.helpers import defs_for_env, materialize, materializations

    lake = LakeStorage(url=str(data_dir / "lake"))
    _write_export_inputs(lake)
    policy = get_policy()
    _ledger(data_dir).charge(DpRelease("setup", policy.dp_total_epsilon, 1), "setup", datetime.now(timezone.utc))
    result = materialize(defs_for_env(), f"{EXPORT} or key:privacy/erasure_log", raise_on_error=False)
    assert not result.success, "the export cannot release: the budget is spent"
    assert "privacy/erasure_log" in materializations(result), "the erasure ran all the same"
