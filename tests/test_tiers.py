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


def test_the_closest_tier_marker_wins(pytester):
    """A test's own tier beats its module's `pytestmark`; two tiers at one level are refused."""
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text().replace("ROOT = Path(__file__).resolve().parent.parent", f"ROOT = Path({str(pytester.path)!r})"))
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\nmarkers = [" + ", ".join(f'"{t}: x"' for t in TIERS) + "]\n")
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_mixed.py").write_text(
        "import pytest\npytestmark = pytest.mark.unit\n"
        "def test_small(): pass\n"
        "@pytest.mark.integration\ndef test_heavy(): pass\n"
        "def test_tiers(request):\n    assert [m.name for m in request.node.iter_markers() if m.name in ('unit', 'integration')] == ['unit']\n"
    )
    unit = pytester.runpytest("-p", "no:randomly", "-m", "unit", "tests", "-q")
    unit.assert_outcomes(passed=2, deselected=1)
    integration = pytester.runpytest("-p", "no:randomly", "-m", "integration", "tests", "-q", "--collect-only")
    assert "test_heavy" in integration.stdout.str() and "test_small" not in integration.stdout.str()
    (pytester.path / "tests" / "test_mixed.py").write_text("import pytest\n@pytest.mark.unit\n@pytest.mark.integration\ndef test_both(): pass\n")
    both = pytester.runpytest("-p", "no:randomly", "tests", "-q")
    assert "a test must have exactly one tier marker" in both.stdout.str() + both.stderr.str()
