"""S3 lifecycle rules and Object Lock retention vs privacy_policies/retention.yaml: one source of truth for retention.

The lifecycle rules are generated (infra/scripts/render_retention.py) into
infra/terraform/modules/storage/lifecycle.generated.tf. These tests check, from the parsed Terraform
and independently of the generator's own logic, that the EFFECTIVE expiry S3 will apply to every tier
equals the policy (S3 applies the shortest expiration among all rules matching an object), that nothing
else in the buckets expires, and that old versions and failed uploads are purged. Negative tests prove
the comparison catches a mismatch.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import pytest
import yaml

from .conftest import REPO_ROOT, TERRAFORM, load_module, load_script, load_tf, resources

POLICY = REPO_ROOT / "privacy_policies" / "retention.yaml"
STORAGE = TERRAFORM / "modules" / "storage"
GENERATED = STORAGE / "lifecycle.generated.tf"
BASE_PREFIX_VAR = {"landing": "landing_prefix", "lake": "lake_prefix", "ledger": "ledger_prefix"}
# Erasure requests must be answered within one month (GDPR Art. 12(3)): a deleted object's old
# version may not outlive that.
MAX_NONCURRENT_DAYS = 30


def _load_generator():
    return load_script("render_retention")


@dataclass(frozen=True)
class Rule:
    bucket: str
    rule_id: str
    prefix: (
        str  # relative to the bucket's base prefix; None-filter (whole bucket) is ""
    )
    whole_bucket: bool
    expiration_days: int | None
    noncurrent_days: int | None
    abort_days: int | None


def _single(blocks, what: str):
    if blocks in (None, []):
        return None
    if isinstance(blocks, list):
        assert len(blocks) == 1, f"{what}: expected one block, got {len(blocks)}"
        return blocks[0]
    return blocks


def _bucket_of(body: dict) -> str:
    match = re.fullmatch(
        r"\$\{aws_s3_bucket\.(\w+)\.(id|bucket)\}", str(body.get("bucket", ""))
    )
    assert match, (
        f"lifecycle configuration must target aws_s3_bucket.<name>.id, got {body.get('bucket')!r}"
    )
    return match.group(1)


def _relative_prefix(bucket: str, raw: str) -> str:
    var = BASE_PREFIX_VAR[bucket]
    prefix_expr = f"${{var.{var}}}"
    if raw == prefix_expr:
        return ""
    assert raw.startswith(prefix_expr), (
        f"rule prefix {raw!r} of bucket {bucket} must start with var.{var} (the base prefix of the bucket URL)"
    )
    return raw[len(prefix_expr) :]


def parse_rules(tf: dict) -> list[Rule]:
    """Lifecycle rules of the landing and lake buckets from a parsed .tf document."""
    rules: list[Rule] = []
    for name, body in resources(tf, "aws_s3_bucket_lifecycle_configuration").items():
        bucket = _bucket_of(body)
        if bucket not in BASE_PREFIX_VAR:
            continue
        for rule in body.get("rule", []):
            if rule.get("status") != "Enabled":
                continue
            rule_filter = _single(rule.get("filter"), f"{name}.filter")
            whole = (
                not rule_filter
                or not rule_filter.get("prefix")
                and len(rule_filter) <= 1
            )
            if rule_filter and set(rule_filter) - {"prefix"}:
                pytest.fail(
                    f"{name}: rule {rule.get('id')} filters on {sorted(rule_filter)}; only prefix filters are expected"
                )
            prefix = "" if whole else _relative_prefix(bucket, rule_filter["prefix"])
            expiration = _single(rule.get("expiration"), "expiration")
            noncurrent = _single(
                rule.get("noncurrent_version_expiration"),
                "noncurrent_version_expiration",
            )
            abort = _single(
                rule.get("abort_incomplete_multipart_upload"),
                "abort_incomplete_multipart_upload",
            )
            rules.append(
                Rule(
                    bucket=bucket,
                    rule_id=rule.get("id", "?"),
                    prefix=prefix,
                    whole_bucket=whole and not (rule_filter or {}).get("prefix"),
                    expiration_days=int(expiration["days"]) if expiration else None,
                    noncurrent_days=int(noncurrent["noncurrent_days"])
                    if noncurrent
                    else None,
                    abort_days=int(abort["days_after_initiation"]) if abort else None,
                )
            )
    return rules


def policy_tiers(policy: dict) -> dict[str, dict]:
    return {
        name: {
            "bucket": spec["bucket"],
            "prefix": spec.get("prefix") or "",
            # what S3 applies: the tier's days, or its later backstop (`lifecycle_days`) when the retention job enforces it
            "days": spec.get("lifecycle_days", spec["days"]),
            # where S3 expires current objects by age: the listed tables, else the whole tier
            "expire": [(spec.get("prefix") or "") + sub for sub in spec["expire_prefixes"]]
            if spec.get("expire_prefixes") is not None else [spec.get("prefix") or ""],
        }
        for name, spec in policy["tiers"].items()
    }


def compare(policy: dict, rules: list[Rule]) -> list[str]:
    """Every way the lifecycle rules disagree with the policy (empty list = consistent)."""
    problems: list[str] = []
    tiers = policy_tiers(policy)

    def expiring(bucket: str, key_prefix: str) -> list[int]:
        """Expirations of the rules matching every object under `key_prefix` (S3 applies the shortest)."""
        return [r.expiration_days for r in rules
                if r.bucket == bucket and r.expiration_days is not None and key_prefix.startswith(r.prefix)]

    for name, tier in tiers.items():
        for prefix in tier["expire"]:
            if not any(r.bucket == tier["bucket"] and r.prefix == prefix and r.expiration_days is not None for r in rules):
                problems.append(f"tier {name}: no expiration rule for {tier['bucket']}:{prefix!r}")
            matching = expiring(tier["bucket"], prefix)
            if matching and min(matching) != tier["days"]:
                problems.append(
                    f"tier {name}: objects under {tier['bucket']}:{prefix!r} expire after {min(matching)} days "
                    f"(shortest matching rule), policy says {tier['days']}"
                )
        if tier["prefix"] not in tier["expire"]:
            # the rest of the tier is state: no rule may expire it by age (a rule covering the whole tier, or a
            # parent tier's rule reaching into it)
            whole = expiring(tier["bucket"], tier["prefix"])
            if whole:
                problems.append(
                    f"tier {name}: every object under {tier['bucket']}:{tier['prefix']!r} expires after {min(whole)} days, "
                    f"policy expires only {tier['expire']}"
                )
        noncurrent = [
            r.noncurrent_days
            for r in rules
            if r.bucket == tier["bucket"]
            and r.noncurrent_days is not None
            and tier["prefix"].startswith(r.prefix)
        ]
        if not noncurrent:
            problems.append(
                f"tier {name}: old object versions never expire (no noncurrent_version_expiration)"
            )
        elif min(noncurrent) > MAX_NONCURRENT_DAYS:
            problems.append(
                f"tier {name}: old versions kept {min(noncurrent)} days > {MAX_NONCURRENT_DAYS} (erasure deadline)"
            )
    declared = {(t["bucket"], p) for t in tiers.values() for p in t["expire"]}
    for rule in rules:
        if rule.expiration_days is None:
            continue
        if (rule.bucket, rule.prefix) not in declared:
            problems.append(
                f"rule {rule.rule_id} expires {rule.bucket}:{rule.prefix!r} after {rule.expiration_days} days but no "
                "retention tier declares that prefix"
            )
    for bucket in {t["bucket"] for t in tiers.values()}:
        if not any(
            r.bucket == bucket and r.whole_bucket and r.abort_days for r in rules
        ):
            problems.append(
                f"bucket {bucket}: no bucket-wide abort_incomplete_multipart_upload rule"
            )
    return problems


@pytest.fixture(scope="module")
def policy() -> dict:
    with open(POLICY, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def storage_rules() -> list[Rule]:
    return parse_rules(load_module(STORAGE))


def test_lifecycle_rules_match_retention_policy(policy, storage_rules):
    assert storage_rules, "no lifecycle rules found for the landing and lake buckets"
    assert compare(policy, storage_rules) == []


def test_s3_expires_the_tiers_the_retention_job_enforces_only_after_it(policy):
    """The retention job (privacy/operations.py RETENTION_TABLES) deletes at `days` and records its cutoff first; ingestion,
    the identity links and the consented plan tell a raw hour retention removed (before that cutoff) from one gone for
    another reason. S3 expiring at the same `days` removed hours before the job's next run, after its recorded cutoff: a
    consented hour (kept 13 months) was then deleted with its raw hour. S3 is the backstop, later than the job."""
    from personalization_assets.privacy.operations import RETENTION_TABLES

    for tier in RETENTION_TABLES:
        spec = policy["tiers"][tier]
        assert spec.get("lifecycle_days", spec["days"]) > spec["days"], f"tier {tier}: S3 expires it with the retention job"


def test_every_policy_tier_has_its_own_rule(policy, storage_rules):
    by_prefix = {
        (r.bucket, r.prefix): r for r in storage_rules if r.expiration_days is not None
    }
    for name, tier in policy_tiers(policy).items():
        assert any(r.bucket == tier["bucket"] and r.prefix == tier["prefix"] and r.noncurrent_days for r in storage_rules), (
            f"tier {name} has no rule purging its old versions")
        for prefix in tier["expire"]:
            rule = by_prefix.get((tier["bucket"], prefix))
            assert rule is not None, f"tier {name} has no rule for {prefix!r}"
            assert rule.expiration_days == tier["days"], (
                f"tier {name}: rule says {rule.expiration_days}, policy {tier['days']}"
            )


def test_state_outside_the_time_partitions_is_never_expired_by_age(policy, storage_rules):
    """S3 expires an object by its age. The suppression list is rewritten only when an erasure comes: expired after
    `days` unchanged, every erasure would be forgotten (a CRM snapshot or the landing manifest after 32 days unchanged,
    the consented state after 13 months). Only the time-partitioned tables named in `expire_prefixes` expire by age;
    tests/privacy/test_end_to_end.py checks the same rules against every object of a materialized lake."""
    for key in ("privacy/suppression_list/data.parquet", "privacy/pseudonym_key_ids/data.parquet",
                "raw/crm_profiles/data.parquet", "raw/privacy_requests/data.parquet", "raw/landing_manifest/data.parquet",
                "consented/events_state/data.parquet", "consented/crm_profiles/data.parquet",
                "consented/content_catalog/data.parquet", "features/state_persons/data.parquet"):
        assert lake_expiry(storage_rules, key) is None, f"{key} expires after {lake_expiry(storage_rules, key)} days"
    for key, tier in (("raw/events/date=2026-12-01/hour=03/part-0.parquet", "raw"),
                      ("raw/events_quarantine/date=2026-12-01/hour=03/part-0.parquet", "quarantine"),
                      ("consented/events/date=2026-12-01/hour=03/part-0.parquet", "consented")):
        spec = policy["tiers"][tier]
        assert lake_expiry(storage_rules, key) == spec.get("lifecycle_days", spec["days"]), key


def lake_expiry(rules: list[Rule], key: str, bucket: str = "lake") -> int | None:
    """The days after which S3 expires the current object `key` (relative to the bucket's base prefix), if ever."""
    days = [r.expiration_days for r in rules if r.bucket == bucket and r.expiration_days is not None and key.startswith(r.prefix)]
    return min(days) if days else None


def test_only_the_generated_file_sets_expiry_on_data_buckets():
    for path in sorted(STORAGE.glob("*.tf")):
        if path == GENERATED:
            continue
        assert parse_rules(load_tf(path)) == [], (
            f"{path.name} adds lifecycle rules to a data bucket; edit retention.yaml instead"
        )


def test_generated_file_is_up_to_date():
    generator = _load_generator()
    expected = generator.render(generator.load_tiers(POLICY))
    assert GENERATED.read_text(encoding="utf-8") == expected, (
        "lifecycle.generated.tf is stale: run `python infra/scripts/render_retention.py`"
    )


def test_lifecycle_targets_the_buckets_of_the_storage_module():
    module = load_module(STORAGE)
    buckets = resources(module, "aws_s3_bucket")
    versioning = resources(module, "aws_s3_bucket_versioning")
    assert {"landing", "lake"} <= set(buckets)
    assert "data" in versioning, (
        "data buckets must be versioned (noncurrent rules need versioning)"
    )
    for status in [
        v["versioning_configuration"][0]["status"] for v in versioning.values()
    ]:
        assert status == "Enabled"


# ----------------------------------------------------------------------------------------------
# Negative tests: the comparison must detect each kind of drift.
# ----------------------------------------------------------------------------------------------


def test_detects_changed_expiry(policy, storage_rules):
    tampered = [
        Rule(**{**r.__dict__, "expiration_days": r.expiration_days + 1})
        if r.rule_id == "retention-consented-events"
        else r
        for r in storage_rules
    ]
    problems = compare(policy, tampered)
    expected = policy["tiers"]["consented"].get("lifecycle_days", policy["tiers"]["consented"]["days"]) + 1
    assert any("tier consented" in p and str(expected) in p for p in problems), problems


def test_detects_policy_change_without_regeneration(policy, storage_rules):
    changed = copy.deepcopy(policy)
    changed["tiers"]["privacy"].update(days=3650, lifecycle_days=3652)
    problems = compare(changed, storage_rules)
    assert any("tier privacy" in p for p in problems), problems


def test_detects_missing_tier_rule(policy, storage_rules):
    without = [r for r in storage_rules if r.rule_id != "retention-raw-events"]
    assert any(
        "tier raw: no expiration rule" in p for p in compare(policy, without)
    )
    without = [r for r in storage_rules if r.rule_id != "retention-features"]
    assert any("tier features: old object versions never expire" in p for p in compare(policy, without))


def test_detects_a_rule_expiring_a_tiers_state_by_age(policy, storage_rules):
    """The rules before `expire_prefixes`: one expiration per tier, over the whole tier."""
    whole = [Rule(**{**r.__dict__, "expiration_days": 32}) if r.rule_id == "retention-raw" else r for r in storage_rules]
    assert any("tier raw: every object under lake:'raw/' expires after 32 days" in p for p in compare(policy, whole))
    whole = [Rule(**{**r.__dict__, "expiration_days": 2190}) if r.rule_id == "retention-privacy" else r for r in storage_rules]
    assert any("tier privacy: every object" in p for p in compare(policy, whole))
    assert lake_expiry(whole, "privacy/suppression_list/data.parquet") == 2190


def test_detects_extra_rule_deleting_undeclared_data(policy, storage_rules):
    extra = storage_rules + [Rule("lake", "sneaky", "scratch/", False, 1, 1, None)]
    assert any("rule sneaky" in p for p in compare(policy, extra))


def test_detects_nested_tier_kept_longer_than_its_parent(policy, storage_rules):
    changed = copy.deepcopy(policy)
    raw_days = policy["tiers"]["raw"].get("lifecycle_days", policy["tiers"]["raw"]["days"])
    del changed["tiers"]["raw"]["expire_prefixes"]  # the whole raw/ tier expires by age
    changed["tiers"]["quarantine"].update(days=90, lifecycle_days=92)  # nested in raw/: S3 would delete with raw's rule
    rules = [
        Rule(**{**r.__dict__, "expiration_days": 92})
        if r.rule_id == "retention-quarantine"
        else Rule(**{**r.__dict__, "expiration_days": raw_days}) if r.rule_id == "retention-raw"
        else r
        for r in storage_rules if r.rule_id != "retention-raw-events"
    ]
    problems = compare(changed, rules)
    raw = policy["tiers"]["raw"].get("lifecycle_days", policy["tiers"]["raw"]["days"])
    assert any("tier quarantine" in p and f"expire after {raw}" in p for p in problems), (
        problems
    )


def test_detects_missing_noncurrent_expiration(policy, storage_rules):
    rules = [Rule(**{**r.__dict__, "noncurrent_days": None}) for r in storage_rules]
    assert any("old object versions never expire" in p for p in compare(policy, rules))


def test_generator_refuses_nested_tier_longer_than_parent(policy):
    generator = _load_generator()
    changed = copy.deepcopy(policy)
    changed["tiers"]["quarantine"].update(days=90, lifecycle_days=92)
    generator.parse_tiers(changed)  # raw/ expires only raw/events/ by age: the quarantine is not inside it
    changed["tiers"]["raw"]["expire_prefixes"] = ["events"]
    with pytest.raises(generator.PolicyError, match="expire_prefixes"):
        generator.parse_tiers(changed)
    changed["tiers"]["raw"]["expire_prefixes"] = ["events/", "events/"]
    with pytest.raises(generator.PolicyError, match="twice"):
        generator.parse_tiers(changed)
    del changed["tiers"]["raw"]["expire_prefixes"]  # the whole raw/ tier expires by age
    with pytest.raises(generator.PolicyError, match="nested"):
        generator.parse_tiers(changed)


def test_generator_output_round_trips_through_the_comparison(policy, tmp_path):
    """A policy change rendered by the generator is consistent; the old file is not."""
    generator = _load_generator()
    changed = copy.deepcopy(policy)
    changed["tiers"]["consented"].update(days=200, lifecycle_days=202)
    changed["tiers"]["features"]["days"] = 200
    path = tmp_path / "lifecycle.tf"
    path.write_text(generator.render(generator.parse_tiers(changed)), encoding="utf-8")
    assert compare(changed, parse_rules(load_tf(path))) == []
    assert compare(changed, parse_rules(load_module(STORAGE))) != []


# ----------------------------------------------------------------------------------------------
# Object Lock: the ledger bucket's default retention comes from the policy too.
# ----------------------------------------------------------------------------------------------


def object_lock_settings(tf: dict) -> dict[str, tuple[str, int]]:
    """{bucket: (mode, days)} of every aws_s3_bucket_object_lock_configuration in a parsed module."""
    out = {}
    for name, body in resources(tf, "aws_s3_bucket_object_lock_configuration").items():
        bucket = _bucket_of(body)
        retention = _single(_single(body.get("rule"), f"{name}.rule").get("default_retention"), f"{name}.default_retention")
        out[bucket] = (retention["mode"], int(retention["days"]))
    return out


def compare_object_lock(policy: dict, tf: dict) -> list[str]:
    """Every way the buckets' Object Lock disagrees with the policy's `object_lock` tiers (empty = consistent)."""
    problems = []
    locks = object_lock_settings(tf)
    enabled = {name for name, body in resources(tf, "aws_s3_bucket").items() if body.get("object_lock_enabled") is True}
    wanted = {spec["bucket"]: (spec["object_lock"], spec["days"], name) for name, spec in policy["tiers"].items()
              if spec.get("object_lock")}
    for bucket, (mode, days, tier) in wanted.items():
        if bucket not in enabled:
            problems.append(f"tier {tier}: bucket {bucket} is not created with object_lock_enabled = true")
        if bucket not in locks:
            problems.append(f"tier {tier}: bucket {bucket} has no Object Lock default retention")
        elif locks[bucket] != (mode, days):
            problems.append(f"tier {tier}: bucket {bucket} locks objects {locks[bucket][0]} for {locks[bucket][1]} days, "
                            f"policy says {mode} for {days}")
    for bucket in set(locks) - set(wanted):
        problems.append(f"bucket {bucket} has an Object Lock retention that no retention tier declares")
    return problems


def test_ledger_bucket_object_lock_matches_retention_policy(policy):
    tier = next(spec for spec in policy["tiers"].values() if spec.get("bucket") == "ledger")
    assert tier["object_lock"] == "COMPLIANCE" and tier["days"] == policy["tiers"]["privacy"]["days"]
    module = load_module(STORAGE)
    assert object_lock_settings(module) == {"ledger": ("COMPLIANCE", tier["days"])}
    assert compare_object_lock(policy, module) == []
    # and the lifecycle of the ledger bucket expires the logs when their lock ends, not before
    ledger_rules = [r for r in parse_rules(module) if r.bucket == "ledger" and r.expiration_days]
    assert [r.expiration_days for r in ledger_rules] == [tier["days"]]


def test_only_the_generated_file_sets_object_lock_retention():
    for path in sorted(STORAGE.glob("*.tf")):
        if path != GENERATED:
            assert object_lock_settings(load_tf(path)) == {}, f"{path.name} sets Object Lock retention; edit retention.yaml"


def test_detects_object_lock_drift(policy):
    module = load_module(STORAGE)
    longer = copy.deepcopy(policy)
    longer["tiers"]["privacy_logs"]["days"] = 3650
    assert any("policy says COMPLIANCE for 3650" in p for p in compare_object_lock(longer, module))
    governance = copy.deepcopy(policy)
    governance["tiers"]["privacy_logs"]["object_lock"] = "GOVERNANCE"
    assert any("policy says GOVERNANCE" in p for p in compare_object_lock(governance, module))
    unlocked = copy.deepcopy(module)
    for block in unlocked["resource"]:
        block.pop("aws_s3_bucket_object_lock_configuration", None)
    assert any("no Object Lock default retention" in p for p in compare_object_lock(policy, unlocked))


def test_generator_refuses_object_lock_outside_the_ledger_bucket(policy):
    generator = _load_generator()
    on_lake = copy.deepcopy(policy)
    on_lake["tiers"]["privacy"]["object_lock"] = "COMPLIANCE"
    with pytest.raises(generator.PolicyError, match="only the ledger bucket"):
        generator.parse_tiers(on_lake)
    unlocked = copy.deepcopy(policy)
    del unlocked["tiers"]["privacy_logs"]["object_lock"]
    with pytest.raises(generator.PolicyError, match="must set object_lock"):
        generator.parse_tiers(unlocked)
    bad_mode = copy.deepcopy(policy)
    bad_mode["tiers"]["privacy_logs"]["object_lock"] = "FOREVER"
    with pytest.raises(generator.PolicyError, match="object_lock='FOREVER'"):
        generator.parse_tiers(bad_mode)


def test_generator_renders_the_policy_lock(policy, tmp_path):
    generator = _load_generator()
    changed = copy.deepcopy(policy)
    changed["tiers"]["privacy_logs"]["days"] = 3650
    path = tmp_path / "lifecycle.tf"
    path.write_text(generator.render(generator.parse_tiers(changed)), encoding="utf-8")
    assert object_lock_settings(load_tf(path)) == {"ledger": ("COMPLIANCE", 3650)}
