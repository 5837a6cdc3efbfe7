"""Fixtures shared by the raw-layer tests."""

from __future__ import annotations

import duckdb
import pytest


def utc_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the session defaults ingestion relies on (UTC)."""
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    return c


@pytest.fixture
def con():
    c = utc_connection()
    yield c
    c.close()
