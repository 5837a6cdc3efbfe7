"""Load and validate `privacy_policies/*.yaml` (policies are data; code only reads them).

Validation runs when the Dagster definitions load. A bad file fails with the file, the key path and
what is wrong, e.g. ``privacy_policies/jurisdictions.yaml: jurisdictions.EU.purposes.analytics.basis:
'optin' is not one of opt_in, opt_out``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from personalization_assets.core.paths import PROJECT_ROOT

POLICY_DIR_ENV = "PERSONALIZATION_POLICY_DIR"
REQUIRED_PURPOSES = ("personalization", "analytics", "advertising", "sale_share")
CLASSES = ("direct_identifier", "quasi_identifier", "sensitive", "none")
ACTIONS = ("drop", "pseudonymize", "truncate_ip", "generalize_birth_date", "strip_url_query", "keep")
NORMALIZERS = ("id", "email", "phone")
TEXT_ACTIONS = ("keep", "strip_url_query")  # actions whose output is the column's text (detect_pii / neutralize_formulas apply)
BASES = ("opt_in", "opt_out")
NO_RECORD = ("deny", "allow")
OBJECT_LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")
DECISIONS = ("granted", "denied")
# A subject whose location is known but matches no listed jurisdiction falls under DEFAULT_JURISDICTION; a subject
# with no event location and no CRM country falls under UNKNOWN_JURISDICTION (fail-closed in the shipped policy).
DEFAULT_JURISDICTION = "default"
UNKNOWN_JURISDICTION = "unknown"
# Which input decided a subject's (or a decision's) jurisdiction.
JURISDICTION_SOURCES = ("event_location", "crm_country", "request", "unknown")


class PolicyError(ValueError):
    """A policy file is invalid; the message names the file, the key and the problem."""


def policy_dir() -> Path:
    return Path(os.environ.get(POLICY_DIR_ENV) or PROJECT_ROOT / "privacy_policies")


@dataclass(frozen=True)
class Purpose:
    name: str
    categories: tuple[str, ...]
    gpc_denies: bool = False
    privacy_request_types: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PurposeRule:
    basis: str
    no_record: str


@dataclass(frozen=True)
class Jurisdiction:
    name: str
    regulation: str
    countries: frozenset[str]
    regions: frozenset[str]
    rules: dict[str, PurposeRule]


@dataclass(frozen=True)
class ColumnPolicy:
    column: str
    classification: str
    action: str
    normalize: str | None
    output: str
    detect_pii: bool = False  # free text: emails, phones, IPs and card numbers are redacted (privacy/pii.py)
    neutralize_formulas: bool = False  # text that a spreadsheet would evaluate is made inert (csv_safety.py)

    @property
    def scans_pii(self) -> bool:
        """URLs are free text by nature: strip_url_query always runs the PII detector after stripping."""
        return self.detect_pii or self.action == "strip_url_query"


@dataclass(frozen=True)
class RetentionTier:
    name: str
    prefix: str
    bucket: str
    days: int
    object_lock: str | None = None  # S3 Object Lock mode (COMPLIANCE | GOVERNANCE) of a ledger-bucket tier


@dataclass(frozen=True)
class DpRelease:
    name: str
    epsilon: float
    max_contributions: int
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrivacyPolicy:
    version: str
    purposes: dict[str, Purpose]
    jurisdictions: dict[str, Jurisdiction]
    columns: dict[str, dict[str, ColumnPolicy]]  # source -> column -> policy
    retention: dict[str, RetentionTier]
    dp_period: str
    dp_total_epsilon: float
    dp_releases: dict[str, DpRelease]
    asset_purposes: dict[str, str]
    compliance_purposes: tuple[str, ...]
    erasure_exempt: tuple[str, ...]
    sensitive_assets: tuple[str, ...]
    directory: str
    # a release of the same name within this many hours of the previous one returns the stored release
    # (no new spend) even when its input changed: budget.min_release_interval_hours
    dp_min_release_interval_hours: float = 0.0

    @property
    def ledger_tier(self) -> RetentionTier | None:
        """The retention tier of the append-only logs (bucket `ledger`, Object Lock), if the policy declares one."""
        return next((t for t in self.retention.values() if t.bucket == "ledger"), None)

    def is_sensitive(self, asset: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(asset, pat) for pat in self.sensitive_assets)

    def jurisdiction_for(self, country: str | None, region: str | None) -> str:
        """Region match first (e.g. US-CA), then country, else `default`; `unknown` when neither is given.
        (The assets apply this rule in SQL, `identity.jurisdiction_case_sql`; this statement of it is what the
        tests check the SQL against.)"""
        country, region = (country or "").strip() or None, (region or "").strip() or None
        if country is None and region is None:
            return UNKNOWN_JURISDICTION
        for j in self.jurisdictions.values():
            if region and region.upper() in j.regions:
                return j.name
        for j in self.jurisdictions.values():
            if country and country.upper() in j.countries:
                return j.name
        return DEFAULT_JURISDICTION

    def allowed_read_purposes(self) -> set[str]:
        return set(self.purposes) | set(self.compliance_purposes)

    def direct_identifier_columns(self) -> set[str]:
        """Every raw column name classified as a direct identifier (any source)."""
        return {c.column for cols in self.columns.values() for c in cols.values() if c.classification == "direct_identifier"}


class _Reader:
    def __init__(self, directory: Path):
        self.directory = directory

    def load(self, name: str) -> tuple[str, Any]:
        path = self.directory / name
        label = f"privacy_policies/{name}" if self.directory.name == "privacy_policies" else str(path)
        if not path.exists():
            raise PolicyError(f"{label}: file is missing (expected in {self.directory}).")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise PolicyError(f"{label}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise PolicyError(f"{label}: top level must be a mapping.")
        return label, data


def _need(label: str, path: str, mapping: Any, key: str, typ: type | tuple = object) -> Any:
    if not isinstance(mapping, dict):
        raise PolicyError(f"{label}: {path}: must be a mapping.")
    if key not in mapping:
        raise PolicyError(f"{label}: {path}.{key}: missing." if path else f"{label}: {key}: missing.")
    value = mapping[key]
    if typ is not object and not isinstance(value, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        where = f"{path}.{key}" if path else key
        raise PolicyError(f"{label}: {where}: must be a {names}, got {type(value).__name__} {value!r}.")
    return value


def _one_of(label: str, where: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise PolicyError(f"{label}: {where}: {value!r} is not one of {', '.join(allowed)}.")
    return value


def load_policy(directory: Path | str | None = None, raw_models: dict | None = None) -> PrivacyPolicy:
    directory = Path(directory) if directory else policy_dir()
    r = _Reader(directory)

    label, data = r.load("policy.yaml")
    version = str(_need(label, "", data, "version", (str, int, float)))

    label, data = r.load("purposes.yaml")
    purposes: dict[str, Purpose] = {}
    for name, spec in _need(label, "", data, "purposes", dict).items():
        where = f"purposes.{name}"
        cats = _need(label, where, spec, "categories", list)
        if not cats or not all(isinstance(c, str) and c for c in cats):
            raise PolicyError(f"{label}: {where}.categories: must be a non-empty list of category names.")
        prt = spec.get("privacy_request_types", {}) or {}
        if not isinstance(prt, dict):
            raise PolicyError(f"{label}: {where}.privacy_request_types: must be a mapping request type -> granted|denied.")
        for t, d in prt.items():
            _one_of(label, f"{where}.privacy_request_types.{t}", d, DECISIONS)
        gpc = spec.get("gpc_denies", False)
        if not isinstance(gpc, bool):
            raise PolicyError(f"{label}: {where}.gpc_denies: must be true or false.")
        purposes[name] = Purpose(name, tuple(c.lower() for c in cats), gpc, dict(prt))
    for p in REQUIRED_PURPOSES:
        if p not in purposes:
            raise PolicyError(f"{label}: purposes.{p}: missing (required purposes: {', '.join(REQUIRED_PURPOSES)}).")

    label, data = r.load("jurisdictions.yaml")
    jurisdictions: dict[str, Jurisdiction] = {}
    for name, spec in _need(label, "", data, "jurisdictions", dict).items():
        where = f"jurisdictions.{name}"
        match = spec.get("match", {}) or {}
        if not isinstance(match, dict):
            raise PolicyError(f"{label}: {where}.match: must be a mapping with countries/regions lists.")
        rules = {}
        pspec = _need(label, where, spec, "purposes", dict)
        for p in purposes:
            rule = _need(label, f"{where}.purposes", pspec, p, dict)
            basis = _one_of(label, f"{where}.purposes.{p}.basis", rule.get("basis"), BASES)
            no_record = _one_of(label, f"{where}.purposes.{p}.no_record", rule.get("no_record"), NO_RECORD)
            if p == "personalization" and no_record != "deny":
                raise PolicyError(
                    f"{label}: {where}.purposes.personalization.no_record: must be deny — the platform is fail-closed "
                    "for personalization (no consent record = no processing)."
                )
            rules[p] = PurposeRule(basis, no_record)
        for p in pspec:
            if p not in purposes:
                raise PolicyError(f"{label}: {where}.purposes.{p}: unknown purpose (declare it in purposes.yaml).")
        jurisdictions[name] = Jurisdiction(
            name=name,
            regulation=str(spec.get("regulation", "")),
            countries=frozenset(str(c).upper() for c in match.get("countries", []) or []),
            regions=frozenset(str(c).upper() for c in match.get("regions", []) or []),
            rules=rules,
        )
    if DEFAULT_JURISDICTION not in jurisdictions:
        raise PolicyError(f"{label}: jurisdictions.default: missing (it applies when no other jurisdiction matches).")
    if UNKNOWN_JURISDICTION not in jurisdictions:
        raise PolicyError(
            f"{label}: jurisdictions.{UNKNOWN_JURISDICTION}: missing (it applies to a subject with no event location and "
            f"no CRM country). Add `{UNKNOWN_JURISDICTION}:` with `match: {{}}` and `no_record: deny` for every purpose "
            "(fail-closed); loosen a purpose there only explicitly."
        )
    for name in (DEFAULT_JURISDICTION, UNKNOWN_JURISDICTION):
        if jurisdictions[name].countries or jurisdictions[name].regions:
            raise PolicyError(
                f"{label}: jurisdictions.{name}.match: must be empty ({name} applies when no listed jurisdiction "
                f"{'matches' if name == DEFAULT_JURISDICTION else 'can be determined'}; list countries/regions under a named jurisdiction)."
            )

    label, data = r.load("classification.yaml")
    columns: dict[str, dict[str, ColumnPolicy]] = {}
    for source, cols in _need(label, "", data, "sources", dict).items():
        columns[source] = {}
        if not isinstance(cols, dict):
            raise PolicyError(f"{label}: sources.{source}: must map column -> {{class, action}}.")
        for col, spec in cols.items():
            where = f"sources.{source}.{col}"
            cls = _one_of(label, f"{where}.class", (spec or {}).get("class"), CLASSES)
            action = _one_of(label, f"{where}.action", spec.get("action"), ACTIONS)
            normalize = spec.get("normalize")
            if action == "pseudonymize":
                _one_of(label, f"{where}.normalize", normalize, NORMALIZERS)
            if cls == "direct_identifier" and action not in ("drop", "pseudonymize"):
                raise PolicyError(f"{label}: {where}.action: a direct identifier must be dropped or pseudonymized, not {action!r}.")
            flags = {}
            for flag in ("detect_pii", "neutralize_formulas"):
                value = spec.get(flag, False)
                if not isinstance(value, bool):
                    raise PolicyError(f"{label}: {where}.{flag}: must be true or false, got {value!r}.")
                if value and action not in TEXT_ACTIONS:
                    raise PolicyError(
                        f"{label}: {where}.{flag}: only applies to a column that is kept as text "
                        f"(action {' or '.join(TEXT_ACTIONS)}), not to action {action!r}."
                    )
                flags[flag] = value
            columns[source][col] = ColumnPolicy(col, cls, action, normalize, str(spec.get("output") or col), **flags)
    if raw_models:
        for source, model in raw_models.items():
            declared = set(model.to_schema().columns)
            listed = set(columns.get(source, {}))
            missing = sorted(declared - listed)
            extra = sorted(listed - declared)
            if missing:
                raise PolicyError(
                    f"{label}: sources.{source}: column(s) {', '.join(missing)} of the raw table are not classified "
                    "(every raw column needs a class and an action, so a new field cannot leak by omission)."
                )
            if extra:
                raise PolicyError(f"{label}: sources.{source}: column(s) {', '.join(extra)} do not exist in the raw table.")
            schema_cols = model.to_schema().columns
            for col, cp in columns.get(source, {}).items():
                if (cp.detect_pii or cp.neutralize_formulas) and "str" not in str(schema_cols[col].dtype).lower():
                    flag = "detect_pii" if cp.detect_pii else "neutralize_formulas"
                    raise PolicyError(
                        f"{label}: sources.{source}.{col}.{flag}: the raw column is {schema_cols[col].dtype}, not text; "
                        "remove the flag."
                    )

    label, data = r.load("retention.yaml")
    retention = {}
    for name, spec in _need(label, "", data, "tiers", dict).items():
        days = _need(label, f"tiers.{name}", spec, "days", int)
        if days < 1:
            raise PolicyError(f"{label}: tiers.{name}.days: must be >= 1, got {days}.")
        bucket = _one_of(label, f"tiers.{name}.bucket", spec.get("bucket"), ("landing", "lake", "ledger"))
        lock = spec.get("object_lock")
        if lock is not None:
            lock = _one_of(label, f"tiers.{name}.object_lock", lock, OBJECT_LOCK_MODES)
        if (lock is not None) != (bucket == "ledger"):
            raise PolicyError(
                f"{label}: tiers.{name}.object_lock: "
                + ("only a tier of the `ledger` bucket (the Object Lock bucket) can be locked."
                   if lock else "a tier of the `ledger` bucket must set object_lock (COMPLIANCE or GOVERNANCE).")
            )
        retention[name] = RetentionTier(name, str(spec.get("prefix", "")), bucket, days, lock)
    if sum(t.bucket == "ledger" for t in retention.values()) > 1:
        raise PolicyError(f"{label}: tiers: at most one tier may live in the `ledger` bucket (its Object Lock default "
                          "retention is bucket-wide).")
    for tier in ("raw", "consented", "features"):
        if tier not in retention:
            raise PolicyError(f"{label}: tiers.{tier}: missing.")

    label, data = r.load("differential_privacy.yaml")
    budget = _need(label, "", data, "budget", dict)
    total = float(_need(label, "budget", budget, "total_epsilon", (int, float)))
    if total <= 0:
        raise PolicyError(f"{label}: budget.total_epsilon: must be > 0.")
    period = _one_of(label, "budget.period", budget.get("period"), ("month", "day", "year"))
    interval = budget.get("min_release_interval_hours", 0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
        raise PolicyError(f"{label}: budget.min_release_interval_hours: must be a number of hours >= 0 "
                          f"(e.g. 167 = at most one release of each export per 6 days 23 hours), got {interval!r}.")
    releases = {}
    for name, spec in _need(label, "", data, "releases", dict).items():
        eps = float(_need(label, f"releases.{name}", spec, "epsilon", (int, float)))
        k = _need(label, f"releases.{name}", spec, "max_contributions", int)
        if eps <= 0 or eps > total:
            raise PolicyError(f"{label}: releases.{name}.epsilon: must be in (0, total_epsilon={total}], got {eps}.")
        if k < 1:
            raise PolicyError(f"{label}: releases.{name}.max_contributions: must be >= 1.")
        keys = spec.get("keys", []) or []
        if not isinstance(keys, list) or not all(isinstance(x, str) for x in keys):
            raise PolicyError(f"{label}: releases.{name}.keys: must be a list of public group names.")
        releases[name] = DpRelease(name, eps, k, tuple(keys))

    label, data = r.load("asset_purposes.yaml")
    compliance = tuple(_need(label, "", data, "compliance_purposes", list))
    assets = _need(label, "", data, "assets", dict)
    allowed = set(purposes) | set(compliance)
    for asset, purpose in assets.items():
        _one_of(label, f"assets.{asset}", purpose, tuple(sorted(allowed)))
    exempt = tuple(data.get("erasure_exempt", []) or [])
    sensitive = tuple(data.get("sensitive_assets", []) or [])
    if not sensitive:
        raise PolicyError(f"{label}: sensitive_assets: missing or empty (at least raw/* must be audited).")

    return PrivacyPolicy(
        version=version,
        purposes=purposes,
        jurisdictions=jurisdictions,
        columns=columns,
        retention=retention,
        dp_period=period,
        dp_total_epsilon=total,
        dp_releases=releases,
        asset_purposes=dict(assets),
        compliance_purposes=compliance,
        erasure_exempt=exempt,
        sensitive_assets=sensitive,
        directory=str(directory),
        dp_min_release_interval_hours=float(interval),
    )


@lru_cache(maxsize=4)
def _cached(directory: str) -> PrivacyPolicy:
    from personalization_assets.core.tracking_plan import RawContent, RawCrmProfile, RawEvent, RawPrivacyRequest

    raw_models = {"events": RawEvent, "crm_profiles": RawCrmProfile, "content_catalog": RawContent, "privacy_requests": RawPrivacyRequest}
    return load_policy(Path(directory), raw_models=raw_models)


def get_policy() -> PrivacyPolicy:
    """The validated policy of the configured directory (cached per process)."""
    return _cached(str(policy_dir()))
