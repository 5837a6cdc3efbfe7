"""Shared fixtures: isolated data dirs, settings, definitions, and a real S3 API (moto) on loopback; the test
tiers (markers registered in pyproject.toml) given to every collected test."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# tiers: every test gets exactly one. A file or test that carries a tier marker keeps it; any other test gets
# its directory's tier (a new file under a known directory included); tests/<new dir>/ defaults to integration.

TIERS = ("unit", "integration", "ui", "infra", "bench")
DIRECTORY_TIERS = {
    "ui": "ui",
    "infra": "infra",
    "bench": "bench",
    "generator": "unit",
    "features": "unit",
    "raw": "integration",
    "privacy": "integration",
    "collector": "integration",
    "automation": "integration",
    "monitoring": "integration",
    "warehouse": "integration",
    "incremental": "integration",
}
DEFAULT_TIER = "integration"


def tier_of_path(path: Path) -> str:
    rel = Path(path).resolve().relative_to(ROOT / "tests")
    return DIRECTORY_TIERS.get(rel.parts[0], DEFAULT_TIER) if len(rel.parts) > 1 else DEFAULT_TIER


# The slowest modules, heaviest first (measured: per-module test time from `--junitxml` over a clean-clone `make test`,
# three workers, 2026-12-07 session 24; a module's seconds include its waits on subprocesses and locks). `make test`
# hands whole modules to its workers (--dist loadfile) in collection order, each worker taking the next module when it
# is free: starting with the longest ones keeps one long module from starting last while the other workers idle. A
# module missing here keeps its place after these; the list only orders, it never selects.
SLOW_FIRST = (
    "tests/privacy/test_concurrency.py",  # 149 s
    "tests/incremental/test_stale_only_platform.py",  # 147 s (the second of two commands waits for the first)
    "tests/raw/test_incremental_ingest.py",  # 119 s
    "tests/incremental/test_incremental_equals_full.py",  # 111 s
    "tests/warehouse/test_prod_rehearsal.py",  # 110 s
    "tests/privacy/test_consented_incremental.py",  # 105 s
    "tests/raw/test_batched_slow_path.py",  # 96 s
    "tests/warehouse/test_warehouse_local.py",  # 96 s
    "tests/warehouse/test_dbt_invocation_cost.py",  # 75 s
    "tests/privacy/test_object_lock.py",  # 67 s
    "tests/privacy/test_checkpoint_window.py",  # 60 s
    "tests/privacy/test_erasure_incremental.py",  # 59 s
    "tests/privacy/test_s3_privacy.py",  # 55 s
    "tests/privacy/test_end_to_end.py",  # 54 s
    "tests/warehouse/test_warehouse_prod.py",  # 52 s
    "tests/bench/test_harness.py",  # 50 s
    "tests/privacy/test_ledger_state_incremental.py",  # 46 s
    "tests/automation/test_stale_only.py",  # 44 s
    "tests/automation/test_carried_run.py",  # 41 s
    "tests/infra/test_checkov.py",  # 40 s
    "tests/privacy/test_incremental_privacy.py",  # 40 s
    "tests/monitoring/test_anomaly_checks_consented.py",  # 38 s
    "tests/privacy/test_dp.py",  # 36 s
    "tests/ui/test_partition_metadata_ui.py",  # 34 s
    "tests/ui/test_webserver_ui.py",  # 34 s
)


def _module_rank(item) -> int:
    rel = Path(str(item.path)).resolve().relative_to(ROOT).as_posix()
    return SLOW_FIRST.index(rel) if rel in SLOW_FIRST else len(SLOW_FIRST)


def closest_tiers(item) -> set[str]:
    """The tier markers at the closest level that has any: the test's own, else its class's, else its module's
    `pytestmark` (empty: the directory's tier applies). Two at one level are a mistake."""
    for node in reversed(item.listchain()):
        tiers = {m.name for m in node.own_markers if m.name in TIERS}
        if tiers:
            return tiers
    return set()


def pytest_collection_modifyitems(config, items):
    items.sort(key=_module_rank)  # stable: tests of one module stay together and in their order
    wrong, tier_of = [], {}
    for item in items:
        found = closest_tiers(item)
        if len(found) > 1:
            wrong.append(f"{item.nodeid}: {sorted(found)}")
        tier_of[item.nodeid] = min(found) if len(found) == 1 else tier_of_path(item.path)
    # then each test carries its one tier and no other: a module's `unit` does not reach a test marked `integration`
    for item in items:
        for node in item.listchain():
            node.own_markers[:] = [m for m in node.own_markers if m.name not in TIERS]
        item.add_marker(getattr(pytest.mark, tier_of[item.nodeid]))
    if wrong:
        raise pytest.UsageError("a test must have exactly one tier marker (" + ", ".join(TIERS) + "):\n  " + "\n  ".join(wrong))


# ------------------------------------------------------------------------------------------------
# environment isolation: no inherited platform settings

PLATFORM_ENV_PREFIXES = ("PERSONALIZATION_", "SNOWFLAKE_", "DBT_")


def clear_platform_env(mp: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Unset every PERSONALIZATION_*, SNOWFLAKE_* and DBT_* variable through `mp` (undone with it)."""
    for k in list(os.environ):
        if k.startswith(PLATFORM_ENV_PREFIXES):
            mp.delenv(k, raising=False)
    return mp


def platform_free_environ(*extra_prefixes: str, **set_vars: str) -> dict[str, str]:
    """os.environ for a subprocess, without the platform's variables (and any `extra_prefixes`), plus `set_vars`."""
    drop = PLATFORM_ENV_PREFIXES + extra_prefixes
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **set_vars}


@pytest.fixture
def clean_env(monkeypatch) -> pytest.MonkeyPatch:
    """The process environment without platform settings, for this test; returns the monkeypatch to set more."""
    return clear_platform_env(monkeypatch)


@pytest.fixture(scope="module")
def clean_env_module():
    """`clean_env` for module-scoped fixtures (one materialized world shared by a file's tests)."""
    mp = clear_platform_env(pytest.MonkeyPatch())
    yield mp
    mp.undo()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_environment(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir and DAGSTER_HOME under `root`, set through `monkeypatch` (already cleared of platform settings)."""
    d = root / "data"
    d.mkdir()
    monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(d))
    monkeypatch.setenv("PERSONALIZATION_EVENTS_START", "2026-01-01")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return d


@pytest.fixture
def data_dir(tmp_path, clean_env) -> Path:
    """A fresh local environment: data dir, DAGSTER_HOME and no inherited platform settings."""
    return local_environment(tmp_path, clean_env)


@pytest.fixture(scope="module")
def module_data_dir(tmp_path_factory, clean_env_module) -> Path:
    """`data_dir` for a whole module: a world materialized once and only READ by the module's tests (a test that
    changes the lake must work on its own copy, or use `data_dir`)."""
    return local_environment(tmp_path_factory.mktemp("module-env"), clean_env_module)


@pytest.fixture
def landing(data_dir) -> Path:
    p = data_dir / "landing"
    p.mkdir(exist_ok=True)
    return p


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_server, data_dir, monkeypatch):
    """Landing and lake on the moto S3 server, through the same settings the product uses."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("PERSONALIZATION_S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("PERSONALIZATION_LANDING_URL", f"s3://{bucket}/landing")
    monkeypatch.setenv("PERSONALIZATION_LAKE_URL", f"s3://{bucket}/lake")
    return {"bucket": bucket, "client": s3, "endpoint": moto_server}


@pytest.fixture(scope="session")
def sdk_capture():
    """A loopback server answering like a CDP's /v1/batch that keeps what the real SDKs send (tests/sdk_capture.py);
    call `.take()` for the bodies received since the last take."""
    from tests.sdk_capture import CaptureServer

    server = CaptureServer().start()
    yield server
    server.stop()


# A full collection (every object the process holds, ~600k) cost 0.4-0.7 s of CPU after each module (measured on a
# shared machine), for a few thousand objects each time; 25 unit modules took ~3 s less CPU without it. It runs once
# the frozen set has grown by this many objects since the last one (what modules left behind in cycles), so memory
# stays bounded.
FULL_COLLECT_AFTER_GROWTH = 100_000
_frozen_after_full_collect = [0]


def pytest_collection_finish(session):
    """Everything imported by collection (Dagster, pyarrow, the definitions: ~300k objects) lives until the end:
    move it out of the garbage collector's view (gc.freeze), so a gc.collect() scans only what tests create."""
    import gc

    gc.collect()
    gc.freeze()
    _frozen_after_full_collect[0] = gc.get_freeze_count()


@pytest.fixture(scope="module", autouse=True)
def _collect_module_garbage():
    """What a module's fixtures built was frozen by the per-test fixture below (it was alive when a test began):
    once enough of that has piled up, give the collector back its view of everything, collect the garbage of
    the modules since the last time (cycles of their torn-down worlds, instances, connections), and freeze the
    survivors again."""
    import gc

    from tests.dagster_internals import reset_defs_state_storage

    yield
    if gc.get_freeze_count() - _frozen_after_full_collect[0] > FULL_COLLECT_AFTER_GROWTH:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        _frozen_after_full_collect[0] = gc.get_freeze_count()
    reset_defs_state_storage()


@pytest.fixture(autouse=True)
def _reset_dagster_process_state():
    """Dagster keeps the defs-state storage of the last instance it entered in a process-wide context
    variable (dagster._core.storage.defs_state.base). A test whose temporary instance is gone would leave
    the next test's `dg.materialize` pointing at a deleted sqlite file, so reset it between tests.
    (Internal: there is no public reset; production processes use one instance. tests/dagster_internals.py)

    The collections around every test scan only what was created since this test began: whatever is alive when
    it begins (module fixtures, caches the earlier tests filled) is frozen first. Without that, each of the two
    collections re-scanned everything earlier tests left alive: ~0.3 s of CPU per test late in a worker's session
    (a third of `make test`'s setup+teardown time), for nothing the test created."""
    import gc

    from tests.dagster_internals import reset_defs_state_storage

    gc.collect()  # run pending instance finalizers now, not in the middle of the next test
    gc.freeze()
    reset_defs_state_storage()
    yield
    gc.collect()  # the test's own garbage (its instances' finalizers run here, before the reset)
    reset_defs_state_storage()
