"""The platform's own graph: `personalization materialize` with no selection on a landing zone with nothing new runs
the landing sources' ingestion and nothing else (the features and the warehouse are not rebuilt from unchanged
inputs), one more landed hour rebuilds exactly what reads raw/events (automation/staleness.py), and two such commands
started at once (a cron overlapping itself) both succeed, the hour's work done once (the second waits for the first, then
finds nothing stale), and leave nothing stale and nothing recorded twice.

Needs the ingestion steps' data versions (raw/assets.py): each ingestion re-runs on every invocation, so a version
that followed the run (Dagster's default) would make everything downstream stale every time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import dagster as dg
import duckdb
import pytest

from personalization_assets.core.asset_keys import RAW_EVENTS
from tests.conftest import ROOT
from tests.helpers import generate
from tests.incremental.conftest import run

pytestmark = [pytest.mark.integration, pytest.mark.incremental, pytest.mark.timeout(600)]

END = "2026-11-28"


def _built(result) -> set[str]:
    return {ev.event_specific_data.materialization.asset_key.to_user_string()
            for ev in result.all_events if ev.event_type_value == "ASSET_MATERIALIZATION"}


def _files(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_nothing_new_builds_nothing_downstream_and_a_new_hour_rebuilds_what_reads_it(incremental_env, tmp_path, monkeypatch):
    env = incremental_env
    staging = tmp_path / "staging"
    generate(staging, users=120, events=2_500, seed=5, bad_fraction=0.0, days=1, end=END)
    # without the generated erasure requests: the first run puts their subjects on the suppression list after the
    # reference sources were ingested (their quarantine and the CRM drop erased subjects' records), so the run after
    # it ingests those once more and rebuilds what follows — right, and the subject of the privacy tests, not this one
    shutil.rmtree(staging / "privacy_requests")
    shutil.copytree(staging, env.landing, dirs_exist_ok=True)
    held_back = {hour: sorted((env.landing / "events").glob(f"date={END}/hour={hour}/*")) for hour in ("22", "23")}
    assert all(held_back.values()), "the generator wrote the last two hours"
    parked = tmp_path / "parked"
    for hour, files in held_back.items():
        (parked / hour).mkdir(parents=True)
        for f in files:
            shutil.move(str(f), parked / hour / f.name)

    ok, text, first = run(env, None)
    assert ok, text
    assert len(first.run_ids) == 2 and first.plan.stale and not first.plan.held
    warehouse = {"segments/user_segments", "features/events_clean", "privacy/erasure_log"}
    assert warehouse <= _built(first)

    before = _files(env.lake / "features")
    ok, text, idle = run(env, None)
    assert ok, text
    roots = {k.to_user_string() for k in first.plan.fresh | set(first.plan.stale)}
    assert len(idle.run_ids) == 1 and not idle.plan.stale, idle.plan.describe()
    assert _built(idle) and all(k.startswith(("raw/", "privacy/access_audit_log")) for k in _built(idle)), _built(idle)
    assert {k.to_user_string() for k in idle.plan.fresh} == roots
    assert _files(env.lake / "features") == before, "the features were not rewritten"

    # the hour lands, and a blocking check of consented/events fails on it (forced: the real violations it guards
    # against cannot be produced from a landing). Plain runs select the consented step's state, not its hours, so the
    # check's evaluation was logged without `blocking`: the features and segments were built from those hours, and
    # every later run held them for good, the consented step never run again
    import personalization_assets.consented.assets as consented_assets

    for f in held_back["22"]:
        shutil.move(str(parked / "22" / f.name), f)
    real_emit = consented_assets._emit_check

    def failing_check(context, result, failed):
        if result.check_name == "consented_le_raw":
            result = dg.AssetCheckResult(asset_key=result.asset_key, check_name=result.check_name, passed=False)
        yield from real_emit(context, result, failed)

    monkeypatch.setattr(consented_assets, "_emit_check", failing_check)
    ok, text, failing = run(env, None)
    assert not ok and "consented/events_state" in _built(failing), text
    assert not {k for k in _built(failing) if k.startswith(("features/", "segments/"))}, "built past a failed blocking check"
    from personalization_assets.definitions import build_definitions

    graph = build_definitions().resolve_asset_graph()
    reads_raw_events = {k.to_user_string() for k in dg.AssetSelection.assets(RAW_EVENTS).downstream().resolve(graph)}
    stale = {k.to_user_string() for k in failing.plan.stale}
    assert stale == reads_raw_events & roots, sorted(stale ^ (reads_raw_events & roots))
    assert "consented/content_catalog" in {k.to_user_string() for k in failing.plan.fresh}  # its landing did not change

    # the check passes again: the consented step runs again (its hours are not in the plan, its state is), and what
    # follows it with it
    monkeypatch.setattr(consented_assets, "_emit_check", real_emit)
    ok, text, tick = run(env, None)
    assert ok, text
    assert tick.plan.stale[dg.AssetKey(["consented", "events_state"])] == \
        "blocking check consented_le_raw of consented/events failed: run again", tick.plan.describe()
    assert {"features/events_clean", "segments/user_segments"} <= _built(tick) and not tick.plan.held
    clean = run(env, None)[2]
    assert not clean.plan.stale
    as_of = {ev.event_specific_data.materialization.metadata["as_of"].value for ev in tick.all_events
             if ev.event_type_value == "ASSET_MATERIALIZATION"
             and ev.event_specific_data.materialization.asset_key.to_user_string() == "features/events_clean"}
    assert as_of == {f"{END}T22:00:00+00:00"}, "the features moved to the landed hour"

    # the last hour lands and two commands start at once: one does the hour's work, the other waits for it (the plan
    # lease, cli.plan_lease) and then finds nothing stale, instead of running every stale step again behind it
    for f in held_back["23"]:
        shutil.move(str(parked / "23" / f.name), f)
    logs = [tmp_path / f"materialize-{i}.log" for i in range(2)]
    procs = []
    try:
        for log in logs:
            with log.open("w") as out:  # a file, not a pipe: neither command can block on output nobody reads
                procs.append(subprocess.Popen([sys.executable, "-m", "personalization_assets.cli", "materialize"], cwd=ROOT,
                                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT))
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-3000:] for o in outs)
    did = [o.split("What this run did beyond the landing sources:")[-1] for o in outs]
    worked = [i for i, d in enumerate(did) if "features/events_clean" in d and "runs:" in d]
    assert len(worked) == 1, "one command does the hour's work, once:\n----\n" + "\n----\n".join(d[:1500] for d in did)
    waiter = 1 - worked[0]
    assert "Waiting for another `personalization materialize`" in outs[waiter], outs[waiter][-3000:]  # they overlapped
    # the waiter planned after the worker's runs ended: nothing stale or held is left (no further run needed to see it)
    assert "up to date:" in did[waiter] and "runs:" not in did[waiter] and "held:" not in did[waiter], did[waiter][:1500]
    lake = env.lake.as_posix()
    assert duckdb.sql(f"select distinct as_of from read_parquet('{lake}/features/user_rfm/**/*.parquet')").fetchall() \
        == duckdb.sql(f"select timestamptz '{END}T23:00:00Z'").fetchall(), "the features moved to the last hour"
    twice = duckdb.sql(f"select decision_id from read_parquet('{lake}/privacy/consent_ledger/**/*.parquet') "
                       "group by 1 having count(*) > 1").fetchall()
    assert not twice, f"consent decisions recorded twice: {twice[:5]}"
    in_hour = duckdb.sql(f"select count(*), count(distinct message_id) from "
                         f"read_parquet('{lake}/raw/events/date={END}/hour=23/*.parquet')").fetchall()[0]
    assert in_hour[0] > 0 and in_hour[0] == in_hour[1], f"hour 23 ingested, once: {in_hour}"

