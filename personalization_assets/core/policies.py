"""Load and validate `privacy_policies/*.yaml` (policies are data; code only reads them).

Validation runs when the Dagster definitions load. A bad file fails with the file, the key path and
what is wrong, e.g. ``privacy_policies/jurisdictions.yaml: jurisdictions.EU.purposes.analytics.basis:
'optin' is not one of opt_in, opt_out``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

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


# ------------------------------------------------------------------------------------------------ file models
# One pydantic model per policy file: the structure (which keys, which types, nested mappings) is declared on
# the models; the rules that need another file (jurisdiction purposes vs purposes.yaml, columns vs the raw
# models) read it from the validation context. A validation error becomes a PolicyError worded as before:
# `<file>: <key path>: <problem>` (see `_policy_error`). The loader then builds the frozen dataclasses above,
# which are what the rest of the code uses.


def _fail(msg: str, at: str = "") -> PydanticCustomError:
    """A policy problem with our own wording; `at` extends the key path of the value being validated."""
    return PydanticCustomError("policy", "{msg}", {"msg": msg, "where_suffix": at})


def _typed(*types: type) -> BeforeValidator:
    """isinstance check with today's wording: `must be a int or float, got str '4'.`"""

    def check(value: Any) -> Any:
        if not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise _fail(f"must be a {names}, got {type(value).__name__} {value!r}.")
        return value

    return BeforeValidator(check)


def _one_of(allowed: tuple[str, ...], *, optional: bool = False) -> BeforeValidator:
    def check(value: Any) -> Any:
        if value not in allowed and not (optional and value is None):
            raise _fail(f"{value!r} is not one of {', '.join(allowed)}.")
        return value

    return BeforeValidator(check)


def _flag(with_value: bool) -> BeforeValidator:
    def check(value: Any) -> Any:
        if not isinstance(value, bool):
            raise _fail(f"must be true or false, got {value!r}." if with_value else "must be true or false.")
        return value

    return BeforeValidator(check)


def _mapping(message: str | None = None, *, none_is_empty: bool = False) -> BeforeValidator:
    """A value that must be a mapping; `message` replaces the default `must be a dict, got ...` wording."""

    def check(value: Any) -> Any:
        if value is None and none_is_empty:
            return {}
        if not isinstance(value, dict):
            raise _fail(message or f"must be a dict, got {type(value).__name__} {value!r}.")
        return value

    return BeforeValidator(check)


def _none_is(default: Any) -> BeforeValidator:
    return BeforeValidator(lambda v: default if v is None else v)


class _File(BaseModel):
    """Unknown keys (descriptions, owners, comments) are ignored, as the hand parser did."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class _DictSpec(_File):
    """A section that must be a mapping (a scalar there is a policy error naming the key, not a crash)."""

    @model_validator(mode="before")
    @classmethod
    def _is_dict(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _fail(f"must be a dict, got {type(value).__name__} {value!r}.")
        return value


class PolicyFile(_File):
    """policy.yaml"""

    version: Annotated[str | int | float, _typed(str, int, float)]


class PurposeSpec(_File):
    categories: Annotated[list, _typed(list)]
    gpc_denies: Annotated[bool, _flag(False)] = False
    privacy_request_types: Annotated[
        dict[str, Annotated[str, _one_of(DECISIONS)]],
        _mapping("must be a mapping request type -> granted|denied.", none_is_empty=True),
    ] = Field(default_factory=dict)

    @field_validator("categories")
    @classmethod
    def _category_names(cls, cats: list) -> list:
        if not cats or not all(isinstance(c, str) and c for c in cats):
            raise _fail("must be a non-empty list of category names.")
        return cats


class PurposesFile(_File):
    """purposes.yaml: purpose -> consent categories that grant it (+ GPC / privacy request handling)."""

    purposes: Annotated[dict[str, PurposeSpec], _typed(dict)]

    @model_validator(mode="after")
    def _required(self) -> PurposesFile:
        for p in REQUIRED_PURPOSES:
            if p not in self.purposes:
                raise _fail(f"missing (required purposes: {', '.join(REQUIRED_PURPOSES)}).", f"purposes.{p}")
        return self


class PurposeRuleSpec(_DictSpec):
    basis: Annotated[str, _one_of(BASES)] = Field(None, validate_default=True)
    no_record: Annotated[str, _one_of(NO_RECORD)] = Field(None, validate_default=True)


class MatchSpec(_File):
    countries: Annotated[list, _none_is([])] = Field(default_factory=list)
    regions: Annotated[list, _none_is([])] = Field(default_factory=list)


class JurisdictionSpec(_File):
    regulation: Any = ""
    match: Annotated[MatchSpec, _mapping("must be a mapping with countries/regions lists.", none_is_empty=True)] = Field(
        default_factory=MatchSpec
    )
    purposes: Annotated[dict[str, PurposeRuleSpec], _typed(dict)]

    @field_validator("purposes")
    @classmethod
    def _declared_purposes(cls, rules: dict[str, PurposeRuleSpec], info: ValidationInfo) -> dict[str, PurposeRuleSpec]:
        declared = (info.context or {}).get("purposes", REQUIRED_PURPOSES)
        for p in declared:
            if p not in rules:
                raise _fail("missing.", p)
            if p == "personalization" and rules[p].no_record != "deny":
                raise _fail(
                    "must be deny — the platform is fail-closed for personalization (no consent record = no processing).",
                    f"{p}.no_record",
                )
        for p in rules:
            if p not in declared:
                raise _fail("unknown purpose (declare it in purposes.yaml).", p)
        return rules


class JurisdictionsFile(_File):
    """jurisdictions.yaml: legal basis and no-record default per jurisdiction and purpose (context: purposes)."""

    jurisdictions: Annotated[dict[str, JurisdictionSpec], _typed(dict)]

    @model_validator(mode="after")
    def _default_and_unknown(self) -> JurisdictionsFile:
        if DEFAULT_JURISDICTION not in self.jurisdictions:
            raise _fail("missing (it applies when no other jurisdiction matches).", f"jurisdictions.{DEFAULT_JURISDICTION}")
        if UNKNOWN_JURISDICTION not in self.jurisdictions:
            raise _fail(
                "missing (it applies to a subject with no event location and no CRM country). Add "
                f"`{UNKNOWN_JURISDICTION}:` with `match: {{}}` and `no_record: deny` for every purpose (fail-closed); "
                "loosen a purpose there only explicitly.",
                f"jurisdictions.{UNKNOWN_JURISDICTION}",
            )
        for name in (DEFAULT_JURISDICTION, UNKNOWN_JURISDICTION):
            match = self.jurisdictions[name].match
            if match.countries or match.regions:
                raise _fail(
                    f"must be empty ({name} applies when no listed jurisdiction "
                    f"{'matches' if name == DEFAULT_JURISDICTION else 'can be determined'}; list countries/regions under "
                    "a named jurisdiction).",
                    f"jurisdictions.{name}.match",
                )
        return self


class ColumnSpec(_File):
    class_: Annotated[str, _one_of(CLASSES)] = Field(None, alias="class", validate_default=True)
    action: Annotated[str, _one_of(ACTIONS)] = Field(None, validate_default=True)
    normalize: str | None = None
    output: Any = None
    detect_pii: Annotated[bool, _flag(True)] = False
    neutralize_formulas: Annotated[bool, _flag(True)] = False

    @model_validator(mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        # `class` present (as None) so that a missing class is reported under its YAML name, not `class_`
        return {"class": None, **value} if isinstance(value, dict) else {} if value is None else value

    @model_validator(mode="after")
    def _action_rules(self) -> ColumnSpec:
        if self.action == "pseudonymize" and self.normalize not in NORMALIZERS:
            raise _fail(f"{self.normalize!r} is not one of {', '.join(NORMALIZERS)}.", "normalize")
        if self.class_ == "direct_identifier" and self.action not in ("drop", "pseudonymize"):
            raise _fail(f"a direct identifier must be dropped or pseudonymized, not {self.action!r}.", "action")
        for flag in ("detect_pii", "neutralize_formulas"):
            if getattr(self, flag) and self.action not in TEXT_ACTIONS:
                raise _fail(
                    f"only applies to a column that is kept as text (action {' or '.join(TEXT_ACTIONS)}), not to action "
                    f"{self.action!r}.",
                    flag,
                )
        return self


class ClassificationFile(_File):
    """classification.yaml: class and action of every raw column (context: raw_models, the pandera raw models)."""

    sources: Annotated[
        dict[str, Annotated[dict[str, ColumnSpec], _mapping("must map column -> {class, action}.")]], _typed(dict)
    ]

    @model_validator(mode="after")
    def _matches_raw_models(self, info: ValidationInfo) -> ClassificationFile:
        for source, model in ((info.context or {}).get("raw_models") or {}).items():
            schema_cols = model.to_schema().columns
            listed = self.sources.get(source, {})
            missing, extra = sorted(set(schema_cols) - set(listed)), sorted(set(listed) - set(schema_cols))
            if missing:
                raise _fail(
                    f"column(s) {', '.join(missing)} of the raw table are not classified (every raw column needs a class "
                    "and an action, so a new field cannot leak by omission).",
                    f"sources.{source}",
                )
            if extra:
                raise _fail(f"column(s) {', '.join(extra)} do not exist in the raw table.", f"sources.{source}")
            for col, spec in listed.items():
                if (spec.detect_pii or spec.neutralize_formulas) and "str" not in str(schema_cols[col].dtype).lower():
                    flag = "detect_pii" if spec.detect_pii else "neutralize_formulas"
                    raise _fail(
                        f"the raw column is {schema_cols[col].dtype}, not text; remove the flag.", f"sources.{source}.{col}.{flag}"
                    )
        return self


class RetentionTierSpec(_File):
    days: Annotated[int, _typed(int)]
    # when S3's lifecycle rule expires the tier (>= days): the backstop of a tier the retention job enforces
    lifecycle_days: Annotated[int | None, _typed(int, type(None))] = None
    bucket: Annotated[str, _one_of(("landing", "lake", "ledger"))] = Field(None, validate_default=True)
    prefix: Any = ""
    object_lock: Annotated[str | None, _one_of(OBJECT_LOCK_MODES, optional=True)] = None
    # where S3 expires current objects by age, relative to `prefix` (infra/scripts/render_retention.py); None: all of it
    expire_prefixes: Annotated[list[str] | None, _typed(list, type(None))] = None

    @field_validator("expire_prefixes")
    @classmethod
    def _relative_prefixes(cls, prefixes: list[str] | None) -> list[str] | None:
        for p in prefixes or []:
            if not isinstance(p, str) or not p or p.startswith("/") or not p.endswith("/"):
                raise _fail(f"expected relative prefixes ending with '/' (e.g. events/), got {p!r}.")
        return prefixes

    @field_validator("days")
    @classmethod
    def _positive(cls, days: int) -> int:
        if days < 1:
            raise _fail(f"must be >= 1, got {days}.")
        return days

    @model_validator(mode="after")
    def _lifecycle_after_days(self) -> RetentionTierSpec:
        if self.lifecycle_days is not None and self.lifecycle_days < self.days:
            raise _fail(f"must be >= days ({self.days}): S3 would delete before the retention job, got {self.lifecycle_days}.",
                        "lifecycle_days")
        return self

    @model_validator(mode="after")
    def _lock_only_on_ledger(self) -> RetentionTierSpec:
        if (self.object_lock is not None) != (self.bucket == "ledger"):
            raise _fail(
                "only a tier of the `ledger` bucket (the Object Lock bucket) can be locked."
                if self.object_lock
                else "a tier of the `ledger` bucket must set object_lock (COMPLIANCE or GOVERNANCE).",
                "object_lock",
            )
        return self


class RetentionFile(_File):
    """retention.yaml: days per storage tier; the ledger tier is the Object Lock bucket."""

    tiers: Annotated[dict[str, RetentionTierSpec], _typed(dict)]

    @model_validator(mode="after")
    def _tiers(self) -> RetentionFile:
        if sum(t.bucket == "ledger" for t in self.tiers.values()) > 1:
            raise _fail(
                "at most one tier may live in the `ledger` bucket (its Object Lock default retention is bucket-wide).", "tiers"
            )
        for tier in ("raw", "consented", "features"):
            if tier not in self.tiers:
                raise _fail("missing.", f"tiers.{tier}")
        return self


def _hours(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _fail(
            "must be a number of hours >= 0 (e.g. 167 = at most one release of each export per 6 days 23 hours), "
            f"got {value!r}."
        )
    return value


class BudgetSpec(_DictSpec):
    total_epsilon: Annotated[float, _typed(int, float)]
    period: Annotated[str, _one_of(("month", "day", "year"))] = Field(None, validate_default=True)
    min_release_interval_hours: Annotated[float, BeforeValidator(_hours)] = 0.0

    @field_validator("total_epsilon")
    @classmethod
    def _positive(cls, total: float) -> float:
        if total <= 0:
            raise _fail("must be > 0.")
        return total


def _group_names(keys: Any) -> Any:
    keys = keys or []
    if not isinstance(keys, list) or not all(isinstance(x, str) for x in keys):
        raise _fail("must be a list of public group names.")
    return keys


class ReleaseSpec(_File):
    epsilon: Annotated[float, _typed(int, float)]
    max_contributions: Annotated[int, _typed(int)]
    keys: Annotated[list[str], BeforeValidator(_group_names)] = Field(default_factory=list)

    @field_validator("max_contributions")
    @classmethod
    def _at_least_one(cls, k: int) -> int:
        if k < 1:
            raise _fail("must be >= 1.")
        return k


class DifferentialPrivacyFile(_File):
    """differential_privacy.yaml: the epsilon budget per period and each release's share of it."""

    budget: BudgetSpec
    releases: Annotated[dict[str, ReleaseSpec], _typed(dict)]

    @model_validator(mode="after")
    def _within_budget(self) -> DifferentialPrivacyFile:
        total = self.budget.total_epsilon
        for name, release in self.releases.items():
            if release.epsilon <= 0 or release.epsilon > total:
                raise _fail(f"must be in (0, total_epsilon={total}], got {release.epsilon}.", f"releases.{name}.epsilon")
        return self


class AssetPurposesFile(_File):
    """asset_purposes.yaml: the purpose of every sensitive read (context: purposes)."""

    compliance_purposes: Annotated[list, _typed(list)]
    assets: Annotated[dict[str, Any], _typed(dict)]
    erasure_exempt: Annotated[list, _none_is([])] = Field(default_factory=list)
    sensitive_assets: Annotated[list, _none_is([])] = Field(default_factory=list)

    @model_validator(mode="after")
    def _purposes_and_audit(self, info: ValidationInfo) -> AssetPurposesFile:
        allowed = tuple(sorted(set((info.context or {}).get("purposes", REQUIRED_PURPOSES)) | set(self.compliance_purposes)))
        for asset, purpose in self.assets.items():
            if purpose not in allowed:
                raise _fail(f"{purpose!r} is not one of {', '.join(allowed)}.", f"assets.{asset}")
        if not self.sensitive_assets:
            raise _fail("missing or empty (at least raw/* must be audited).", "sensitive_assets")
        return self


FILE_MODELS: dict[str, type[_File]] = {
    "policy.yaml": PolicyFile,
    "purposes.yaml": PurposesFile,
    "jurisdictions.yaml": JurisdictionsFile,
    "classification.yaml": ClassificationFile,
    "retention.yaml": RetentionFile,
    "differential_privacy.yaml": DifferentialPrivacyFile,
    "asset_purposes.yaml": AssetPurposesFile,
}


def _policy_error(label: str, exc: ValidationError) -> PolicyError:
    """The first problem of the file, worded `<file>: <key path>: <problem>` (the hand parser's wording)."""
    err = exc.errors(include_url=False)[0]
    ctx = err.get("ctx") or {}
    where = ".".join([str(part) for part in err["loc"]] + ([ctx["where_suffix"]] if ctx.get("where_suffix") else []))
    value = err.get("input")
    if err["type"] == "policy":
        problem = ctx["msg"]
    elif err["type"] == "missing":
        problem = "missing."
    elif err["type"] in ("model_type", "model_attributes_type"):
        problem = "must be a mapping."
    elif err["type"] in ("list_type", "dict_type"):
        problem = f"must be a {err['type'][:-5]}, got {type(value).__name__} {value!r}."
    else:  # a pydantic check without our own wording: keep pydantic's
        problem = f"{err['msg']}, got {value!r}."
    return PolicyError(f"{label}: {where}: {problem}" if where else f"{label}: {problem}")


# the policy files whose content decides consent and what is kept of a record: part of the policy version
DECIDING_POLICY_FILES = ("policy.yaml", "purposes.yaml", "jurisdictions.yaml", "classification.yaml")


def _content_digest(directory: Path, names: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in names:
        path = directory / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    return h.hexdigest()[:12]


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

    def parse(self, name: str, context: dict | None = None) -> Any:
        label, data = self.load(name)
        try:
            return FILE_MODELS[name].model_validate(data, context=context or {})
        except ValidationError as exc:
            raise _policy_error(label, exc) from None


def load_policy(directory: Path | str | None = None, raw_models: dict | None = None) -> PrivacyPolicy:
    directory = Path(directory) if directory else policy_dir()
    r = _Reader(directory)

    # the declared version and a digest of the files that decide consent and pseudonymization: an edit nobody
    # declared still rebuilds the consent state and the consented tier, which key their state on it
    version = f"{r.parse('policy.yaml').version}+{_content_digest(directory, DECIDING_POLICY_FILES)}"
    purposes_file: PurposesFile = r.parse("purposes.yaml")
    purposes = {
        name: Purpose(name, tuple(c.lower() for c in spec.categories), spec.gpc_denies, dict(spec.privacy_request_types))
        for name, spec in purposes_file.purposes.items()
    }
    jurisdictions_file: JurisdictionsFile = r.parse("jurisdictions.yaml", {"purposes": tuple(purposes)})
    jurisdictions = {
        name: Jurisdiction(
            name=name,
            regulation=str(spec.regulation),
            countries=frozenset(str(c).upper() for c in spec.match.countries),
            regions=frozenset(str(c).upper() for c in spec.match.regions),
            rules={p: PurposeRule(spec.purposes[p].basis, spec.purposes[p].no_record) for p in purposes},
        )
        for name, spec in jurisdictions_file.jurisdictions.items()
    }
    classification: ClassificationFile = r.parse("classification.yaml", {"raw_models": raw_models})
    columns = {
        source: {
            col: ColumnPolicy(col, s.class_, s.action, s.normalize, str(s.output or col), s.detect_pii, s.neutralize_formulas)
            for col, s in cols.items()
        }
        for source, cols in classification.sources.items()
    }
    retention_file: RetentionFile = r.parse("retention.yaml")
    retention = {
        name: RetentionTier(name, str(t.prefix), t.bucket, t.days, t.object_lock) for name, t in retention_file.tiers.items()
    }
    dp: DifferentialPrivacyFile = r.parse("differential_privacy.yaml")
    releases = {name: DpRelease(name, rel.epsilon, rel.max_contributions, tuple(rel.keys)) for name, rel in dp.releases.items()}
    assets: AssetPurposesFile = r.parse("asset_purposes.yaml", {"purposes": tuple(purposes)})

    return PrivacyPolicy(
        version=version,
        purposes=purposes,
        jurisdictions=jurisdictions,
        columns=columns,
        retention=retention,
        dp_period=dp.budget.period,
        dp_total_epsilon=dp.budget.total_epsilon,
        dp_releases=releases,
        asset_purposes=dict(assets.assets),
        compliance_purposes=tuple(assets.compliance_purposes),
        erasure_exempt=tuple(assets.erasure_exempt),
        sensitive_assets=tuple(assets.sensitive_assets),
        directory=str(directory),
        dp_min_release_interval_hours=float(dp.budget.min_release_interval_hours),
    )


@lru_cache(maxsize=4)
def _cached(directory: str) -> PrivacyPolicy:
    from personalization_assets.core.tracking_plan import RawContent, RawCrmProfile, RawEvent, RawPrivacyRequest

    raw_models = {"events": RawEvent, "crm_profiles": RawCrmProfile, "content_catalog": RawContent, "privacy_requests": RawPrivacyRequest}
    return load_policy(Path(directory), raw_models=raw_models)


def get_policy() -> PrivacyPolicy:
    """The validated policy of the configured directory (cached per process)."""
    return _cached(str(policy_dir()))
