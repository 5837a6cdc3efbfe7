"""Fixtures shared by the raw-layer tests."""

from __future__ import annotations

import duckdb
import pytest


@pytest.fixture
def con():
    """An in-memory DuckDB connection with the session defaults ingestion relies on (UTC)."""
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    yield c
    c.close()
