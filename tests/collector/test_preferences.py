"""The preference center's choices -> categoryPreferences mapping, checked against ingestion's own rule."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from personalization_assets.collector.preferences import (
    categories_for,
    effective,
    purpose_views,
)
from personalization_assets.privacy.consent import purposes_from_preferences
from personalization_assets.core.policies import Purpose, get_policy

pytestmark = pytest.mark.unit


def test_every_combination_of_choices_is_recorded_exactly_as_chosen():
    policy = get_policy()
    names = list(policy.purposes)
    for combo in itertools.product([True, False], repeat=len(names)):
        choices = dict(zip(names, combo))
        categories = categories_for(choices, policy)
        decided = purposes_from_preferences(json.dumps(categories), policy)  # what ingestion will decide
        assert decided == {p: "granted" if g else "denied" for p, g in choices.items()}, choices


def test_a_withdrawal_with_no_category_of_its_own_fails_closed():
    base = get_policy()
    shared = {"a": Purpose("a", ("x",)), "b": Purpose("b", ("x",))}
    policy = dataclasses.replace(base, purposes=shared)
    categories = categories_for({"a": True, "b": False}, policy)
    assert categories == {"x": False}
    assert effective(categories, False, policy) == {"a": "denied", "b": "denied"}  # never granted against a withdrawal


def test_gpc_denies_the_gpc_purposes():
    policy = get_policy()
    out = effective(categories_for({p: True for p in policy.purposes}, policy), True, policy)
    assert out["sale_share"] == "denied" and out["personalization"] == "granted"


def test_the_center_lists_every_purpose_with_its_description():
    views = {v.name: v for v in purpose_views()}
    assert set(views) == set(get_policy().purposes)
    assert all(v.description for v in views.values())
