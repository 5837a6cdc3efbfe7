"""Session fixtures: one clean landing zone shared by the contract and planted-case tests."""

from __future__ import annotations

import json

import pytest

from tests.generator.zone import generate, messages


@pytest.fixture(scope="session")
def clean_zone(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    summary = generate(root)
    return root, summary


@pytest.fixture(scope="session")
def clean_messages(clean_zone) -> list[dict]:
    return messages(clean_zone[0])


@pytest.fixture(scope="session")
def manifest(clean_zone) -> dict:
    return json.loads((clean_zone[0] / "_generator" / "manifest.json").read_text())
