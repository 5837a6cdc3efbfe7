"""DP releases go through OpenDP with a persistent budget; exhausting it fails with a clear error."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from personalization_assets.privacy.dp import BudgetLedger, DpBudgetExceeded, dp_counts
from personalization_assets.privacy.policies import DpRelease, get_policy
from personalization_assets.resources.storage import LakeStorage


def test_noisy_counts_are_close_to_the_truth_and_keys_are_the_public_ones():
    keys = ["news"] * 4000 + ["sports"] * 2000 + ["tech"] * 1000
    released, scale, accuracy = dp_counts(keys, DpRelease("t", epsilon=1.0, max_contributions=1), "category")
    got = dict(zip(released["category"].to_list(), released["count"].to_list()))
    assert set(got) == {"news", "sports", "tech"}
    assert scale == pytest.approx(1.0) and accuracy > 0
    for k, true in {"news": 4000, "sports": 2000, "tech": 1000}.items():
        assert abs(got[k] - true) <= 40  # ≈ 13 × the 95% bound of Laplace(1)


def test_budget_is_persistent_and_exhaustion_fails_clearly(tmp_path):
    policy = get_policy()
    lake = LakeStorage(url=str(tmp_path / "lake"))
    when = datetime(2026, 11, 29, tzinfo=timezone.utc)
    big = DpRelease("segment_sizes", epsilon=policy.dp_total_epsilon / 2, max_contributions=1)
    BudgetLedger.open(lake, policy, None).charge(big, "run-1", when)
    # a fresh handle sees what the previous run spent
    ledger = BudgetLedger.open(lake, policy, None)
    assert ledger.remaining("2026-11") == pytest.approx(policy.dp_total_epsilon / 2)
    ledger.charge(big, "run-2", when)
    with pytest.raises(DpBudgetExceeded, match="only 0.000 of .* remains for 2026-11"):
        ledger.charge(DpRelease("content_popularity", 0.1, 5), "run-3", when)
    # next month starts fresh
    ledger.charge(big, "run-4", datetime(2026, 12, 1, tzinfo=timezone.utc))
    assert ledger.log.verify().ok
