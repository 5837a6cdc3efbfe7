#!/usr/bin/env python3
"""Generate the S3 lifecycle rules and Object Lock retention of infra/terraform/modules/storage from
privacy_policies/retention.yaml.

retention.yaml is the single source of truth for how long each lake tier is kept. This script turns
it into `aws_s3_bucket_lifecycle_configuration` resources (one per bucket, one rule per tier), and the
tier of the ledger bucket (`object_lock: COMPLIANCE`) into the bucket's Object Lock default retention
(`aws_s3_bucket_object_lock_configuration`, same mode and days), and writes them to
`infra/terraform/modules/storage/lifecycle.generated.tf`. The generated file is
checked in so that plans, reviews and checkov see concrete values; tests/infra/test_retention_lifecycle.py
fails when it drifts from the policy.

Usage:
    python infra/scripts/render_retention.py           # rewrite the generated file
    python infra/scripts/render_retention.py --check   # exit 1 if the file is stale

S3 applies the SHORTEST expiration among all rules whose filter matches an object. A tier nested
inside another tier of the same bucket (raw/events_quarantine/ inside raw/) therefore cannot be kept
longer than its parent: the generator refuses such a policy instead of emitting rules that would
silently delete data earlier than the policy says.

S3 expires an object by its age, not by the age of the data in it. That is right for a time-partitioned table (an
hour's object is as old as its hour, give or take late data) and wrong for state rewritten only when it changes: the
suppression list, unchanged for `days`, would be deleted and every erasure forgotten; a CRM snapshot or the landing
manifest unchanged for 32 days likewise. A tier's `expire_prefixes` (relative to its prefix) name where its objects
expire by age; the rest of the tier keeps current objects (its code rewrites or deletes them) and only purges old
versions. Without `expire_prefixes`, the whole tier expires by age (the landing zone: objects the CDP delivered once).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY_PATH = REPO_ROOT / "privacy_policies" / "retention.yaml"
OUTPUT_PATH = (
    REPO_ROOT / "infra" / "terraform" / "modules" / "storage" / "lifecycle.generated.tf"
)

# Buckets a tier may live in, and the Terraform variable holding each bucket's base prefix
# (the `<prefix>` of PERSONALIZATION_LANDING_URL / PERSONALIZATION_LAKE_URL).
BUCKET_PREFIX_VARS = {"landing": "landing_prefix", "lake": "lake_prefix", "ledger": "ledger_prefix"}
# The only bucket created with Object Lock (aws_s3_bucket.ledger, object_lock_enabled = true): a tier in it
# must declare its lock mode, and no other bucket can have one.
OBJECT_LOCK_BUCKET = "ledger"
OBJECT_LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")

# Old object versions (overwritten or deleted objects, including rows removed by an erasure request)
# are purged this many days after they became noncurrent, unless a tier sets `noncurrent_days`.
# 7 days leaves an undo window for operator mistakes and stays well inside the one-month deadline
# for answering erasure requests (GDPR Art. 12(3)); it may never exceed MAX_NONCURRENT_DAYS.
DEFAULT_NONCURRENT_DAYS = 7
MAX_NONCURRENT_DAYS = 30
# Parts of failed multipart uploads are invisible but billed (and may hold PII): drop them quickly
# (one bucket-wide rule per bucket).
ABORT_INCOMPLETE_MULTIPART_DAYS = 1


class PolicyError(ValueError):
    """retention.yaml is malformed or cannot be enforced with S3 lifecycle rules."""


@dataclass(frozen=True)
class Tier:
    name: str
    bucket: str
    prefix: str
    days: int
    noncurrent_days: int
    object_lock: str | None = None
    # S3's expiration: `days`, or later (`lifecycle_days`) for a tier the retention job enforces, so the job always
    # deletes first and records its cutoff; the rule is the backstop
    lifecycle_days: int | None = None
    # where S3 expires current objects by age, relative to the bucket's base prefix: ("raw/events/",), or the tier's own
    # prefix when the policy names none (the whole tier), or () (no current object expires by age)
    expire: tuple[str, ...] = ()

    @property
    def expiration_days(self) -> int:
        return self.lifecycle_days or self.days


def load_tiers(policy_path: Path = POLICY_PATH) -> list[Tier]:
    """Read and validate the retention policy. Raises PolicyError naming the tier and the problem."""
    with open(policy_path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}
    return parse_tiers(doc, source=str(policy_path))


def parse_tiers(doc: dict, source: str = "retention.yaml") -> list[Tier]:
    raw_tiers = doc.get("tiers")
    if not isinstance(raw_tiers, dict) or not raw_tiers:
        raise PolicyError(f"{source}: `tiers` must be a non-empty mapping")
    tiers: list[Tier] = []
    for name, spec in raw_tiers.items():
        where = f"{source}: tiers.{name}"
        if not isinstance(spec, dict):
            raise PolicyError(f"{where} must be a mapping")
        bucket = spec.get("bucket")
        if bucket not in BUCKET_PREFIX_VARS:
            raise PolicyError(
                f"{where}.bucket={bucket!r}; expected one of {sorted(BUCKET_PREFIX_VARS)}"
            )
        prefix = spec.get("prefix", "")
        if prefix is None:
            prefix = ""
        if (
            not isinstance(prefix, str)
            or prefix.startswith("/")
            or (prefix and not prefix.endswith("/"))
        ):
            raise PolicyError(
                f"{where}.prefix={prefix!r}; expected '' or a relative prefix ending with '/'"
            )
        days = spec.get("days")
        if not isinstance(days, int) or isinstance(days, bool) or days < 1:
            raise PolicyError(
                f"{where}.days={days!r}; expected a whole number of days >= 1"
            )
        noncurrent = spec.get("noncurrent_days", DEFAULT_NONCURRENT_DAYS)
        if (
            not isinstance(noncurrent, int)
            or isinstance(noncurrent, bool)
            or not 1 <= noncurrent <= MAX_NONCURRENT_DAYS
        ):
            raise PolicyError(
                f"{where}.noncurrent_days={noncurrent!r}; expected 1..{MAX_NONCURRENT_DAYS}"
            )
        lifecycle = spec.get("lifecycle_days")
        if lifecycle is not None and (not isinstance(lifecycle, int) or isinstance(lifecycle, bool) or lifecycle < days):
            raise PolicyError(
                f"{where}.lifecycle_days={lifecycle!r}; expected a whole number of days >= days ({days})"
            )
        subs = spec.get("expire_prefixes")
        if subs is None:
            expire = (prefix,)
        elif not isinstance(subs, list) or not all(
            isinstance(x, str) and x and not x.startswith("/") and x.endswith("/") for x in subs
        ):
            raise PolicyError(
                f"{where}.expire_prefixes={subs!r}; expected a list of relative prefixes ending with '/' "
                "(the tables whose objects S3 expires by age), or [] for none"
            )
        elif len(set(subs)) != len(subs):
            raise PolicyError(f"{where}.expire_prefixes={subs!r} names a prefix twice (S3 refuses two rules with one id)")
        else:
            expire = tuple(prefix + x for x in subs)
        lock = spec.get("object_lock")
        if lock is not None and lock not in OBJECT_LOCK_MODES:
            raise PolicyError(f"{where}.object_lock={lock!r}; expected one of {list(OBJECT_LOCK_MODES)}")
        if (lock is not None) != (bucket == OBJECT_LOCK_BUCKET):
            raise PolicyError(
                f"{where}.object_lock: only the {OBJECT_LOCK_BUCKET} bucket is created with Object Lock, and each of "
                f"its tiers must set object_lock ({' or '.join(OBJECT_LOCK_MODES)})"
            )
        tiers.append(Tier(str(name), bucket, prefix, days, noncurrent, lock, lifecycle, expire))
    locked = [t for t in tiers if t.object_lock]
    if len(locked) > 1:
        raise PolicyError(
            f"{source}: tiers {', '.join(t.name for t in locked)} are all in the {OBJECT_LOCK_BUCKET} bucket; its Object "
            "Lock default retention is bucket-wide, so it holds exactly one tier"
        )

    seen: dict[tuple[str, str], str] = {}
    for tier in tiers:
        key = (tier.bucket, tier.prefix)
        if key in seen:
            raise PolicyError(
                f"{source}: tiers {seen[key]} and {tier.name} both cover {tier.bucket}:{tier.prefix!r}"
            )
        seen[key] = tier.name
    for child in tiers:
        for parent in tiers:
            if parent is child or parent.bucket != child.bucket or not child.prefix.startswith(parent.prefix):
                continue
            # the parent's expiring prefixes that reach into the child (S3: the shortest matching expiration wins)
            reach = [p for p in parent.expire if child.prefix.startswith(p) or p.startswith(child.prefix)]
            if reach and (not child.expire or child.expiration_days > parent.expiration_days):
                raise PolicyError(
                    f"{source}: tier {child.name} ({child.bucket}:{child.prefix!r}, "
                    f"{f'{child.expiration_days} days' if child.expire else 'not expired by age'}) is nested in "
                    f"tier {parent.name}, whose objects under {reach[0]!r} expire after {parent.expiration_days} days. S3 "
                    f"applies the shortest matching expiration, so {child.name} would be deleted after "
                    f"{parent.expiration_days} days. Move {child.name} out of {parent.prefix!r}, narrow "
                    f"{parent.name}.expire_prefixes, or shorten {child.name}."
                )
    return tiers


def _hcl_prefix(bucket: str, prefix: str) -> str:
    """HCL expression of a rule's key prefix: the bucket's base prefix variable + the prefix in it."""
    var = f"var.{BUCKET_PREFIX_VARS[bucket]}"
    return var if not prefix else f'"${{{var}}}{prefix}"'


def _rule_id(tier: Tier, prefix: str) -> str:
    sub = prefix[len(tier.prefix):].strip("/").replace("/", "-")
    return f"retention-{tier.name}" + (f"-{sub}" if sub else "")


def render(tiers: list[Tier]) -> str:
    """The Terraform text for the lifecycle configurations (canonical `terraform fmt` layout)."""
    lines = [
        "# GENERATED by infra/scripts/render_retention.py from privacy_policies/retention.yaml. DO NOT EDIT.",
        "# Change the policy, then run `python infra/scripts/render_retention.py`;",
        "# tests/infra/test_retention_lifecycle.py fails when this file and the policy disagree.",
    ]
    for bucket in BUCKET_PREFIX_VARS:
        bucket_tiers = sorted(
            (t for t in tiers if t.bucket == bucket), key=lambda t: (t.prefix, t.name)
        )
        if not bucket_tiers:
            continue
        lines += [
            "",
            f'resource "aws_s3_bucket_lifecycle_configuration" "{bucket}" {{',
            f"  bucket = aws_s3_bucket.{bucket}.id",
            "",
            "  # Noncurrent-version rules only act once versioning is on.",
            f'  depends_on = [aws_s3_bucket_versioning.data["{bucket}"]]',
            "",
            "  # Bucket-wide: parts of failed multipart uploads are invisible but billed and may hold PII.",
            "  rule {",
            '    id     = "abort-incomplete-multipart-uploads"',
            '    status = "Enabled"',
            "",
            "    filter {}",
            "",
            "    abort_incomplete_multipart_upload {",
            f"      days_after_initiation = {ABORT_INCOMPLETE_MULTIPART_DAYS}",
            "    }",
            "  }",
        ]
        for tier in bucket_tiers:
            whole = tier.expire == (tier.prefix,)
            expiry = (f"expired by S3 after {tier.expiration_days} days" +
                      (" (the retention job deletes at its days and records its cutoff first: a backstop)"
                       if tier.lifecycle_days and tier.lifecycle_days != tier.days else ""))
            where = ("" if whole else
                     f" Current objects expire by age only under {', '.join(repr(p) for p in tier.expire)}: {expiry};"
                     " the rest is state its code rewrites, never expired by age." if tier.expire else
                     " No current object expires by age (state its code rewrites or deletes).")
            lines += [
                "",
                f"  # Tier {tier.name}: keep {tier.days} days; old versions {tier.noncurrent_days} days after replacement/deletion."
                + (f" Whole tier {expiry}." if whole else where),
                "  rule {",
                f'    id     = "{_rule_id(tier, tier.prefix)}"',
                '    status = "Enabled"',
                "",
                "    filter {",
                f"      prefix = {_hcl_prefix(tier.bucket, tier.prefix)}",
                "    }",
                "",
            ]
            if whole:
                lines += [
                    "    expiration {",
                    f"      days = {tier.expiration_days}",
                    "    }",
                    "",
                ]
            lines += [
                "    noncurrent_version_expiration {",
                f"      noncurrent_days = {tier.noncurrent_days}",
                "    }",
                "  }",
            ]
            for prefix in () if whole else tier.expire:
                lines += [
                    "",
                    "  rule {",
                    f'    id     = "{_rule_id(tier, prefix)}"',
                    '    status = "Enabled"',
                    "",
                    "    filter {",
                    f"      prefix = {_hcl_prefix(tier.bucket, prefix)}",
                    "    }",
                    "",
                    "    expiration {",
                    f"      days = {tier.expiration_days}",
                    "    }",
                    "  }",
                ]
        lines.append("}")
    for tier in (t for t in tiers if t.object_lock):
        lines += [
            "",
            f"# Tier {tier.name}: every object is write-once for {tier.days} days ({tier.object_lock} mode: nobody, not even",
            "# the account root, can delete or overwrite a version before then; the retention cannot be shortened).",
            f'resource "aws_s3_bucket_object_lock_configuration" "{tier.bucket}" {{',
            f"  bucket = aws_s3_bucket.{tier.bucket}.id",
            "",
            "  rule {",
            "    default_retention {",
            f'      mode = "{tier.object_lock}"',
            f"      days = {tier.days}",
            "    }",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the generated file is stale"
    )
    args = parser.parse_args(argv)
    try:
        text = render(load_tiers())
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    current = OUTPUT_PATH.read_text(encoding="utf-8") if OUTPUT_PATH.exists() else None
    if args.check:
        if current != text:
            print(
                f"{OUTPUT_PATH} is stale: run python infra/scripts/render_retention.py",
                file=sys.stderr,
            )
            return 1
        print(f"{OUTPUT_PATH} is up to date")
        return 0
    if current != text:
        OUTPUT_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT_PATH}")
    else:
        print(f"{OUTPUT_PATH} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
