"""The features' direct-identifier check takes its classification from the policy loader, so it follows
PERSONALIZATION_POLICY_DIR and sees exactly the validated policy the privacy layer applies (it used to re-read
privacy_policies/classification.yaml of the checkout by path)."""

from __future__ import annotations

import shutil
from pathlib import Path

from personalization_assets.core.policies import get_policy
from personalization_assets.features.checks import load_identifier_policy

ROOT = Path(__file__).resolve().parents[2]


def test_identifier_policy_follows_the_policy_directory(tmp_path, monkeypatch):
    policy_dir = tmp_path / "policies"
    shutil.copytree(ROOT / "privacy_policies", policy_dir)
    classification = policy_dir / "classification.yaml"
    text = classification.read_text()
    line = "    sent_at: {class: none, action: drop}"
    assert line in text
    classification.write_text(text.replace(line, "    sent_at: {class: direct_identifier, action: drop}"))

    default = load_identifier_policy()
    assert "sent_at" not in default.forbidden
    monkeypatch.setenv("PERSONALIZATION_POLICY_DIR", str(policy_dir))
    assert get_policy().directory == str(policy_dir)
    moved = load_identifier_policy()
    assert moved.forbidden == default.forbidden | {"sent_at"}
    assert moved.pseudonym_columns == default.pseudonym_columns


def test_identifier_policy_of_the_shipped_classification():
    policy = load_identifier_policy()
    # pseudonymized under another name: the raw name is forbidden, the pseudonym must match the pattern
    assert {"user_id", "anonymous_id", "previous_id"} <= policy.forbidden
    assert {"user_pseudonym", "anonymous_pseudonym", "person_id", "consent_subject", "identifier"} <= policy.pseudonym_columns
    assert not policy.forbidden & policy.pseudonym_columns
