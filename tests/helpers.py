"""Helpers for materializing the real definitions on the environment the test configured."""

from __future__ import annotations

from contextlib import contextmanager

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.definitions import build_definitions
from personalization_assets.settings import load_settings


def defs_for_env() -> dg.Definitions:
    return build_definitions(load_settings())


PIPELINE = "pipeline"  # every asset except the privacy operations (erasure, retention, rotation)


def materialize(defs: dg.Definitions, selection: str, partitions: tuple[str, str] | None = None, instance=None, raise_on_error=True,
                run_config: dict | None = None):
    from personalization_assets.privacy.operations import OPERATIONS

    graph = defs.resolve_asset_graph()
    if selection == PIPELINE:
        sel = dg.AssetSelection.all() - OPERATIONS
    else:
        sel = dg.AssetSelection.from_string(selection).required_multi_asset_neighbors()
    from personalization_assets.cli import plan_selection

    keys = plan_selection(graph, sel.resolve(graph), f"{partitions[0]}..{partitions[1]}" if partitions else None)
    tags = {}
    if partitions:
        tags = {"dagster/asset_partition_range_start": partitions[0], "dagster/asset_partition_range_end": partitions[1]}
    job = defs.resolve_implicit_global_asset_job_def()
    if instance is not None:
        return job.execute_in_process(instance=instance, asset_selection=list(keys), tags=tags, raise_on_error=raise_on_error, run_config=run_config)
    # dispose the ephemeral instance now: a garbage-collected one would reset Dagster's process-wide
    # defs-state context variable to a stale value at an arbitrary later moment
    with dg.DagsterInstance.ephemeral() as ephemeral:
        return job.execute_in_process(instance=ephemeral, asset_selection=list(keys), tags=tags, raise_on_error=raise_on_error,
                                      run_config=run_config)


def check_results(result) -> dict[str, bool]:
    out = {}
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            d = ev.event_specific_data
            out[d.asset_check_key.to_user_string()] = d.passed
    return out


def materializations(result) -> dict[str, dict]:
    out = {}
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_MATERIALIZATION":
            m = ev.event_specific_data.materialization
            out[m.asset_key.to_user_string()] = {k: getattr(v, "value", v) for k, v in m.metadata.items()}
    return out


def generate(landing_dir, users=300, events=20_000, seed=11, bad_fraction=0.01, days=2, end="2026-11-28") -> dict:
    """Write a generated landing zone and return its manifest (planted cases)."""
    import datetime as dt
    import json

    import pyarrow.fs as pafs

    from personalization_assets.generator import generate_landing_zone

    generate_landing_zone(pafs.LocalFileSystem(), str(landing_dir), users=users, events=events, seed=seed,
                          bad_fraction=bad_fraction, end=dt.date.fromisoformat(end), days=days)
    return json.loads((landing_dir / "_generator" / "manifest.json").read_text())


def partition_range(manifest) -> tuple[str, str]:
    return f"{manifest['start']}-00:00", f"{manifest['end']}-23:00"


def string_leaves(name: str, col):
    """Every string inside a column, however nested (lists flattened, struct fields one by one)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        yield name, col
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        yield from string_leaves(f"{name}[]", pc.list_flatten(col))
    elif pa.types.is_struct(col.type):
        for i in range(col.type.num_fields):
            yield from string_leaves(f"{name}.{col.type.field(i).name}", col.field(i))


def first_contained(needles: list[str], leaves: list[tuple[str, pa.Array]]) -> tuple[str, str, str] | None:
    """The first (leaf name, string, needle) where a string of `leaves` contains a needle, or None. Exact, in one
    DuckDB query whose cost grows with the characters of the strings, not with strings x needles: a string
    containing needle v contains v's first k characters (k = the shortest needle's length) at some position,
    so every k-character window of every distinct string is joined, by hash, to the needles' k-character
    prefixes, and each candidate is then compared whole."""
    import duckdb

    needles = sorted({v for v in needles if v})
    if not needles or not leaves:
        return None
    k = min(len(v) for v in needles)
    names = pa.array([name for name, col in leaves for _ in range(len(col))], pa.string()).dictionary_encode()
    strings = pa.concat_arrays([col.cast(pa.string()) for _, col in leaves])
    con = duckdb.connect()
    try:
        con.register("leaves", pa.table({"leaf": names, "h": strings}))
        con.register("needles", pa.table({"v": needles}))
        hit = con.execute(f"""
            with hay as (select distinct h from leaves where length(h) >= {k}),
            windows as (select h, unnest(range(1, length(h) - {k} + 2)) as i from hay),
            found as (
                select w.h, n.v from windows w join needles n on substr(w.h, w.i, {k}) = left(n.v, {k})
                where substr(w.h, w.i, length(n.v)) = n.v
                limit 1
            )
            select l.leaf::varchar, f.h, f.v from found f join leaves l on l.h = f.h limit 1
        """).fetchall()
    finally:
        con.close()
    return hit[0] if hit else None


def build_waits_behind(lock, build, written, wait_s: float = 6) -> tuple[object, float]:
    """Run `build()` in a thread while holding `lock` (another build in progress, with a lock file description of
    its own as another process would have): after `wait_s` it must still be waiting with nothing `written()`; once
    the lock is released it finishes. Returns (its result, the time the lock was released)."""
    import threading
    import time

    out: dict = {}
    with lock:
        worker = threading.Thread(target=lambda: out.setdefault("result", build()))
        worker.start()
        worker.join(timeout=wait_s)
        assert worker.is_alive() and not written(), "the second build did not wait for the lock"
        released = time.time()
    worker.join(timeout=300)
    return out["result"], released



@contextmanager
def held_by_another_thread(take):
    """For the with-block, another thread holds the lock `take()` returns (a context manager, entered in that thread:
    another run's build or writer)."""
    import threading

    held, release = threading.Event(), threading.Event()

    def hold():
        with take():
            held.set()
            release.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(30), "the other thread never took the lock"
        yield
    finally:
        release.set()
        t.join()


def anomaly_config_file(tmp_path, edit) -> str:
    """A copy of the packaged anomalies.yaml changed by `edit(doc)` (in place), written under tmp_path: the value
    for PERSONALIZATION_ANOMALY_CONFIG, the setting users tune the anomaly checks with."""
    import yaml

    from personalization_assets.checks import anomalies

    doc = yaml.safe_load(anomalies.CONFIG_PATH.read_text(encoding="utf-8"))
    edit(doc)
    path = tmp_path / "anomalies.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return str(path)


def block_on_event_anomalies(doc: dict) -> None:
    """anomalies.yaml edit: every check of the hourly tables blocks (severity error). A blocking check records its
    pass on hours still warming up, which the non-blocking defaults do not."""
    from personalization_assets.checks.anomalies import EVENT_CHECKS

    for name in EVENT_CHECKS:
        doc["checks"][name].update(severity="error", blocking=True)
