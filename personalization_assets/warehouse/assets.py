"""The dbt models as Dagster assets, run with `dbt build`.

`dbt build` runs, in DAG order, each model's unit tests, the model, then its data tests, so a failing
unit test stops the model before it is written. Data tests are reported as Dagster asset checks (blocking,
severity error). dagster-dbt does not report unit tests, so their results are read back from
run_results.json and recorded as asset observations on the tested model (`dbt/unit_test`).

Unit tests check the models' SQL on fixed inputs, not the data: once every unit test passed for one project
content, dbt version and adapter (`unit_tests_marker`), the following builds of that content exclude them
(`--exclude-resource-type unit_test`, as dbt's documentation advises for production). The first build after a
change of the project, dbt or the adapter runs them again, as does every build without the marker (a data dir
without it, a failed unit test).

The manifest (dbt/target/manifest.json) must exist when `build_dbt_assets` is called: `make dbt-parse`
(or `dagster-dbt project prepare-and-package --file personalization_assets/warehouse/project.py`).
"""

import hashlib
import importlib.metadata
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliInvocation, DbtCliResource, dbt_assets

from personalization_assets.warehouse.project import dbt_project
from personalization_assets.warehouse.resources import warehouse_file_lock
from personalization_assets.warehouse.translator import WarehouseDbtTranslator


def unit_test_observations(
    invocation: DbtCliInvocation, manifest: Mapping[str, Any], translator: WarehouseDbtTranslator
) -> Iterator[dg.AssetObservation]:
    """One observation per unit test that dbt ran, on the asset of the model it tests."""
    try:
        results = invocation.get_artifact("run_results.json")["results"]
    except FileNotFoundError:
        return
    models_by_name = {
        node["name"]: node for node in manifest["nodes"].values() if node["resource_type"] == "model"
    }
    for result in results:
        unit_test = manifest.get("unit_tests", {}).get(result["unique_id"])
        if unit_test is None or unit_test["model"] not in models_by_name:
            continue
        yield dg.AssetObservation(
            asset_key=translator.get_asset_key(models_by_name[unit_test["model"]]),
            metadata={
                "dbt/unit_test": unit_test["name"],
                "dbt/unit_test_status": result["status"],
                "dbt/unit_test_passed": result["status"] == "pass",
                "dbt/unit_test_message": result.get("message") or "",
            },
        )


@contextmanager
def scoped_environ(values: tuple[tuple[str, str], ...]):
    """Set env vars for the dbt subprocess only while it runs (never leak them into the process)."""
    saved = {k: os.environ.get(k) for k, _ in values}
    os.environ.update(dict(values))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def duckdb_row_counts(path: str) -> dict[tuple[str, str], int]:
    """(schema, relation) -> rows of every table/view in the local warehouse file, read through a read-only
    ATTACH in a throwaway in-memory database (never keeps the file open in this process)."""
    import duckdb

    if not path or not os.path.exists(path):
        return {}
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"attach '{path.replace(chr(39), chr(39) * 2)}' as wh (read_only)")
        rels = con.execute("select table_schema, table_name from information_schema.tables where table_catalog = 'wh'").fetchall()
        return {(schema, name): con.execute(f'select count(*) from wh."{schema}"."{name}"').fetchall()[0][0] for schema, name in rels}
    finally:
        con.close()


def _with_row_count(event, counts: dict[str, int]):
    key = getattr(event, "asset_key", None)
    if key is None and isinstance(event, dg.Output):
        key = None
    name = key.path[-1] if key is not None else (event.output_name.rsplit("__", 1)[-1] if isinstance(event, dg.Output) else None)
    if name in counts and isinstance(event, (dg.Output, dg.AssetMaterialization)):
        return event.with_metadata({**(event.metadata or {}), "dagster/row_count": counts[name], "rows_written": counts[name]})
    return event


PARTIAL_PARSE = "partial_parse.msgpack"


def invocation_target_path(context: dg.AssetExecutionContext) -> Path:
    """A fresh target folder per invocation, where dagster-dbt's default would put it ($DBT_TARGET_PATH, else
    dbt/target), so we know where dbt writes its partial-parse state."""
    base = Path(os.environ.get("DBT_TARGET_PATH") or dbt_project.target_path)
    if not base.is_absolute():
        base = dbt_project.project_dir / base
    return base / f"warehouse_dbt-{context.run.run_id[:7]}-{uuid.uuid4().hex[:7]}"


def remove_invocation_folder(target_path: Path) -> None:
    """Delete a successful invocation's target folder once its artifacts were read (run_results, the partial-parse
    state saved): each `dbt build` wrote ~5 MB there (compiled and run SQL, manifest, run_results) and nothing
    removed it — at a tick every 5 minutes, 1.4 GB a day in dbt/target. A failed build's folder is kept (its path
    is logged) for inspection."""
    shutil.rmtree(target_path, ignore_errors=True)


def project_fingerprint(project_dir: Path | None = None) -> str:
    """sha256 of the dbt project's files (relative path and bytes of every file outside target/, logs/ and hidden
    folders): which project a partial-parse state was saved for. ~30 small files: milliseconds."""
    root = Path(project_dir or dbt_project.project_dir)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # not walked at all: target/ holds every invocation's folder (thousands of files)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (Path(dirpath) == root and d in ("target", "logs"))]
        files += [path for f in filenames if not f.startswith(".") and (path := Path(dirpath) / f).is_file()]
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _cached_state(cache_dir: str, fingerprint: str) -> Path:
    return Path(cache_dir) / f"partial_parse-{fingerprint[:32]}.msgpack"


def seed_partial_parse(cache_dir: str | None, target_path: Path, fingerprint: str) -> bool:
    """Put the partial-parse state a previous run saved FOR THIS PROJECT CONTENT (`project_fingerprint`) into this
    invocation's target folder. dagster-dbt would copy dbt/target's, written by `dbt parse` at packaging time with
    another profile and environment (data dir, lake URL): dbt rejects it ("Unable to do partial parsing because
    profile has changed") and re-parses the whole project on every run. dbt validates the rest (vars, env vars,
    profile), but trusts a schema file whose modification time equals the one it recorded without reading it: a
    state saved by another checkout of the project (an older version run on the same data dir) made dbt keep that
    version's unit tests for the current files, and the build failed on them until the state was deleted."""
    if not cache_dir:
        return False
    cached = _cached_state(cache_dir, fingerprint)
    if not cached.exists():
        return False
    target_path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, target_path / PARTIAL_PARSE)
    return True


def _publish(keep: Path, write, others) -> None:
    """Write `keep` through `write(temp path)` and rename it into place (concurrent runs never see half a file; the
    last writer wins), then remove the files `others()` lists but `keep` (what other project contents or versions left)."""
    keep.parent.mkdir(parents=True, exist_ok=True)
    tmp = keep.parent / f".{keep.name}.{uuid.uuid4().hex}"
    write(tmp)
    os.replace(tmp, keep)
    for other in others():
        if other != keep:
            other.unlink(missing_ok=True)


def save_partial_parse(target_path: Path, cache_dir: str | None, fingerprint: str) -> None:
    """Keep this invocation's partial-parse state for the next run of the same project content (any of concurrent
    runs' states is a valid one for dbt to check). States of other project content are removed."""
    fresh = target_path / PARTIAL_PARSE
    if not cache_dir or not fresh.exists():
        return
    _publish(_cached_state(cache_dir, fingerprint), lambda tmp: shutil.copyfile(fresh, tmp),
             lambda: [*Path(cache_dir).glob("partial_parse-*.msgpack"), Path(cache_dir) / PARTIAL_PARSE])


UNIT_TESTS_MARKER = "unit_tests_passed-{key}"


def unit_tests_marker(cache_dir: str | None, fingerprint: str, env: str) -> Path | None:
    """Where a build records that every unit test passed for this project content (`project_fingerprint`), target
    environment, dbt-core and adapter version (each can change what a unit test's SQL returns). None: no cache dir,
    the unit tests run in every build."""
    if not cache_dir:
        return None
    adapter = "dbt-snowflake" if env == "prod" else "dbt-duckdb"
    versions = []
    for dist in ("dbt-core", adapter, "duckdb" if env != "prod" else "snowflake-connector-python"):
        try:
            versions.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist}=?")
    key = hashlib.sha256("|".join([fingerprint, env, *versions]).encode()).hexdigest()[:32]
    return Path(cache_dir) / UNIT_TESTS_MARKER.format(key=key)


def all_unit_tests_passed(run_results: Mapping[str, Any], manifest: Mapping[str, Any]) -> bool:
    """Every unit test of the manifest has a result in this build and each one passed (a project without unit
    tests: False, nothing to record)."""
    expected = set(manifest.get("unit_tests", {}))
    statuses = {r["unique_id"]: r["status"] for r in run_results.get("results", []) if r["unique_id"] in expected}
    return bool(expected) and set(statuses) == expected and all(s == "pass" for s in statuses.values())


def record_unit_tests_passed(marker: Path, run_id: str) -> None:
    """Write `marker` (naming the run) and remove the markers of other project contents or versions."""
    _publish(marker, lambda tmp: tmp.write_text(run_id + "\n"), lambda: marker.parent.glob(UNIT_TESTS_MARKER.format(key="*")))


@cache
def build_dbt_assets(env: str, dbt_env: tuple[tuple[str, str], ...] = (), duckdb_path: str | None = None,
                     parse_cache_dir: str | None = None) -> dg.AssetsDefinition:
    """The dbt project as one multi-asset. Same keys, deps and checks in every environment;
    only kinds/storage kind follow the environment's warehouse. `dbt_env`: variables the dbt
    subprocess needs (absolute data dir and lake URL locally). `parse_cache_dir`: where dbt's partial-parse
    state is kept between runs (see `seed_partial_parse`)."""
    translator = WarehouseDbtTranslator(env)

    @dbt_assets(
        manifest=dbt_project.manifest_path,
        project=dbt_project,
        dagster_dbt_translator=translator,
        name="warehouse_dbt",
    )
    def warehouse_dbt(context: dg.AssetExecutionContext, dbt: DbtCliResource):
        target_path = invocation_target_path(context)
        fingerprint = project_fingerprint()
        seed_partial_parse(parse_cache_dir, target_path, fingerprint)
        marker = unit_tests_marker(parse_cache_dir, fingerprint, env)
        try:  # read, not just tested: a build of another project version on this data dir may remove it meanwhile
            passed_in = marker.read_text().strip() if marker is not None else None
        except FileNotFoundError:
            passed_in = None
        run_unit_tests = passed_in is None
        args = ["build"] if run_unit_tests else ["build", "--exclude-resource-type", "unit_test"]
        if not run_unit_tests:
            context.log.info(f"dbt unit tests not run: all passed for this project content and dbt/adapter versions (run "
                             f"{passed_in[:8]}); they run again when the project or a version changes")
        with scoped_environ(dbt_env):
            if duckdb_path is None:
                # Snowflake: dagster-dbt queries each relation as its model completes
                invocation = dbt.cli(args, context=context, raise_on_error=False, target_path=target_path)
                yield from invocation.stream().fetch_row_counts()
            else:
                # DuckDB: the dbt subprocess holds the file's write lock while it runs, and dagster-dbt's own
                # row counting would keep the file open in this process afterwards (blocking the eraser and
                # readers). Count after dbt exits, through a read-only ATTACH, and attach the counts. One run at a
                # time builds the file: another run's dbt step waits here instead of failing on DuckDB's lock.
                # Only the models' outputs wait for the counts: the test results (most of the ~150 events) are recorded
                # while dbt still runs, instead of all of them after it (≈ 3 s of event writes at the end of the step).
                with warehouse_file_lock(duckdb_path, log=context.log):
                    invocation = dbt.cli(args, context=context, raise_on_error=False, target_path=target_path)
                    held = []
                    for event in invocation.stream():
                        if isinstance(event, (dg.Output, dg.AssetMaterialization)):
                            held.append(event)
                        else:
                            yield event
                    counts = {name: n for (_, name), n in duckdb_row_counts(duckdb_path).items()}
                yield from (_with_row_count(ev, counts) for ev in held)
        save_partial_parse(target_path, parse_cache_dir, fingerprint)
        yield from unit_test_observations(invocation, invocation.manifest, translator)
        error = invocation.get_error()
        if run_unit_tests and marker is not None and error is None:
            try:
                if all_unit_tests_passed(invocation.get_artifact("run_results.json"), invocation.manifest):
                    record_unit_tests_passed(marker, context.run.run_id)
            except FileNotFoundError:
                pass
        if error is not None:
            context.log.warning(f"dbt's artifacts of this failed build are kept for inspection: {target_path}")
            raise error
        remove_invocation_folder(target_path)

    return warehouse_dbt
