"""The feature build folded forward from its per-person state (features/partials.py) equals a full rebuild exactly.

Property-style: seeded random landings of consented events are split into arrival batches; after each batch the
lake's inputs change the way the upstream tiers change them (new hours, a late event rewriting an OLD hour, a
login stitching earlier anonymous events to a user, a consent withdrawal effective before as_of, an erasure after
the subject's events, a pseudonym key rotation, a re-delivered identical file plus re-delivered copies) and the
feature asset runs incrementally. Every feature table (rows, order aside) is compared after each batch with the
from-events reference SQL (features/sql.py `compute_features`, the definition) and, at the end, with one
`full_refresh` build of a fresh lake over the same inputs. The steady tick's metadata must show that only the
touched persons were recomputed, and every lake table of the features layer must be in the erasure plan.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from personalization_assets.core.pseudonymize import KeyChain
from personalization_assets.features import build_feature_assets
from personalization_assets.features.assets import FEATURE_KEYS
from personalization_assets.features.sql import TABLES
from personalization_assets.privacy.erasure import ERASURE_META, lake_tables, Target
from personalization_assets.privacy.operations import rekey_table
from personalization_assets.resources import DuckDBEngine
from personalization_assets.core.storage import LakeStorage
from tests.features.feature_fixtures import (
    build, consent, event, granted_all, pseudo, ts, write_lake,
)

# one seed in the suite (each build is a Dagster materialization); more with FEATURE_INCREMENTAL_SEEDS=11,29,...
pytestmark = [pytest.mark.integration, pytest.mark.incremental]

SEEDS = tuple(int(x) for x in os.environ.get("FEATURE_INCREMENTAL_SEEDS", "11").split(","))
USERS = [f"u{i}" for i in range(12)]
ANONS = [f"a{i}" for i in range(30)]
START = ts("2026-01-01 00:00")
CATEGORIES = ["news", "tech", "food", None]


def _random_event(rng: random.Random, at, received=None, anon=None, user=None) -> dict:
    kind = rng.random()
    if anon is None and user is None:
        if rng.random() < 0.5:
            anon = rng.choice(ANONS)
        else:
            user = rng.choice(USERS)
            anon = rng.choice(ANONS) if rng.random() < 0.2 else None
    common = dict(at=at, anon=anon, user=user, received=received, category=rng.choice(CATEGORIES))
    if kind < 0.3:
        return event(type=rng.choice(["page", "screen"]), dwell_ms=rng.choice([None, rng.randrange(100, 5000)]),
                     content_id=rng.choice([None, "c1", "c2"]), **common)
    if kind < 0.45:
        return event(name=rng.choice(["Order Completed", "Subscription Started"]),
                     price=rng.choice([None, round(rng.uniform(1, 90), 2)]), currency="EUR", **common)
    return event(name=rng.choice(["Content Viewed", "Content Shared", "Product Added", "Signed Up"]),
                 content_id=rng.choice([None, "c1", "c3"]), **common)


def _landing(seed: int) -> list[dict]:
    """Random events over 4 days; gaps of minutes to hours (sessions split and merge); some received late."""
    rng = random.Random(seed)
    rows = []
    for _ in range(240):
        at = START + timedelta(minutes=rng.randrange(0, 4 * 24 * 60))
        delay = timedelta(minutes=rng.choice([0, 0, 0, 2, 50, 180]))
        rows.append(_random_event(rng, at, received=at + delay))
    return rows


def _as_of(rows: list[dict]):
    return max(r["landing_hour"] for r in rows) + timedelta(hours=1)


def _iso(t) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(lake: LakeStorage, as_of, full_refresh: bool = False, **params) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        build_feature_assets(),
        resources={"lake": lake, "duckdb": DuckDBEngine(database=":memory:")},
        run_config={"ops": {"feature_tables": {"config": {"as_of": _iso(as_of), "full_refresh": full_refresh, **params}}}},
        raise_on_error=False,
    )
    assert result.success
    return result


def _partials(result) -> dict:
    md = {m.asset_key: m.materialization.metadata for m in result.get_asset_materialization_events()}
    return md[FEATURE_KEYS["sessions"]]["partials"].value


def _sorted_rows(table: pa.Table) -> list[tuple]:
    cols = sorted(table.column_names)
    return sorted((tuple(r[c] for c in cols) for r in table.to_pylist()), key=repr)


def _assert_same(lake_a: LakeStorage, expected: dict[str, pa.Table], label: str) -> None:
    for table in TABLES:
        got = lake_a.read_table("features", table)
        want = expected[table]
        assert got.schema.names == want.schema.names, (label, table)
        assert got.num_rows == want.num_rows, (label, table, got.num_rows, want.num_rows)
        assert _sorted_rows(got) == _sorted_rows(want), (label, table)


def _lake_tables(lake: LakeStorage) -> dict[str, pa.Table]:
    return {t: lake.read_table("features", t) for t in TABLES}


def _inputs(lake: LakeStorage) -> tuple[pa.Table, pa.Table]:
    parts = [lake.read_table("consented", "events", part) for part in lake.partitions("consented", "events")]
    return pa.concat_tables(parts), lake.read_table("privacy", "consent_state")


def _reference(lake: LakeStorage, as_of, **params) -> dict[str, pa.Table]:
    ev, cs = _inputs(lake)
    return build(ev.to_pylist(), cs.to_pylist(), as_of=as_of, **params)


def _write_inputs(lake: LakeStorage, events: pa.Table, consent_rows: pa.Table) -> None:
    """Replace consented/events (every hour partition) and privacy/consent_state."""
    for part in lake.partitions("consented", "events"):
        lake.delete_partition("consented", "events", part)
    write_lake(lake, events.to_pylist(), consent_rows.to_pylist())


def _erasure_handlers() -> list[dict]:
    spec_md = {}
    for assets_def in build_feature_assets():
        for key, spec in assets_def.specs_by_key.items():
            spec_md[key] = spec.metadata[ERASURE_META]
    return [h for key, handler in spec_md.items() for h in lake_tables(Target(key.to_user_string(), dict(handler)))]


def _without(t: pa.Table, columns: list[str], pseudonym: str) -> pa.Table:
    hit = pa.array([False] * t.num_rows)
    for c in columns:
        if c in t.column_names:
            hit = pc.or_(hit, pc.fill_null(pc.equal(t[c], pseudonym), False))
    return t.filter(pc.invert(hit))


def _erase(lake: LakeStorage, pseudonym: str) -> None:
    """What the erasure run does: consented/events and consent_state lose the subject, and every features table
    declared in the erasure plan (handler + `also` tables) loses the rows holding the pseudonym."""
    ev, cs = _inputs(lake)
    _write_inputs(lake, _without(ev, ["consent_subject", "user_pseudonym", "anonymous_pseudonym"], pseudonym),
                  _without(cs, ["consent_subject"], pseudonym))
    for h in _erasure_handlers():
        if lake.exists(h["layer"], h["table"]):
            lake.write_table(h["layer"], h["table"], _without(lake.read_table(h["layer"], h["table"]), h["columns"], pseudonym))


def _rotate(lake: LakeStorage) -> None:
    """Key rotation v1 -> v2 of the inputs and of every features table (the rotation job re-keys the layer)."""
    chain = KeyChain({"1": b"k1" * 16, "2": b"k2" * 16}, "2")
    tables = [("consented", "events", p) for p in lake.partitions("consented", "events")]
    tables += [("privacy", "consent_state", None)]
    tables += [("features", t, None) for t in _features_tables(lake)]
    for layer, table, part in tables:
        new, _ = rekey_table(lake.read_table(layer, table, part), chain, "2")
        lake.write_table(layer, table, new, partition=part)


def _features_tables(lake: LakeStorage) -> set[str]:
    return {f.path.split("/")[1] for f in lake.list_files("features")}


def _person_rows(lake: LakeStorage) -> dict[str, list]:
    """events_clean per person without as_of: what a person's state is a function of."""
    if not lake.exists("features", "events_clean"):
        return {}
    t = lake.read_table("features", "events_clean").drop_columns(["as_of"])
    out: dict[str, list] = {}
    for r in t.to_pylist():
        out.setdefault(r["person_id"], []).append(tuple(sorted(r.items())))
    return {k: sorted(v, key=repr) for k, v in out.items()}


class _Steps:
    """Runs the asset after each change; records its partials metadata and the persons whose rows changed."""

    def __init__(self, lake: LakeStorage, label: str):
        self.lake, self.label, self.log, self.previous = lake, label, {}, {}

    def run(self, name: str, as_of, **params) -> None:
        before = self.previous  # what the previous run wrote (an erasure run may have purged rows since)
        md = _partials(_run(self.lake, as_of, **params))
        after = self.previous = _person_rows(self.lake)
        changed = {p for p, rows in after.items() if before.get(p) != rows}
        self.log[name] = {"md": md, "changed": changed, "persons": len(after), "dropped": len(set(before) - set(after))}
        _assert_same(self.lake, _reference(self.lake, as_of, **params), f"{self.label} {name}")


@pytest.fixture(scope="module", params=SEEDS)
def scenario(request, tmp_path_factory):
    """Built once per seed: the batches applied and materialized incrementally, each compared with the reference."""
    seed = request.param
    rng = random.Random(seed * 7 + 1)
    rows = sorted(_landing(seed), key=lambda r: r["received_at"])
    cut1, cut2 = len(rows) // 2, 3 * len(rows) // 4
    lake = LakeStorage(url=str(tmp_path_factory.mktemp(f"inc{seed}") / "lake"))
    steps = _Steps(lake, f"seed {seed}")
    consent_rows = granted_all(*USERS, *ANONS)

    # batch 1: the first half of the arrivals (first run: no stored state, every person computed)
    batch1 = rows[:cut1]
    write_lake(lake, batch1, consent_rows)
    as_of1 = _as_of(batch1)
    steps.run("batch1", as_of1)

    # batch 2: more arrivals; a late event for an OLD hour (landing in the old hour's folder, received then, so
    # visible at the previous as_of too); re-delivered copies of old messages in a new hour; every unchanged hour
    # re-delivered with identical bytes; a consent withdrawal effective before the previous as_of
    old_hour = batch1[0]["landing_hour"]
    late = event(at=old_hour - timedelta(minutes=5), received=old_hour, landing=old_hour, user=USERS[0],
                 name="Order Completed", price=41.5, currency="EUR", category="news")
    redelivered = [dict(r, received_at=r["received_at"] + timedelta(hours=30),
                        landing_hour=(r["received_at"] + timedelta(hours=30)).replace(minute=0, second=0, microsecond=0))
                   for r in rng.sample(batch1, 5)]
    batch2 = rows[:cut2] + [late] + redelivered
    withdrawn = "a1"
    consent_rows = [c for c in consent_rows if not (c["consent_subject"] == pseudo(withdrawn) and c["purpose"] == "personalization")]
    consent_rows += [consent(withdrawn, "personalization", "granted", end=as_of1 - timedelta(hours=2)),
                     consent(withdrawn, "personalization", "denied", start=as_of1 - timedelta(hours=2))]
    write_lake(lake, batch2, consent_rows)
    as_of2 = _as_of(batch2)
    steps.run("batch2", as_of2)

    # steady tick: nothing new, as_of moves one hour
    as_of3 = as_of2 + timedelta(hours=1)
    steps.run("steady", as_of3)

    # batch 3: the rest of the arrivals
    batch3 = batch2 + rows[cut2:]
    write_lake(lake, batch3, consent_rows)
    as_of4 = max(_as_of(batch3), as_of3) + timedelta(hours=1)
    steps.run("batch3", as_of4)

    # a login stitching an anonymous device's earlier events to a new user (only that person changes)
    stitched = next(a for a in ANONS if a != withdrawn and pseudo(a) in {r["anonymous_pseudonym"] for r in rows if r["user_pseudonym"] is None})
    login = event(at=as_of4 + timedelta(minutes=10), anon=stitched, user="u-new", type="identify")
    consent_rows += granted_all("u-new")
    batch4 = batch3 + [login]
    write_lake(lake, batch4, consent_rows)
    as_of5 = as_of4 + timedelta(hours=1)
    steps.run("login", as_of5)

    # erasure after the subject's events (the erasure run also purges the features tables it declares)
    erased = pseudo(USERS[1])
    _erase(lake, erased)
    for t in _features_tables(lake):
        data = lake.read_table("features", t)
        assert erased not in set(pc.fill_null(data["person_id"], "").to_pylist()), t
    steps.run("erasure", as_of5)

    # key rotation between runs
    _rotate(lake)
    steps.run("rotation", as_of5)

    # a run that died between the state writes: state_persons is gone (deleted first, written last), another state
    # table holds leftovers -> nothing of the stored state is trusted
    lake.delete_partition("features", "state_persons")
    stale = lake.read_table("features", "state_sessions")
    lake.write_table("features", "state_sessions", stale.slice(0, stale.num_rows // 2))
    steps.run("after_crash", as_of5)

    # a session parameter the state depends on changes: every person is recomputed with it
    steps.run("new_gap", as_of5, session_gap_minutes=20)
    return {"lake": lake, "log": steps.log, "as_of": as_of5, "tmp": tmp_path_factory.mktemp(f"full{seed}")}


def test_incremental_equals_one_full_refresh(scenario):
    """Every table of the incremental lake == one full_refresh build of a fresh lake over the same inputs."""
    lake = scenario["lake"]
    fresh = LakeStorage(url=str(scenario["tmp"] / "lake"))
    ev, cs = _inputs(lake)
    write_lake(fresh, ev.to_pylist(), cs.to_pylist())
    md = _partials(_run(fresh, scenario["as_of"], full_refresh=True, session_gap_minutes=20))  # as the last run
    assert md["state"] == "rebuilt: full_refresh" and md["persons_touched"] == md["persons"]
    _assert_same(lake, _lake_tables(fresh), "incremental vs full_refresh")
    for t in ("state_sessions", "state_cells", "state_conversions", "state_subjects", "state_persons"):
        assert _sorted_rows(lake.read_table("features", t)) == _sorted_rows(fresh.read_table("features", t)), t


def test_steady_tick_recomputes_no_person(scenario):
    """as_of moves, nothing arrived: the state is reused for every person, none is recomputed."""
    steady = scenario["log"]["steady"]["md"]
    assert steady["state"] == "reused"
    assert steady["persons_touched"] == 0 and steady["events_recomputed"] == 0
    assert steady["persons_reused"] == steady["persons"] > 0


def test_each_run_recomputes_exactly_the_persons_whose_rows_changed(scenario):
    """The persons recomputed are exactly those whose events_clean rows changed (new arrivals, the late event's,
    the withdrawn subject's, the stitched device's merged person, the erased subject's component) — not everyone;
    the first run and a key rotation (every pseudonym changed) recompute everyone."""
    log = scenario["log"]
    assert log["batch1"]["md"]["state"] == log["after_crash"]["md"]["state"] == "rebuilt: no stored state"
    assert log["new_gap"]["md"]["state"] == "rebuilt: session parameters, state format or state code changed"
    for name, step in log.items():
        md = step["md"]
        assert md["persons"] == step["persons"], name
        if name in ("after_crash", "new_gap"):
            assert md["persons_touched"] == md["persons"], name
            continue
        if name != "batch1":
            assert md["state"] == "reused", name
            # the erasure and rotation jobs purged / re-keyed the stored state: dropped counts against that
            if name not in ("erasure", "rotation"):
                assert md["persons_dropped"] == step["dropped"], name
        assert md["persons_touched"] == len(step["changed"]), (name, md, len(step["changed"]))
    assert log["login"]["md"]["persons_touched"] == 1
    # a key rotation changes every pseudonym the fingerprints cover: every person is recomputed
    assert log["rotation"]["md"]["persons_reused"] == 0
    assert log["rotation"]["md"]["persons_touched"] == log["rotation"]["persons"]


def test_every_features_lake_table_is_in_the_erasure_plan(scenario):
    """The state tables hold person_id / consent_subject: each table under features/ in the lake is a target."""
    lake = scenario["lake"]
    present = {f.path.split("/")[1] for f in lake.list_files("features")}
    declared = {h["table"] for h in _erasure_handlers() if h.get("layer") == "features"}
    assert present and present <= declared, present - declared
    assert {"state_sessions", "state_persons", "state_subjects"} <= present


def test_the_state_key_names_the_code_that_computes_the_state(monkeypatch):
    """An upgrade that changes how the state is computed (the session SQL, the conversion events, ...) recomputes every
    person (a state_key mismatch, the `new_gap` step above); the key used to name only the parameters and a format
    number that whoever changed the SQL had to remember to bump."""
    from datetime import datetime, timezone

    from personalization_assets.features import partials
    from personalization_assets.features.params import FeatureParams

    params = FeatureParams(as_of=datetime(2026, 11, 28, tzinfo=timezone.utc))
    before = partials.state_key(params)
    assert partials._code_digest() in before
    monkeypatch.setattr(partials, "_code_digest", lambda: "0" * 16)  # what another version of the code computes
    assert partials.state_key(params) != before
