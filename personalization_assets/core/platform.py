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


def lock_dir(platform: PlatformConfig) -> str:
    """Directory of the local lock files (append-only logs' writer locks)."""
    return str(Path(platform.data_dir) / "locks")
