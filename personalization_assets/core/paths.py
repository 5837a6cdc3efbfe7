"""Paths of the repository."""

from pathlib import Path

# Repository root (where pyproject.toml, dbt/ and privacy_policies/ live).
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
