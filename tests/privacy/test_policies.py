"""Policy files are validated at load: a bad file fails naming the file, the key and the problem."""

from __future__ import annotations

import shutil

import pytest
import yaml

from personalization_assets.core.policies import PolicyError, load_policy
from personalization_assets.core.tracking_plan import RawContent, RawCrmProfile, RawEvent, RawPrivacyRequest
from personalization_assets.settings import PROJECT_ROOT

pytestmark = pytest.mark.unit

MODELS = {"events": RawEvent, "crm_profiles": RawCrmProfile, "content_catalog": RawContent, "privacy_requests": RawPrivacyRequest}


@pytest.fixture
def policy_dir(tmp_path):
    d = tmp_path / "privacy_policies"
    shutil.copytree(PROJECT_ROOT / "privacy_policies", d)
    return d


def edit(d, name, fn):
    p = d / name
    data = yaml.safe_load(p.read_text())
    fn(data)
    p.write_text(yaml.safe_dump(data))


def test_shipped_policy_is_valid_and_fail_closed(policy_dir):
    policy = load_policy(policy_dir, MODELS)
    assert all(j.rules["personalization"].no_record == "deny" for j in policy.jurisdictions.values())


@pytest.mark.parametrize(
    "name, mutate, message",
    [
        ("jurisdictions.yaml", lambda d: d["jurisdictions"]["EU"]["purposes"]["analytics"].update(basis="optin"),
         r"jurisdictions.yaml: jurisdictions.EU.purposes.analytics.basis: 'optin' is not one of opt_in, opt_out"),
        ("jurisdictions.yaml", lambda d: d["jurisdictions"]["US-CA"]["purposes"]["personalization"].update(no_record="allow"),
         r"jurisdictions.US-CA.purposes.personalization.no_record: must be deny"),
        ("jurisdictions.yaml", lambda d: d["jurisdictions"].pop("default"), r"jurisdictions.default: missing"),
        ("purposes.yaml", lambda d: d["purposes"].pop("sale_share"), r"purposes.yaml: purposes.sale_share: missing"),
        ("classification.yaml", lambda d: d["sources"]["events"].pop("context_ip"),
         r"sources.events: column\(s\) context_ip of the raw table are not classified"),
        ("classification.yaml", lambda d: d["sources"]["events"]["user_id"].update(action="keep"),
         r"sources.events.user_id.action: a direct identifier must be dropped or pseudonymized"),
        ("classification.yaml", lambda d: d["sources"]["events"]["trait_email"].pop("normalize"),
         r"sources.events.trait_email.normalize: None is not one of id, email, phone"),
        ("retention.yaml", lambda d: d["tiers"]["raw"].update(days=0), r"retention.yaml: tiers.raw.days: must be >= 1"),
        ("differential_privacy.yaml", lambda d: d["releases"]["segment_sizes"].update(epsilon=99),
         r"releases.segment_sizes.epsilon: must be in \(0, total_epsilon"),
        ("differential_privacy.yaml", lambda d: d["budget"].update(min_release_interval_hours=-1),
         r"budget.min_release_interval_hours: must be a number of hours >= 0"),
        ("asset_purposes.yaml", lambda d: d["assets"].update({"consented/events": "curiosity"}),
         r"asset_purposes.yaml: assets.consented/events: 'curiosity' is not one of"),
    ],
)
def test_bad_policy_files_fail_with_file_key_and_reason(policy_dir, name, mutate, message):
    edit(policy_dir, name, mutate)
    with pytest.raises(PolicyError, match=message):
        load_policy(policy_dir, MODELS)


def test_invalid_yaml_names_the_file(policy_dir):
    (policy_dir / "retention.yaml").write_text("tiers: [unclosed")
    with pytest.raises(PolicyError, match="retention.yaml: not valid YAML"):
        load_policy(policy_dir, MODELS)


def test_definitions_refuse_to_load_with_a_bad_policy(policy_dir, data_dir, monkeypatch):
    edit(policy_dir, "purposes.yaml", lambda d: d["purposes"]["personalization"].update(categories=[]))
    from personalization_assets.definitions import build_definitions
    from personalization_assets.settings import load_settings

    monkeypatch.setenv("PERSONALIZATION_POLICY_DIR", str(policy_dir))
    with pytest.raises(PolicyError, match="purposes.personalization.categories"):
        build_definitions(load_settings())
