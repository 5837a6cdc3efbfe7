"""Shared fixtures: isolated data dirs, settings, definitions, and a real S3 API (moto) on loopback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A fresh local environment: data dir, DAGSTER_HOME and no inherited platform settings."""
    for k in list(os.environ):
        if k.startswith("PERSONALIZATION_") or k.startswith("SNOWFLAKE_"):
            monkeypatch.delenv(k, raising=False)
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(d))
    monkeypatch.setenv("PERSONALIZATION_EVENTS_START", "2026-01-01")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return d


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


@pytest.fixture(autouse=True)
def _reset_dagster_process_state():
    """Dagster keeps the defs-state storage of the last instance it entered in a process-wide context
    variable (dagster._core.storage.defs_state.base). A test whose temporary instance is gone would leave
    the next test's `dg.materialize` pointing at a deleted sqlite file, so reset it between tests.
    (Internal: there is no public reset; production processes use one instance.)"""
    import gc

    from dagster._core.storage.defs_state.base import _current_storage

    gc.collect()  # run pending instance finalizers now, not in the middle of the next test
    _current_storage.set(None)
    yield
    gc.collect()
    _current_storage.set(None)
