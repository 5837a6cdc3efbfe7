"""Two isolated platform environments in one test (an incremental lake and a full-refresh lake), each with
its own data dir, landing zone, lake and DAGSTER_HOME, and the same pseudonymization key (so pseudonyms
are comparable across the two lakes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import clear_platform_env

PSEUDONYM_KEYS = json.dumps({"1": "5e" * 32})


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: runs the real definitions end to end (several Dagster runs)")
    config.addinivalue_line("markers", "incremental: incremental processing vs full refresh (issues #12/#13)")


@dataclass
class PlatformEnv:
    name: str
    root: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def landing(self) -> Path:
        return self.data_dir / "landing"

    @property
    def lake(self) -> Path:
        return self.data_dir / "lake"

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    def activate(self) -> None:
        """Point the process at this environment (settings are read from the environment on every run)."""
        clear_platform_env(self.monkeypatch)
        self.monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(self.data_dir))
        self.monkeypatch.setenv("PERSONALIZATION_EVENTS_START", "2026-01-01")
        self.monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", PSEUDONYM_KEYS)
        self.monkeypatch.setenv("DAGSTER_HOME", str(self.home))


def make_env(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PlatformEnv:
    env = PlatformEnv(name, tmp_path / name, monkeypatch)
    env.landing.mkdir(parents=True)
    env.home.mkdir(parents=True)
    (env.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return env


@pytest.fixture
def incremental_env(tmp_path, monkeypatch) -> PlatformEnv:
    env = make_env("incremental", tmp_path, monkeypatch)
    env.activate()
    return env


@pytest.fixture
def full_env(tmp_path, monkeypatch) -> PlatformEnv:
    return make_env("full", tmp_path, monkeypatch)


def run(env: PlatformEnv, select: str | None, as_of: str | None = None, **kwargs):
    """`run_materialize` on `env` through its own persistent Dagster instance (as the CLI does: incremental
    bookkeeping may live in the instance as well as in the lake). Returns (ok, summary_text, result)."""
    from tests.dagster_internals import reset_defs_state_storage

    from personalization_assets.cli import open_instance, run_materialize

    env.activate()
    run_config = {"ops": {"feature_tables": {"config": {"as_of": as_of}}}} if as_of else None
    instance = open_instance()
    try:
        return run_materialize(select=select, instance=instance, echo=lambda *a, **k: None, run_config=run_config, **kwargs)
    finally:
        instance.dispose()
        # see tests/conftest.py::_reset_dagster_process_state: never leave the next run on a disposed instance
        reset_defs_state_storage()
