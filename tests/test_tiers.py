"""Every test has exactly one tier: the directory's by default (a new file included), or its own marker."""

from __future__ import annotations

import pytest

from tests.conftest import DIRECTORY_TIERS, ROOT, TIERS, tier_of_path

pytestmark = pytest.mark.unit


def test_a_new_file_in_a_known_directory_gets_the_directory_tier():
    for directory, tier in DIRECTORY_TIERS.items():
        assert tier in TIERS
        assert tier_of_path(ROOT / "tests" / directory / "test_added_later.py") == tier
    assert tier_of_path(ROOT / "tests" / "ui" / "deeper" / "test_x.py") == "ui"
    assert tier_of_path(ROOT / "tests" / "a_new_directory" / "test_x.py") == "integration"
    assert tier_of_path(ROOT / "tests" / "test_top_level.py") == "integration"


def test_this_test_has_exactly_one_tier(request):
    assert [m.name for m in request.node.iter_markers() if m.name in TIERS] == ["unit"]
