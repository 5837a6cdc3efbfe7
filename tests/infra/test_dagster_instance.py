"""infra/dagster/dagster.prod.yaml is a valid Dagster 1.13 instance configuration.

Offline checks (no database): the file passes Dagster's own instance-config loader
(`dagster_instance_config`, the function `DagsterInstance.from_config` uses; tests/dagster_internals.py), every configurable class it names can be imported and accepts its config (env vars resolved),
and the Postgres URL dagster-postgres would build is the TLS/psycopg2 one.

Live check: the file (with TLS params swapped for a throwaway local server) opens a real
DagsterInstance on PostgreSQL, creates the schema and round-trips a run. It needs the PostgreSQL
server binaries (infra/scripts/install-system-deps.sh) and is skipped without them unless
PERSONALIZATION_REQUIRE_INFRA_TOOLS is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from .conftest import INFRA, require_tool

PROD_YAML = INFRA / "dagster" / "dagster.prod.yaml"
PG_ENV = {
    "DAGSTER_PG_HOST": "dagster-db.example.internal",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_DB": "dagster",
}


@pytest.fixture
def pg_env(monkeypatch):
    for key, value in PG_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def instance_dir(tmp_path) -> Path:
    shutil.copy(PROD_YAML, tmp_path / "dagster.yaml")
    return tmp_path


def _load(instance_dir: Path):
    from tests.dagster_internals import instance_config

    config, custom_class = instance_config(instance_dir)
    assert custom_class is None
    return config


def test_prod_yaml_passes_dagster_instance_config_loader(pg_env, instance_dir):
    config = _load(instance_dir)
    assert set(config["storage"]) == {"postgres"}, "production storage must be Postgres"
    assert config["telemetry"] == {"enabled": False}
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_retries"]["enabled"] is True
    assert config["run_retries"]["max_retries"] >= 1
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_loader_rejects_a_broken_variant(pg_env, instance_dir):
    """The loader really validates: a typo in a known section is refused."""
    from dagster import DagsterInvalidConfigError

    from tests.dagster_internals import instance_config

    broken = yaml.safe_load(PROD_YAML.read_text())
    broken["run_monitoring"]["start_timeout_second"] = 900  # typo
    (instance_dir / "dagster.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DagsterInvalidConfigError):
        instance_config(instance_dir)


def test_secrets_come_from_the_environment_only():
    raw = yaml.safe_load(PROD_YAML.read_text())
    db = raw["storage"]["postgres"]["postgres_db"]
    for key in ("hostname", "username", "password", "db_name", "port"):
        assert isinstance(db[key], dict) and set(db[key]) == {"env"}, (
            f"postgres_db.{key} must come from an env var"
        )


def test_run_coordinator_class_accepts_its_config(pg_env, instance_dir):
    from dagster import QueuedRunCoordinator

    from tests.dagster_internals import rehydrate

    coordinator = rehydrate(_load(instance_dir)["run_coordinator"], as_type=QueuedRunCoordinator)
    queue = coordinator.get_run_queue_config()
    assert queue.max_concurrent_runs == 24
    keys = {limit["key"] for limit in queue.tag_concurrency_limits}
    assert "dagster/backfill" in keys


def test_every_configurable_class_is_importable(pg_env, instance_dir):
    import importlib

    config = _load(instance_dir)
    for section in ("run_coordinator", "compute_logs"):
        klass = getattr(importlib.import_module(config[section]["module"]), config[section]["class"])
        assert klass.__name__ == config[section]["class"]


def test_postgres_url_uses_psycopg2_tls_and_env(pg_env, instance_dir):
    from tests.dagster_internals import process_config
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config

    storage = _load(instance_dir)["storage"]["postgres"]
    result = process_config(DagsterPostgresStorage.config_type(), storage)
    assert result.success, result.errors
    url = pg_url_from_config(result.value)
    assert url.startswith(
        "postgresql+psycopg2://dagster:not-a-real-password@dagster-db.example.internal:5432/dagster"
    )
    assert "sslmode=verify-full" in url


def test_prod_yaml_fails_without_its_env_vars(monkeypatch, instance_dir):
    """Missing DAGSTER_PG_* must fail loudly when the storage config is resolved."""
    from tests.dagster_internals import process_config
    from dagster_postgres import DagsterPostgresStorage

    for key in PG_ENV:
        monkeypatch.delenv(key, raising=False)
    storage = yaml.safe_load(PROD_YAML.read_text())["storage"]["postgres"]
    result = process_config(DagsterPostgresStorage.config_type(), storage)
    assert not result.success


# ----------------------------------------------------------------------------------------------
# Live: a real DagsterInstance on a throwaway PostgreSQL
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    path = require_tool(
        "PostgreSQL server (initdb)",
        [*candidates, "initdb"],
        "sudo infra/scripts/install-system-deps.sh (Debian package postgresql)",
    )
    return Path(path).parent


@pytest.fixture
def local_postgres():
    bindir = _pg_bin()
    # Not under pytest's tmp_path: its parents are private to the current user, and as root the
    # server must run as the postgres system user (initdb refuses root).
    workdir = Path(tempfile.mkdtemp(prefix="infra-test-pg-"))
    os.chmod(workdir, 0o755)
    datadir = workdir / "pgdata"
    datadir.mkdir()
    port = _free_port()
    run_as: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.fail(
                "running as root needs runuser (util-linux) to start PostgreSQL as the postgres user"
            )
        shutil.chown(datadir, "postgres", "postgres")
        shutil.chown(workdir, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *run_as,
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -k {datadir}",
            "-l",
            str(workdir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        ],
        check=True,
        # The server inherits the output handles: never capture them, or this call waits for its exit.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    try:
        subprocess.run(
            [
                *run_as,
                str(bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE dagster",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield port
    finally:
        subprocess.run(
            [
                *run_as,
                str(bindir / "pg_ctl"),
                "-D",
                str(datadir),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            check=False,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(workdir, ignore_errors=True)


def test_prod_yaml_opens_a_real_instance_on_postgres(
    local_postgres, tmp_path, monkeypatch
):
    import dagster as dg
    from dagster import DagsterInstance, QueuedRunCoordinator

    config = yaml.safe_load(PROD_YAML.read_text())
    # The local server has no TLS; everything else is the production file as is.
    config["storage"]["postgres"]["postgres_db"]["params"] = {"sslmode": "disable"}
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_PG_HOST", "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(local_postgres))
    monkeypatch.setenv("DAGSTER_PG_USERNAME", "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "")
    monkeypatch.setenv("DAGSTER_PG_DB", "dagster")

    instance = DagsterInstance.from_config(str(home))
    try:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_monitoring_enabled
        # a real run through the public API: run, its events and its status stored in Postgres and read back
        @dg.op
        def smoke_step():
            return 1

        @dg.job
        def infra_smoke():
            smoke_step()

        result = infra_smoke.execute_in_process(instance=instance)
        assert result.success
        run_id = result.run_id
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        assert [r.run_id for r in instance.get_runs()] == [run_id]
        assert any(e.is_step_success for e in result.all_events)
    finally:
        instance.dispose()
