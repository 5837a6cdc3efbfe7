"""Fixtures of the warehouse tests: the dbt manifest (parsed once per session) and the local build.

The local build (features fixtures -> warehouse/features_loaded -> `dbt build` on DuckDB, through Dagster)
runs once per session: the local tests assert on it, and the prod test compares Snowflake's rows with it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pytest

# fakesnow.server() imports the submodule `fakesnow.server`, which then shadows the function on the package:
# take the function before anything imports the submodule
from fakesnow import server as start_fakesnow_server  # noqa: F401  (used by test_warehouse_prod)

from personalization_assets.warehouse.project import dbt_project
from personalization_assets.warehouse.resources import dbt_executable
from tests.warehouse.warehouse_fixtures import write_feature_lake

MARTS = ("user_segments", "segment_membership", "advertising_audience", "segment_sizes")
# a stable row order for comparisons
MART_ORDER = {
    "user_segments": "person_id",
    "segment_membership": "person_id, segment_name",
    "advertising_audience": "person_id",
    "segment_sizes": "segment_name",
}


def _manifest_is_current() -> bool:
    """dbt/target/manifest.json exists and is newer than every file of the dbt project (make's `dbt-parse` target
    runs the same `dbt parse` before the tests)."""
    manifest = dbt_project.manifest_path
    if not manifest.exists():
        return False
    root = Path(dbt_project.project_dir)
    sources = [root / "dbt_project.yml", root / "profiles.yml"]
    for d in ("models", "macros", "tests", "seeds", "snapshots", "analyses"):
        sources += [p for p in (root / d).rglob("*") if p.is_file()] if (root / d).exists() else []
    return all(manifest.stat().st_mtime >= p.stat().st_mtime for p in sources if p.exists())


@pytest.fixture(scope="session")
def dbt_manifest() -> Path:
    """`dbt parse` once, unless the manifest is newer than the project: @dbt_assets reads dbt/target/manifest.json
    when the assets are built. Under a file lock: xdist workers share dbt/target."""
    import fcntl

    lock_path = Path(dbt_project.project_dir) / "target" / ".pytest-parse.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _manifest_is_current():
            _dbt_parse()
    assert dbt_project.manifest_path.exists()
    return dbt_project.manifest_path


def _dbt_parse() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DBT_TARGET_PATH"}
    proc = subprocess.run(
        [dbt_executable(), "parse", "--quiet", "--profiles-dir", ".", "--target", "local"],
        cwd=dbt_project.project_dir,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"dbt parse failed:\n{proc.stdout}\n{proc.stderr}"


from tests.helpers import check_results, materializations  # noqa: E402,F401  (shared with the other suites)
from tests.conftest import clear_platform_env


def isolated_env(mp: pytest.MonkeyPatch, data_dir: Path, dbt_target: Path) -> None:
    """No inherited platform settings; dbt artifacts of the test runs go to a temp dir, not dbt/target."""
    clear_platform_env(mp)
    mp.setenv("PERSONALIZATION_DATA_DIR", str(data_dir))
    # set (not just unset) so the value warehouse.defs writes into os.environ is undone afterwards
    mp.setenv("PERSONALIZATION_LAKE_URL", str(data_dir / "lake"))
    mp.setenv("DBT_TARGET_PATH", str(dbt_target))


def read_duckdb_marts(path: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {m: con.execute(f"select * from segments.{m} order by {MART_ORDER[m]}").fetchall() for m in MARTS}
    finally:
        con.close()


@dataclass
class LocalBuild:
    data_dir: Path
    result: dg.ExecuteInProcessResult
    marts: dict[str, list[tuple]]
    column_types: dict[str, dict[str, str]]


@pytest.fixture(scope="session")
def local_build(dbt_manifest, tmp_path_factory) -> LocalBuild:
    from personalization_assets.resources import build_resources
    from personalization_assets.settings import load_settings
    from personalization_assets import warehouse as warehouse_layer

    base = tmp_path_factory.mktemp("warehouse_local")
    data_dir = base / "data"
    write_feature_lake(data_dir)
    with pytest.MonkeyPatch.context() as mp:
        isolated_env(mp, data_dir, base / "dbt_target")
        settings = load_settings()
        defs = warehouse_layer.defs(settings)
        lake = build_resources(settings)["lake"]
        result = dg.materialize(list(defs.assets), resources={"lake": lake, **defs.resources}, raise_on_error=False)
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        column_types = {
            m: dict(con.execute(f"select column_name, data_type from information_schema.columns where table_schema = 'segments' and table_name = '{m}'").fetchall())
            for m in MARTS
        }
    finally:
        con.close()
    return LocalBuild(data_dir=data_dir, result=result, marts=read_duckdb_marts(data_dir / "warehouse.duckdb"), column_types=column_types)
