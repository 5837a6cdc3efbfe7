"""The `platform` resource: non-secret limits and switches read from the settings, so tests can override them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field


class PlatformConfig(dg.ConfigurableResource):
    """Non-secret limits and switches read from the settings, so tests can override them."""

    env: str = "local"
    data_dir: str = Field(description="Local scratch/data directory.")
    max_line_bytes: int = 32 * 1024
    horizon_days: int = 30
    max_future_minutes: int = 24 * 60
    events_layout: str = Field(default="auto", description="PERSONALIZATION_EVENTS_LAYOUT: auto | hive | segment-s3 | rudderstack-s3.")
    landing_read_concurrency: int = Field(default=8, ge=1, description="PERSONALIZATION_LANDING_READ_CONCURRENCY: landing objects "
                                          "ingestion reads and decompresses at once (raw/ingest.py).")
    duckdb_memory_limit: str = Field(default="2GB", description="PERSONALIZATION_DUCKDB_MEMORY_LIMIT: DuckDB's memory limit (it spills beyond).")
    log_recheck_segments: int = Field(default=1000, ge=1, description="PERSONALIZATION_LOG_RECHECK_SEGMENTS: older log segments re-checked "
                                      "against the checkpoint per verification (privacy/ledger_checkpoint.py).")


def duckdb_limits(data_dir: str | Path, memory_limit: str) -> dict[str, str]:
    """DuckDB's memory limit and spill directory (`<data_dir>/tmp/duckdb`, created): the `duckdb` resource's
    connections and any connection opened outside it (a bare `duckdb.connect()` may take 80% of the machine's memory
    and never spill)."""
    tmp = Path(data_dir) / "tmp" / "duckdb"
    tmp.mkdir(parents=True, exist_ok=True)
    return {"memory_limit": memory_limit, "temp_directory": str(tmp)}


def duckdb_spill_config(platform: PlatformConfig) -> dict[str, str]:
    """`duckdb_limits` of the platform's settings, for a connection opened outside the `duckdb` resource."""
    return duckdb_limits(platform.data_dir, platform.duckdb_memory_limit)


def lock_dir(platform: PlatformConfig) -> str:
    """Directory of the local lock files (append-only logs' writer locks)."""
    return str(Path(platform.data_dir) / "locks")
