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


# Exact wording, recorded from the hand-written parser before the policy files became pydantic models
# (106 broken policies were compared old vs new: identical except the two crashes below, now clear errors).
EXACT = [
    ("policy.yaml", lambda d: d.update(version=[1]), "policy.yaml: version: must be a str or int or float, got list [1]."),
    ("purposes.yaml", lambda d: d.update(purposes=[1, 2]), "purposes.yaml: purposes: must be a dict, got list [1, 2]."),
    ("purposes.yaml", lambda d: d["purposes"].update(analytics=None), "purposes.yaml: purposes.analytics: must be a mapping."),
    ("purposes.yaml", lambda d: d["purposes"]["analytics"].pop("categories"), "purposes.yaml: purposes.analytics.categories: missing."),
    ("purposes.yaml", lambda d: d["purposes"]["analytics"].update(categories="analytics"),
     "purposes.yaml: purposes.analytics.categories: must be a list, got str 'analytics'."),
    ("purposes.yaml", lambda d: d["purposes"]["sale_share"].update(gpc_denies="yes"), "purposes.yaml: purposes.sale_share.gpc_denies: must be true or false."),
    ("purposes.yaml", lambda d: d["purposes"]["sale_share"]["privacy_request_types"].update(opt_out_sale="deny"),
     "purposes.yaml: purposes.sale_share.privacy_request_types.opt_out_sale: 'deny' is not one of granted, denied."),
    ("jurisdictions.yaml", lambda d: d["jurisdictions"]["EU"]["purposes"]["analytics"].pop("basis"),
     "jurisdictions.yaml: jurisdictions.EU.purposes.analytics.basis: None is not one of opt_in, opt_out."),
    ("jurisdictions.yaml", lambda d: d["jurisdictions"]["EU"]["purposes"].update(analytics="x"),
     "jurisdictions.yaml: jurisdictions.EU.purposes.analytics: must be a dict, got str 'x'."),
    ("jurisdictions.yaml", lambda d: d["jurisdictions"]["EU"]["purposes"].update(curiosity={"basis": "opt_in", "no_record": "deny"}),
     "jurisdictions.yaml: jurisdictions.EU.purposes.curiosity: unknown purpose (declare it in purposes.yaml)."),
    ("jurisdictions.yaml", lambda d: d["jurisdictions"]["EU"].update(match=["DE"]),
     "jurisdictions.yaml: jurisdictions.EU.match: must be a mapping with countries/regions lists."),
    ("classification.yaml", lambda d: d["sources"].update(events=[1]), "classification.yaml: sources.events: must map column -> {class, action}."),
    ("classification.yaml", lambda d: d["sources"]["events"]["user_id"].pop("class"),
     "classification.yaml: sources.events.user_id.class: None is not one of direct_identifier, quasi_identifier, sensitive, none."),
    ("classification.yaml", lambda d: d["sources"]["events"].update(nope={"class": "none", "action": "keep"}),
     "classification.yaml: sources.events: column(s) nope do not exist in the raw table."),
    ("classification.yaml", lambda d: d["sources"]["events"]["event"].update(neutralize_formulas=0),
     "classification.yaml: sources.events.event.neutralize_formulas: must be true or false, got 0."),
    ("retention.yaml", lambda d: d["tiers"]["raw"].update(days="30"), "retention.yaml: tiers.raw.days: must be a int, got str '30'."),
    ("retention.yaml", lambda d: d["tiers"]["raw"].pop("days"), "retention.yaml: tiers.raw.days: missing."),
    ("retention.yaml", lambda d: d["tiers"]["raw"].update(object_lock="COMPLIANCE"),
     "retention.yaml: tiers.raw.object_lock: only a tier of the `ledger` bucket (the Object Lock bucket) can be locked."),
    ("retention.yaml", lambda d: d["tiers"]["privacy_logs"].update(object_lock="FOREVER"),
     "retention.yaml: tiers.privacy_logs.object_lock: 'FOREVER' is not one of COMPLIANCE, GOVERNANCE."),
    ("retention.yaml", lambda d: d["tiers"].update(logs2={"bucket": "ledger", "days": 3, "object_lock": "GOVERNANCE"}),
     "retention.yaml: tiers: at most one tier may live in the `ledger` bucket (its Object Lock default retention is bucket-wide)."),
    ("retention.yaml", lambda d: d["tiers"].pop("features"), "retention.yaml: tiers.features: missing."),
    ("differential_privacy.yaml", lambda d: d.update(budget=3), "differential_privacy.yaml: budget: must be a dict, got int 3."),
    ("differential_privacy.yaml", lambda d: d["budget"].update(total_epsilon="4"),
     "differential_privacy.yaml: budget.total_epsilon: must be a int or float, got str '4'."),
    ("differential_privacy.yaml", lambda d: d["budget"].update(period="week"), "differential_privacy.yaml: budget.period: 'week' is not one of month, day, year."),
    ("differential_privacy.yaml", lambda d: d["releases"]["segment_sizes"].update(max_contributions=0),
     "differential_privacy.yaml: releases.segment_sizes.max_contributions: must be >= 1."),
    ("differential_privacy.yaml", lambda d: d["releases"]["segment_sizes"].update(keys=[1]),
     "differential_privacy.yaml: releases.segment_sizes.keys: must be a list of public group names."),
    ("differential_privacy.yaml", lambda d: d["releases"].update(segment_sizes="x"), "differential_privacy.yaml: releases.segment_sizes: must be a mapping."),
    ("asset_purposes.yaml", lambda d: d.update(compliance_purposes="retention"),
     "asset_purposes.yaml: compliance_purposes: must be a list, got str 'retention'."),
    ("asset_purposes.yaml", lambda d: d.update(sensitive_assets=[]),
     "asset_purposes.yaml: sensitive_assets: missing or empty (at least raw/* must be audited)."),
]


@pytest.mark.parametrize("name, mutate, message", EXACT, ids=[m for _, _, m in EXACT])
def test_policy_error_wording_is_exact(policy_dir, name, mutate, message):
    edit(policy_dir, name, mutate)
    with pytest.raises(PolicyError) as caught:
        load_policy(policy_dir, MODELS)
    assert str(caught.value) == f"privacy_policies/{message}"


@pytest.mark.parametrize(
    "name, mutate, message",
    [
        ("jurisdictions.yaml", lambda d: d["jurisdictions"].update(EU="opt_in"), "jurisdictions.yaml: jurisdictions.EU: must be a mapping."),
        ("classification.yaml", lambda d: d["sources"]["events"].update(user_id="keep"),
         "classification.yaml: sources.events.user_id: must be a mapping."),
    ],
)
def test_a_scalar_where_a_mapping_belongs_is_a_policy_error(policy_dir, name, mutate, message):
    """The hand parser crashed here (AttributeError: 'str' object has no attribute 'get'): no file, no key."""
    edit(policy_dir, name, mutate)
    with pytest.raises(PolicyError) as caught:
        load_policy(policy_dir, MODELS)
    assert str(caught.value) == f"privacy_policies/{message}"


def test_each_policy_file_has_a_pydantic_model(policy_dir):
    """The structure of each file is declared once, on a pydantic model (its JSON schema documents the file)."""
    from pydantic import BaseModel

    from personalization_assets.core.policies import FILE_MODELS

    assert set(FILE_MODELS) == {p.name for p in policy_dir.glob("*.yaml")}
    for name, model in FILE_MODELS.items():
        assert issubclass(model, BaseModel), name
        assert model.model_json_schema()["properties"], name


def test_an_undeclared_edit_of_a_deciding_policy_file_changes_the_policy_version(policy_dir):
    """The consent state, the ledger's decisions and the consented tier key their state on the policy version. It was
    the declared `version` of policy.yaml only: a jurisdiction's default turned from granted to denied without a bump
    left every stored consent state as it was. The version now carries a digest of the files that decide consent."""
    before = load_policy(policy_dir).version
    declared = yaml.safe_load((policy_dir / "policy.yaml").read_text())["version"]
    assert before.startswith(f"{declared}+")
    jurisdictions = policy_dir / "jurisdictions.yaml"
    jurisdictions.write_text(jurisdictions.read_text() + "\n# an edit nobody declared\n")
    after = load_policy(policy_dir).version
    assert after != before and after.startswith(f"{declared}+")
    (policy_dir / "retention.yaml").write_text((policy_dir / "retention.yaml").read_text() + "\n# not about consent\n")
    assert load_policy(policy_dir).version == after
