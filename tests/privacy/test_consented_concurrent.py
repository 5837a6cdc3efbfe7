"""Concurrent runs of the consented step (a backfill fanned out over two runs) keep each other's hours.

The step builds its hours outside any lock and commits its part of `consented/events_state` under the
state's writer lock, on top of the state as other runs left it (`consented.state.commit`). A naive commit
(this run's snapshot + its hours, written whole) loses the hours another run committed meanwhile, so the
next tick rebuilds them; worse, an hour one run built with newer privacy inputs could be kept clean under
the older signatures another run stores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import duckdb
import pyarrow as pa
import pytest

from personalization_assets.consented import state as cstate
from tests.helpers import defs_for_env, materialize, materializations
from tests.privacy.test_consented_incremental import FIRST, H10, H11, KEY_V1, STATE, _env, _ok, _rows, _tick, _write

POLICY_FP = "p" * 32


class _Policy:
    """What `policy_fingerprint` reads from a policy (the state stores only its fingerprint)."""

    version = "test"
    columns = {"events": {}}


def _state(hours: dict[str, tuple[int, str]], keys: dict[str, list[str]], sigs: dict[str, str], policy=_Policy) -> pa.Table:
    rows = [{"record": "meta", "digest": cstate.policy_fingerprint(policy)}]
    rows += [{"record": "hour", "hour": h, "raw_size": s, "raw_version": v} for h, (s, v) in hours.items()]
    rows += [{"record": "key", "hour": h, "key": k} for h, ks in keys.items() for k in ks]
    rows += [{"record": "sig", "key": k, "digest": d} for k, d in sigs.items()]
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in cstate.STATE_SCHEMA} for r in rows], cstate.STATE_SCHEMA)


def _plan(build: list[str], dirty: list[str], raw: dict[str, tuple[int, str]]) -> cstate.Plan:
    return cstate.Plan(mode="range", build=build, delete=[], retire=[], dirty=dirty,
                       raw={h: cstate.RawHour(s, v) for h, (s, v) in raw.items()})


def _hours(state: pa.Table) -> dict[str, int]:
    return {r["hour"]: r["raw_size"] for r in state.to_pylist() if r["record"] == "hour"}


def _con(sigs: dict[str, str]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("__s", pa.table({"key": list(sigs), "resolved_subject": pa.nulls(len(sigs), pa.string()), "digest": list(sigs.values())}))
    # no base digest or intervals: every signature change counts as one reaching all the key's hours
    con.execute("create temp table __sig_new as select *, null::varchar as base_digest, null::struct(purpose varchar, valid_from bigint, valid_to bigint)[] as intervals from __s")
    return con


class _MemoryLake:
    """Only what `commit` uses of the lake: the state table, read and written whole."""

    def __init__(self, state: pa.Table):
        self.state = state

    def exists(self, layer, table):
        return True

    def read_table(self, layer, table):
        return self.state

    def register(self, con, name, layer, table, empty_schema=None):
        con.register(f"{name}_memory", self.state)
        con.execute(f"create or replace temp view {name} as select * from {name}_memory")
        return True

    def write_table(self, layer, table, data):
        self.state = data.read_all() if isinstance(data, pa.RecordBatchReader) else data
        return type("Written", (), {"rows": self.state.num_rows})()


RAW = {"h1": (10, "a"), "h2": (20, "b"), "h3": (30, "c")}


@pytest.fixture
def no_lock(monkeypatch):
    """The commit's merge rule alone (the lock itself is exercised by the two-process test below)."""
    import contextlib

    monkeypatch.setattr(cstate, "state_lock", lambda lake: contextlib.nullcontext())


def test_two_commits_from_one_snapshot_keep_both_runs_hours(no_lock):
    # a backfill from an empty state, split over two runs: both read the same (empty) snapshot
    snapshot = _state({}, {}, {})
    lake = _MemoryLake(snapshot)
    con = _con({"k1": "d1", "k2": "d2"})
    cstate.commit(con, lake, snapshot, _plan(["h1"], ["h2"], RAW), pa.table({"hour": ["h1"], "key": ["k1"]}), _Policy)
    cstate.commit(con, lake, snapshot, _plan(["h2"], ["h1"], RAW), pa.table({"hour": ["h2"], "key": ["k2"]}), _Policy)
    # a naive commit (snapshot + own hours) leaves only h2; marking h1 dirty (run 2's plan) would rebuild it again
    assert _hours(lake.state) == {"h1": 10, "h2": 20}
    assert {(r["hour"], r["key"]) for r in lake.state.to_pylist() if r["record"] == "key"} == {("h1", "k1"), ("h2", "k2")}


def test_a_dirty_mark_survives_only_when_nobody_rebuilt_the_hour(no_lock):
    snapshot = _state({"h1": RAW["h1"], "h2": RAW["h2"], "h3": RAW["h3"]}, {"h1": ["k1"], "h2": ["k2"], "h3": ["k3"]},
                      {"k1": "d1", "k2": "d2", "k3": "d3"})
    # another run rebuilt h2 (new fingerprint) and committed; this run, started from the snapshot, had h2 and h3 dirty
    committed = _state({"h1": RAW["h1"], "h2": (21, "b2"), "h3": RAW["h3"]}, {"h1": ["k1"], "h2": ["k2"], "h3": ["k3"]},
                       {"k1": "d1", "k2": "d2", "k3": "d3"})
    lake = _MemoryLake(committed)
    cstate.commit(_con({"k1": "d1", "k2": "d2", "k3": "d3"}), lake, snapshot, _plan(["h1"], ["h2", "h3"], RAW),
                  pa.table({"hour": ["h1"], "key": ["k1"]}), _Policy)
    assert _hours(lake.state) == {"h1": 10, "h2": 21, "h3": cstate.DIRTY}


def test_an_hour_another_run_built_with_other_signatures_is_marked_dirty(no_lock):
    snapshot = _state({"h1": RAW["h1"]}, {"h1": ["k1"]}, {"k1": "d1", "k2": "old"})
    # another run built h2 with k2's signature "new" (its privacy inputs were newer) and stored that signature
    committed = _state({"h1": RAW["h1"], "h2": RAW["h2"]}, {"h1": ["k1"], "h2": ["k2"]}, {"k1": "d1", "k2": "new"})
    lake = _MemoryLake(committed)
    # this run stores the signatures it computed ("old" for k2): h2 no longer matches the state's signatures
    cstate.commit(_con({"k1": "d1", "k2": "old"}), lake, snapshot, _plan(["h1"], [], RAW), pa.table({"hour": ["h1"], "key": ["k1"]}), _Policy)
    assert _hours(lake.state) == {"h1": 10, "h2": cstate.DIRTY}


def test_sequentially_the_commit_marks_exactly_the_plans_dirty_hours(no_lock):
    snapshot = _state({"h1": RAW["h1"], "h2": RAW["h2"], "h3": RAW["h3"]}, {"h1": ["k1"], "h2": ["k2"], "h3": ["k3"]},
                      {"k1": "d1", "k2": "d2", "k3": "d3"})
    lake = _MemoryLake(snapshot)
    # k3 changed: h3 is stale; a range run over h1 builds h1 and leaves h3 dirty, h2 clean
    cstate.commit(_con({"k1": "d1", "k2": "d2", "k3": "changed"}), lake, snapshot, _plan(["h1"], ["h3"], RAW),
                  pa.table({"hour": ["h1"], "key": ["k1"]}), _Policy)
    assert _hours(lake.state) == {"h1": 10, "h2": 20, "h3": cstate.DIRTY}


def _cli(hour: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "personalization_assets.cli", "materialize", "--select", STATE,
                             "--partitions", f"{hour}..{hour}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_backfill_runs_at_once_keep_each_others_hours(data_dir, monkeypatch, tmp_path):
    """Two real processes backfill one hour each, from a lake whose consented tier is gone. The state lock is
    held by the test until both have written their hours, so both read the same (empty) snapshot and commit
    after it: the next tick then finds nothing stale, and the rows equal the single run's."""
    _env(monkeypatch, data_dir, {"1": KEY_V1})
    _write(data_dir / "landing", FIRST, [])
    defs = defs_for_env()
    _tick(defs, (H10, H11))
    lake = defs.resources["lake"]
    expected = _rows(lake)
    for table in ("events", "events_state"):
        shutil.rmtree(lake.full_path(lake.table_dir("consented", table)))
    env = {**os.environ, "PERSONALIZATION_EVENTS_START": "2026-01-01"}
    with cstate.state_lock(lake):
        procs = [_cli(H10, env), _cli(H11, env)]
        deadline = time.monotonic() + 240
        while len(cstate.consented_hours(lake)) < 2 and time.monotonic() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        time.sleep(0.5)
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, (out + err).decode()[-3000:]
    assert _rows(lake) == expected
    md = materializations(_ok(materialize(defs, STATE)))["consented/events_state"]
    assert md["hours_built"] == 0, md["stale_hours_by_reason"]
