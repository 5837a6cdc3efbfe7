"""events_clean sorted a range of persons at a time: same rows, same order as the one query, no files left."""

import os
import random
import subprocess
import sys
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa

from personalization_assets.core.storage import LakeStorage
from personalization_assets.features import assets as feature_assets
from personalization_assets.features import (
    build_feature_assets,
    partials,
    person_ranges,
)
from personalization_assets.features import sql as feature_sql
from personalization_assets.features.assets import FEATURE_KEYS
from personalization_assets.resources import DuckDBEngine
from tests.features.feature_fixtures import event, granted_all, write_lake

AS_OF = "2026-01-12T00:00:00Z"


def _scenario(seed: int = 7) -> tuple[list[dict], list[dict]]:
    """~400 events of 60 people over four days: anonymous visits stitched by logins, same-second events (the
    message id breaks the tie), re-delivered copies."""
    rnd = random.Random(seed)
    ev, subjects = [], set()
    for p in range(60):
        anon, user = f"a{p}", (f"u{p}" if p % 3 else None)
        subjects.update({anon, user} - {None})
        for _ in range(rnd.randint(1, 12)):
            at = f"2026-01-0{rnd.randint(5, 8)} {rnd.randint(0, 23):02d}:{rnd.choice([0, 0, 30]):02d}"
            logged_in = user is not None and rnd.random() < 0.5
            ev.append(event(at=at, anon=anon, user=user if logged_in else None, category=rnd.choice(["news", "tech"])))
            if rnd.random() < 0.1:  # the same message again, received an hour later
                again = dict(ev[-1])
                again["received_at"] = again["received_at"].replace(hour=(again["received_at"].hour + 1) % 24)
                ev.append(again)
    return ev, granted_all(*sorted(subjects))


def _tables(lake: LakeStorage) -> dict[str, list]:
    """Every table the feature build writes (published and per-person state), as rows in file order."""
    names = [*feature_sql.TABLES, *partials.STATE_TABLES]
    return {t: lake.read_table("features", t).to_pylist() for t in names}


@dataclass
class Built:
    lake: LakeStorage
    events_clean: pa.Table
    events_md: dict  # events_clean's materialization metadata
    partials: dict  # sessions' `partials` metadata
    spill_dir: list  # what is left in DuckDB's temp directory


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True).stdout)


def _build(tmp_path, name: str, scenario, range_rows: int, monkeypatch) -> Built:
    lake = LakeStorage(url=str(tmp_path / name / "lake"))
    ev, consent_rows = scenario
    write_lake(lake, ev, consent_rows)
    spill = tmp_path / name / "duckdb"
    spill.mkdir(parents=True)
    # the range files of a build killed mid-write: every build removes them first, one that uses no ranges too
    (spill / f"sorted-ranges-{_dead_pid()}-killed" / "__range=0").mkdir(parents=True)
    monkeypatch.setattr(feature_assets, "SORT_RANGE_ROWS", range_rows)
    result = dg.materialize(
        build_feature_assets(),
        resources={"lake": lake, "duckdb": DuckDBEngine(database=":memory:", connection_config={"temp_directory": str(spill)})},
        run_config={"ops": {"feature_tables": {"config": {"as_of": AS_OF}}}},
    )
    md = {m.asset_key: m.metadata for m in result.asset_materializations_for_node("feature_tables")}
    return Built(lake, lake.read_table("features", "events_clean"), md[FEATURE_KEYS["events_clean"]],
                 md[FEATURE_KEYS["sessions"]]["partials"].value, list(spill.iterdir()))


def test_person_ranges_write_the_rows_and_order_of_one_sort(tmp_path, monkeypatch):
    scenario = _scenario()  # once: the fixtures number message ids as they make them
    one = _build(tmp_path, "one", scenario, person_ranges.RANGE_ROWS, monkeypatch)
    ranged = _build(tmp_path, "ranged", scenario, 40, monkeypatch)
    assert one.events_md["sort_ranges"].value == 1
    assert ranged.events_md["sort_ranges"].value >= 8  # ~400 eligible copies in ranges of ~40 rows
    assert ranged.events_clean.num_rows == one.events_clean.num_rows > 300
    assert ranged.events_clean.schema == one.events_clean.schema
    # the same rows in the same order (a hash-bucketed sort keeps each person together but breaks this)
    assert ranged.events_clean.to_pylist() == one.events_clean.to_pylist()
    keys = [(r["person_id"], r["timestamp"], r["message_id"]) for r in ranged.events_clean.to_pylist()]
    assert keys == sorted(keys)
    for built in (one, ranged):  # the range files are gone, and so are those a killed build left
        assert [p for p in built.spill_dir if p.name.startswith("sorted-ranges-")] == []
    # the per-person state and the derived tables, built a range of persons at a time, are the same tables
    assert one.partials["person_ranges"] == 1
    assert ranged.partials["person_ranges"] >= 8
    one_tables, ranged_tables = _tables(one.lake), _tables(ranged.lake)
    for table, rows in one_tables.items():
        assert ranged_tables[table] == rows, table


def test_identifiers_sharing_a_hash_fall_back_to_the_one_query(tmp_path, monkeypatch):
    """A real collision: the identifier hash is cut to two bits on both sides of the join, so identifiers of the
    map share values (joined on it, events would multiply across persons)."""
    scenario = _scenario()
    one = _build(tmp_path, "one", scenario, person_ranges.RANGE_ROWS, monkeypatch)
    monkeypatch.setattr(feature_sql, "KEY_HASH", "(hash({}) % 4)")
    collided = _build(tmp_path, "collided", scenario, 40, monkeypatch)
    assert collided.events_md["sort_ranges"].value == 1
    assert collided.events_clean.to_pylist() == one.events_clean.to_pylist()


def test_range_count():
    assert person_ranges.range_count(0) == 1
    assert person_ranges.range_count(person_ranges.RANGE_ROWS) == 1
    assert person_ranges.range_count(person_ranges.RANGE_ROWS + 1) == 2
    assert person_ranges.range_count(100_000_000, 4_000_000) == 25


def test_range_files_of_a_killed_writer_are_removed_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    gone = tmp_path / f"sorted-ranges-{int(dead.stdout)}-x1"
    alive = tmp_path / f"sorted-ranges-{os.getppid()}-x2"
    mine = tmp_path / f"sorted-ranges-{os.getpid()}-x3"
    other = tmp_path / "duckdb_temp_storage-0.tmp"
    for folder in (gone, alive, mine):
        (folder / "__range=0").mkdir(parents=True)
        (folder / "__range=0" / "data_0.parquet").write_bytes(b"x")
    other.write_bytes(b"spill")
    assert person_ranges.sweep_leftovers(tmp_path) == [gone]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, mine.name, other.name])


def test_a_range_folder_is_judged_by_its_owner_lock_not_by_a_pid_that_may_be_reused(tmp_path):
    """A run pod's build has the same PID every time, and PIDs are reused: a killed build's folder named with a PID
    that is alive again (or this process's own) was kept for good, pseudonyms included. Each folder holds an owner lock
    its build holds while it is in use; a free one means the build is gone, whatever process has that PID now."""
    import fcntl

    reused = tmp_path / f"sorted-ranges-{os.getpid()}-x1"  # the PID is alive (ours) but its build was killed
    live = tmp_path / "sorted-ranges-999999999-x2"  # no such PID, but a build holds the folder's lock
    for folder in (reused, live):
        (folder / "__range=0").mkdir(parents=True)
        (folder / person_ranges._OWNER_LOCK).touch()
    with open(live / person_ranges._OWNER_LOCK) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert person_ranges.sweep_leftovers(tmp_path) == [reused]
    assert person_ranges.sweep_leftovers(tmp_path) == [live]

