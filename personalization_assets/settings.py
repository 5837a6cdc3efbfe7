"""The single environment switch and every setting the platform reads.

All configuration comes from environment variables (12-factor), declared once below as the fields of
`EnvSettings` (pydantic-settings): the variable name, type, default, validation and the documentation the
README's configuration table is generated from (`python -m personalization_assets.settings`).
``load_settings()`` validates them when the Dagster definitions load, so a misconfiguration fails fast with a
message that names the setting and says how to fix it, instead of failing halfway through a run.

Secrets are NOT read here: they are passed to resources as ``dg.EnvVar`` so their values never
appear in code, logs, run config or asset metadata. This module only checks that they are set (and, for the
pseudonym keys, their shape).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from personalization_assets.core.errors import ConfigError
from personalization_assets.core.paths import PROJECT_ROOT

__all__ = ["ConfigError", "PROJECT_ROOT", "EnvSettings", "Settings", "SETTINGS_DOC", "load_settings", "validate_layout"]

ENVIRONMENTS = ("local", "prod")
EVENT_LAYOUTS = ("auto", "hive", "segment-s3", "rudderstack-s3")  # raw/layouts.py reads each one
OBJECT_LOCK_MODES = ("COMPLIANCE", "GOVERNANCE", "NONE")
MAX_LANDING_READ_CONCURRENCY = 64

SNOWFLAKE_REQUIRED = (
    "SNOWFLAKE_ACCOUNT",
    "SNOWFLAKE_USER",
    "SNOWFLAKE_PASSWORD",
    "SNOWFLAKE_ROLE",
    "SNOWFLAKE_WAREHOUSE",
    "SNOWFLAKE_DATABASE",
)


@dataclass(frozen=True)
class SettingDoc:
    """One row of the README's configuration table."""

    name: str
    default: str
    meaning: str
    prod: str


def _doc(default: str, prod: str) -> dict:
    return {"readme_default": default, "readme_prod": prod}


def _int_value(name: str, raw: Any, default: int, minimum: int = 1) -> int:
    raw = "" if raw is None else str(raw).strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer. Fix: set {name} to a whole number (default {default}).") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}. Fix: set {name} >= {minimum}.")
    return value


def validate_layout(value: str) -> str:
    """The events layout setting, normalized; ValueError naming the setting and the allowed values."""
    name = "PERSONALIZATION_EVENTS_LAYOUT"
    v = (value or "").strip().lower() or "auto"
    if v not in EVENT_LAYOUTS:
        raise ValueError(f"{name}={value!r} is unknown. Fix: set {name} to one of {', '.join(EVENT_LAYOUTS)} (default auto).")
    return v


class _Environ(PydanticBaseSettingsSource):
    """The one settings source: the mapping `load_settings` was given (the process environment by default), read
    by each field's variable name. Never the process environment behind the caller's back, so a test or the
    Secrets Manager loader hands in exactly the variables that count."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field, field_name: str) -> tuple[Any, str, bool]:
        names = field.validation_alias.choices if isinstance(field.validation_alias, AliasChoices) else [field.validation_alias or field_name]
        for name in names:
            if self.environ.get(name):  # empty = unset, as everywhere in this module
                return self.environ[name], name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, info in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(info, name)
            if value is not None:
                values[name] = value
        return values


def resolve_data_dir(value: str | Path | None) -> Path:
    """`PERSONALIZATION_DATA_DIR` as every part reads it: `./.data` when unset, absolute (the same dir spelled
    differently is one dir)."""
    return Path(value or "./.data").expanduser().resolve()


class EnvSettings(BaseSettings):
    """Every environment variable this module reads, one field each: the variable (`validation_alias`), its
    default, parsing and per-variable validation (a ConfigError naming the variable and the fix), and its row of
    the README's configuration table (`description` + `json_schema_extra`). Checks across variables (what prod
    requires, directories, the ledger against the retention policy) are in `load_settings`."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", validate_default=True, populate_by_name=True)

    env: str = Field("local", validation_alias="PERSONALIZATION_ENV",
                     description="Environment switch: `local` or `prod`. Only resources differ.", json_schema_extra=_doc("local", "`prod`"))
    data_dir: Path = Field(Path("./.data"), validation_alias="PERSONALIZATION_DATA_DIR",
                           description="Local data directory holding `landing/`, `lake/`, `warehouse.duckdb` and the dev pseudonymization key.",
                           json_schema_extra=_doc("./.data", "unused (scratch space only)"))
    landing_url: str = Field("", validation_alias="PERSONALIZATION_LANDING_URL",
                             description="Where CDP batches land (local path or `s3://bucket/prefix`).",
                             json_schema_extra=_doc("$DATA_DIR/landing", "required, `s3://…`"))
    lake_url: str = Field("", validation_alias="PERSONALIZATION_LAKE_URL",
                          description="Root of the Parquet lake (local path or `s3://bucket/prefix`).",
                          json_schema_extra=_doc("$DATA_DIR/lake", "required, `s3://…`"))
    ledger_url: str = Field("", validation_alias="PERSONALIZATION_LEDGER_URL",
                            description="Where the append-only logs (consent ledger, access audit, erasure, retention, key rotation, DP budget) "
                            "live: `s3://bucket/prefix` of a bucket with S3 Object Lock, or the lake.",
                            json_schema_extra=_doc("the lake", "required, the Object Lock bucket (Terraform output `ledger_url`)"))
    ledger_object_lock: str = Field("", validation_alias="PERSONALIZATION_LEDGER_OBJECT_LOCK",
                                    description="Object Lock mode of each log segment: `COMPLIANCE`, `GOVERNANCE` or `none` (needs an `s3://` "
                                    "ledger in a bucket created with Object Lock).",
                                    json_schema_extra=_doc("none locally", "`COMPLIANCE` (default; `none` is refused)"))
    ledger_retention_days: str = Field("", validation_alias="PERSONALIZATION_LEDGER_RETENTION_DAYS",
                                              description="Days each log segment stays locked; at least the policy tier's days.",
                                              json_schema_extra=_doc("retention.yaml `privacy_logs`", "same as the policy (2190)"))
    secrets_arns: str = Field("", validation_alias="PERSONALIZATION_SECRETS_ARNS",
                              description="Comma-separated Secrets Manager ARNs read at load through dagster-aws: `ENV_NAME=arn` sets that "
                              "variable to the secret string; a bare `arn` must hold a JSON object of variables (the Snowflake secret). "
                              "Alternative to External Secrets Operator.",
                              json_schema_extra=_doc("(unset)", "optional (unset when ESO injects the env)"))
    s3_endpoint_url: str | None = Field(None, validation_alias="PERSONALIZATION_S3_ENDPOINT_URL",
                                        description="Endpoint of an S3-compatible store (MinIO, moto, …).", json_schema_extra=_doc("(unset)", "optional"))
    aws_region: str = Field("us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
                            description="Region of the landing and lake buckets.", json_schema_extra=_doc("us-east-1", "required"))
    aws_access_key_id_set: bool = Field(False, validation_alias="AWS_ACCESS_KEY_ID",
                                        description="S3 credentials, read through `dg.EnvVar`; unset = the default AWS chain (IRSA role on EKS).",
                                        json_schema_extra={**_doc("(unset)", "optional (prefer IRSA)"),
                                                           "readme_name": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"})
    aws_secret_access_key_set: bool = Field(False, validation_alias="AWS_SECRET_ACCESS_KEY", json_schema_extra={"readme": False})
    pseudonym_keys: str = Field("", validation_alias="PERSONALIZATION_PSEUDONYM_KEYS", repr=False,
                                description="JSON map `{\"<version>\": \"<hex key>\"}` of HMAC keys (secret, ≥ 32 bytes each). A version's key is "
                                "never replaced: the lake records each version's key id on first use and refuses another key under it; "
                                "to change keys, add a new version and run `rotate_pseudonym_keys`.",
                                json_schema_extra=_doc("generated dev key", "required (Secrets Manager)"))
    pseudonym_active_version: str | None = Field(None, validation_alias="PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION",
                                                 description="Key version used for new pseudonyms.",
                                                 json_schema_extra=_doc("highest version", "required"))
    events_start: str = Field("2025-01-01", validation_alias="PERSONALIZATION_EVENTS_START",
                              description="First hour of the `raw/events` partitions (UTC date); a message received before it is quarantined. Changed, the next ingestion reads the whole landing zone again.",
                              json_schema_extra=_doc("2025-01-01", "set to your first landing date"))
    events_layout: str = Field("auto", validation_alias="PERSONALIZATION_EVENTS_LAYOUT",
                               description="Which event layouts of the landing zone are read: `auto` (every layout found), `hive` "
                               "(`events/date=…/hour=…/`, the collector and generator), `segment-s3` (`segment-logs/…`, Segment's S3 "
                               "destination) or `rudderstack-s3` (`rudder-logs/…`). Objects of a layout not read are quarantined as "
                               "`layout_disabled`; see [docs/LANDING_CONTRACT.md](docs/LANDING_CONTRACT.md).",
                               json_schema_extra=_doc("auto", "`auto`, or the one CDP layout you expect"))
    max_line_bytes: int = Field(32 * 1024, validation_alias="PERSONALIZATION_MAX_LINE_BYTES",
                                description="Lines longer than this are quarantined (the CDPs' per-message limit).",
                                json_schema_extra=_doc("32768", "same"))
    landing_read_concurrency: int = Field(8, validation_alias="PERSONALIZATION_LANDING_READ_CONCURRENCY",
                                          description="Landing objects ingestion reads and decompresses at once (the next batch's while the "
                                          "current one is parsed); on S3 each read is a request whose latency this hides. 1 = one at a time.",
                                          json_schema_extra=_doc("8", "8; more for many small objects (collector flushes)"))
    horizon_days: int = Field(30, validation_alias="PERSONALIZATION_HORIZON_DAYS",
                              description="Events whose time is more than this many days before their landing hour are quarantined.",
                              json_schema_extra=_doc("30", "same"))
    max_future_minutes: int = Field(24 * 60, validation_alias="PERSONALIZATION_MAX_FUTURE_MINUTES",
                                    description="Events whose time is more than this after their `receivedAt` are quarantined.",
                                    json_schema_extra=_doc("1440", "same"))
    duckdb_memory_limit: str = Field("2GB", validation_alias="PERSONALIZATION_DUCKDB_MEMORY_LIMIT",
                                     description="Memory limit of the DuckDB engine used for transforms; above it DuckDB spills to disk.",
                                     json_schema_extra=_doc("2GB", "size to the run pod"))
    log_recheck_segments: int = Field(1000, ge=1, validation_alias="PERSONALIZATION_LOG_RECHECK_SEGMENTS",
                                      description="Older segments of the consent ledger and the audit log whose listing fingerprints each "
                                      "verification compares with its checkpoint, in turn: an edited or removed segment is found within "
                                      "ceil(segments / this) runs (`--full-refresh`: at once).",
                                      json_schema_extra=_doc("1000", "same (one S3 list request)"))
    alert_webhook_url: str | None = Field(None, validation_alias="PERSONALIZATION_ALERT_WEBHOOK_URL",
                                          description="Run-failure alerts are POSTed here as JSON.", json_schema_extra=_doc("(unset)", "recommended"))
    pushgateway_url: str | None = Field(None, validation_alias="PROMETHEUS_PUSHGATEWAY_URL",
                                        description="Push run metrics to this Pushgateway.", json_schema_extra=_doc("(unset)", "recommended"))

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # `from_environ` passes the mapping as init values; nothing else is read
        return (init_settings,)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> EnvSettings:
        """Parse the variables of `environ`. Raises ConfigError naming the variable and the fix."""
        try:
            return cls(**_Environ(cls, environ)())
        except ValidationError as exc:
            raise _config_error(cls, exc) from None

    # ------------------------------------------------------------------ per-variable validation
    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v):
        env = (v or "").strip().lower() or "local"
        if env not in ENVIRONMENTS:
            raise ConfigError(f"PERSONALIZATION_ENV={env!r} is unknown. Fix: set PERSONALIZATION_ENV to one of {', '.join(ENVIRONMENTS)}.")
        return env

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir(cls, v):
        return resolve_data_dir(v)

    @field_validator("landing_url", "lake_url", "ledger_url", "ledger_retention_days", "secrets_arns", "duckdb_memory_limit", "events_start",
                     mode="before")
    @classmethod
    def _strip(cls, v, info):
        v = (v or "").strip()
        return v or EnvSettings.model_fields[info.field_name].default

    @field_validator("s3_endpoint_url", "alert_webhook_url", "pushgateway_url", "pseudonym_active_version", mode="before")
    @classmethod
    def _unset_if_empty(cls, v):
        return v or None

    @field_validator("aws_region", mode="before")
    @classmethod
    def _region(cls, v):
        return v or "us-east-1"

    @field_validator("aws_access_key_id_set", "aws_secret_access_key_set", mode="before")
    @classmethod
    def _is_set(cls, v):
        return bool(v)  # secrets: only whether they are set

    @field_validator("pseudonym_keys", mode="before")
    @classmethod
    def _keys(cls, v):
        return v or ""

    @field_validator("ledger_object_lock", mode="before")
    @classmethod
    def _lock_mode(cls, v):
        raw = (v or "").strip().upper()
        if raw and raw not in OBJECT_LOCK_MODES:
            raise ConfigError(f"PERSONALIZATION_LEDGER_OBJECT_LOCK={raw!r} is unknown. Fix: set it to COMPLIANCE, GOVERNANCE or none.")
        return raw

    @field_validator("events_start")
    @classmethod
    def _events_start(cls, v):
        try:
            date.fromisoformat(v)
        except ValueError:
            raise ConfigError(f"PERSONALIZATION_EVENTS_START={v!r} is not a date. Fix: use YYYY-MM-DD (UTC).") from None
        return v

    @field_validator("events_layout", mode="before")
    @classmethod
    def _layout(cls, v):
        try:
            return validate_layout(v or "")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @field_validator("max_line_bytes", mode="before")
    @classmethod
    def _max_line_bytes(cls, v):
        return _int_value("PERSONALIZATION_MAX_LINE_BYTES", v, 32 * 1024, minimum=256)

    @field_validator("landing_read_concurrency", mode="before")
    @classmethod
    def _landing_read_concurrency(cls, v):
        value = _int_value("PERSONALIZATION_LANDING_READ_CONCURRENCY", v, 8)
        if value > MAX_LANDING_READ_CONCURRENCY:
            raise ConfigError(f"PERSONALIZATION_LANDING_READ_CONCURRENCY={value} is above the maximum {MAX_LANDING_READ_CONCURRENCY} "
                              f"(each read holds a decompressed object in memory). Fix: set it between 1 and {MAX_LANDING_READ_CONCURRENCY}.")
        return value

    @field_validator("horizon_days", mode="before")
    @classmethod
    def _horizon_days(cls, v):
        return _int_value("PERSONALIZATION_HORIZON_DAYS", v, 30)

    @field_validator("max_future_minutes", mode="before")
    @classmethod
    def _max_future_minutes(cls, v):
        return _int_value("PERSONALIZATION_MAX_FUTURE_MINUTES", v, 24 * 60)


def _config_error(settings_cls: type[BaseSettings], exc: ValidationError) -> ConfigError:
    """The first error as a ConfigError: our validators' own message, else one naming the variable."""
    err = exc.errors()[0]
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, ConfigError):
        return original
    name = err["loc"][0] if err.get("loc") else "?"
    info = settings_cls.model_fields.get(str(name))
    if info is not None:
        alias = info.validation_alias
        name = alias.choices[0] if isinstance(alias, AliasChoices) else (alias or name)
    return ConfigError(f"{name}: {err['msg']}. Fix: set {name} as the README's configuration table describes.")


# Variables read elsewhere (by `dg.EnvVar` in a resource, the warehouse, the collector, the policy loader or
# Dagster itself): documented here so that the README's table lists every setting in one place.
OTHER_SETTINGS_DOC: tuple[SettingDoc, ...] = (
    SettingDoc("PERSONALIZATION_POLICY_DIR", "./privacy_policies", "Directory of the privacy policy YAML files (validated at load).", "baked into the image"),
    SettingDoc("PERSONALIZATION_ANOMALY_CONFIG", "(packaged anomalies.yaml)", "Thresholds, severities and blocking of the data-anomaly checks: a copy of `personalization_assets/checks/anomalies.yaml` to tune them without editing the package (validated at load).", "same, or your tuned copy"),
    SettingDoc("SNOWFLAKE_ACCOUNT / _USER / _PASSWORD / _ROLE / _WAREHOUSE / _DATABASE / _SCHEMA", "(unset)", "Snowflake connection for the warehouse layer (password is secret).", "required"),
    SettingDoc("SNOWFLAKE_HOST / SNOWFLAKE_PORT / SNOWFLAKE_PROTOCOL", "(unset)", "Override the Snowflake endpoint (tests point these at fakesnow).", "unset"),
    SettingDoc("SNOWFLAKE_LOAD_METHOD", "insert", "How feature tables reach Snowflake: `insert` (batched INSERT of bound JSON; works on Snowflake and the fakesnow server) or `stage` (write_pandas: PUT + COPY INTO, faster for very large tables, needs stages).", "`insert` (or `stage`)"),
)
TRAILING_SETTINGS_DOC: tuple[SettingDoc, ...] = (
    SettingDoc("PERSONALIZATION_COLLECTOR_WRITE_KEYS", "(unset)", "Collector: comma-separated write keys accepted as HTTP Basic user name (secret; `personalization collect` refuses to start without one).", "required for the collector (Secrets Manager)"),
    SettingDoc("PERSONALIZATION_COLLECTOR_STATE_DIR", "$DATA_DIR/collector", "Collector: directory of its durable messageId index and preference store (must survive restarts).", "a persistent volume"),
    SettingDoc("PERSONALIZATION_COLLECTOR_DEDUP_HOURS", "48", "Collector: how long a messageId is remembered, so an SDK retry within this time is never stored twice.", "same"),
    SettingDoc("PERSONALIZATION_COLLECTOR_ERASURE_POLL_SECONDS", "60", "Collector: how often the preference center's store looks for a changed suppression list and forgets the erased subjects on it (it also does at start).", "same"),
    SettingDoc("PERSONALIZATION_COLLECTOR_LINGER_MS", "0", "Collector: how long a write waits for more requests to share its landing object (fewer, larger objects; adds latency).", "e.g. 200 under steady light traffic"),
    SettingDoc("PERSONALIZATION_COLLECTOR_CORS_ORIGINS", "*", "Collector: origins allowed to post to `/v1/*` from a browser (comma-separated).", "your sites' origins"),
    SettingDoc("PERSONALIZATION_PREFERENCE_TOKEN_SECRET", "(unset)", "Preference center: HS256 key (secret, at least 32 characters, not a write key) verifying the signed subject tokens (JWTs) your backend issues for a logged-in user (`issue_subject_token` in `personalization_assets/collector/auth.py`); unset, the center serves anonymous visitors only.", "required to serve logged-in users (Secrets Manager, shared with the issuing backend)"),
    SettingDoc("DAGSTER_HOME", "./.dagster_home", "Dagster instance directory (sqlite storage locally).", "set by the Helm chart (Postgres storage)"),
)


def _field_docs() -> list[SettingDoc]:
    docs = []
    for name, info in EnvSettings.model_fields.items():
        extra = info.json_schema_extra or {}
        if extra.get("readme") is False:
            continue
        alias = info.validation_alias
        var = alias.choices[0] if isinstance(alias, AliasChoices) else alias
        docs.append(SettingDoc(extra.get("readme_name", var), extra["readme_default"], info.description, extra["readme_prod"]))
    return docs


def _settings_doc() -> tuple[SettingDoc, ...]:
    fields = _field_docs()
    # the README's order: the policy directory and the Snowflake variables after the DuckDB limit
    at = next(i for i, d in enumerate(fields) if d.name == "PERSONALIZATION_DUCKDB_MEMORY_LIMIT") + 1
    return (*fields[:at], *OTHER_SETTINGS_DOC, *fields[at:], *TRAILING_SETTINGS_DOC)


# The README's configuration table is generated from this (`python -m personalization_assets.settings`) and a
# test checks that the README holds exactly that table.
SETTINGS_DOC: tuple[SettingDoc, ...] = _settings_doc()


def settings_table() -> str:
    """The README's configuration table (Markdown)."""
    rows = ["| Setting | Default (local) | Meaning | Production |", "|---|---|---|---|"]
    rows += [f"| `{d.name}` | {d.default} | {d.meaning} | {d.prod} |" for d in SETTINGS_DOC]
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class Settings:
    """The validated settings the definitions are built from."""

    env: str
    data_dir: Path
    landing_url: str
    lake_url: str
    s3_endpoint_url: str | None
    aws_region: str
    events_start: str
    max_line_bytes: int
    horizon_days: int
    max_future_minutes: int
    duckdb_memory_limit: str
    log_recheck_segments: int
    alert_webhook_url: str | None
    pushgateway_url: str | None
    has_static_aws_credentials: bool
    pseudonym_keys_from_env: bool
    ledger_url: str | None = None  # None = the logs live in the lake
    ledger_object_lock: str | None = None  # COMPLIANCE | GOVERNANCE | None
    ledger_retention_days: int = 0
    events_layout: str = "auto"  # auto | hive | segment-s3 | rudderstack-s3 (raw/layouts.py)
    landing_read_concurrency: int = 8  # landing objects read at once by ingestion (raw/ingest.py _Prefetch)
    secrets_from_aws: tuple[str, ...] = ()  # names of the variables loaded from Secrets Manager (never values)
    pseudonym_active_version_set: bool = False  # PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION is set (read by dg.EnvVar)
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.env == "local"

    @property
    def lake_kind(self) -> str:
        """Where the lake lives, as an asset kind: `s3` or `local`."""
        return "s3" if self.lake_url.startswith("s3://") else "local"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def dbt_target(self) -> str:
        return self.env


def _check_s3_url(name: str, url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(
            f"{name}={url!r} is not an S3 URL. Fix: in prod set {name} to s3://<bucket>/<prefix> "
            "(create the bucket with infra/terraform)."
        )


def _check_local_dir(name: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name} points to {path}, which is a file, not a directory. Fix: point {name} at a directory.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{name}={path} cannot be created ({exc.strerror}). Fix: point {name} at a writable directory.") from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={path} is not readable and writable by this user. Fix: chmod it or choose another directory.")


def _normalize_local(url: str) -> str:
    if url.startswith("file://"):
        url = url[len("file://") :]
    return str(Path(url).expanduser().resolve())


def _ledger_settings(raw: EnvSettings, ledger_url: str) -> tuple[str | None, int]:
    """Object Lock mode and retention of the log segments, validated against the retention policy."""
    from personalization_assets.core.policies import get_policy

    env = raw.env
    mode = raw.ledger_object_lock or ("COMPLIANCE" if env == "prod" else "NONE")
    if mode == "NONE":
        if env == "prod":
            raise ConfigError(
                "PERSONALIZATION_LEDGER_OBJECT_LOCK=none is refused in prod: the consent ledger and audit log must be "
                "immutable. Fix: unset it (COMPLIANCE) and point PERSONALIZATION_LEDGER_URL at the Object Lock bucket."
            )
        return None, 0
    if not ledger_url.startswith("s3://"):
        raise ConfigError(
            f"PERSONALIZATION_LEDGER_OBJECT_LOCK={mode} needs an S3 ledger, but the logs go to {ledger_url!r}. Fix: set "
            "PERSONALIZATION_LEDGER_URL=s3://<ledger-bucket>/<prefix> (a bucket created with Object Lock), or set "
            "PERSONALIZATION_LEDGER_OBJECT_LOCK=none locally."
        )
    tier = get_policy().ledger_tier
    policy_days = tier.days if tier else 0
    # parsed here: its default is the policy's days, and it counts only when the logs are locked
    days = _int_value("PERSONALIZATION_LEDGER_RETENTION_DAYS", raw.ledger_retention_days, policy_days or 1)
    if days < policy_days:
        raise ConfigError(
            f"PERSONALIZATION_LEDGER_RETENTION_DAYS={days} is shorter than the policy: privacy_policies/retention.yaml "
            f"tier {tier.name} keeps the logs {policy_days} days. Fix: unset it (the policy's days are the default) or "
            f"set it >= {policy_days}."
        )
    from personalization_assets.core.storage import MAX_OBJECT_LOCK_DAYS

    if days > MAX_OBJECT_LOCK_DAYS:
        raise ConfigError(
            f"PERSONALIZATION_LEDGER_RETENTION_DAYS={days} exceeds S3's maximum retention. Fix: set it <= {MAX_OBJECT_LOCK_DAYS}."
        )
    return mode, days


def load_settings(environ: Mapping[str, str] | None = None, warehouse: bool = True) -> Settings:
    """Read and validate all settings. Raises ConfigError naming the bad setting and the fix. `warehouse=False`: for a
    process that never reaches Snowflake (the collector), whose settings are then not required."""
    environ = os.environ if environ is None else environ
    secrets_loaded: tuple[str, ...] = ()
    if (environ.get("PERSONALIZATION_SECRETS_ARNS") or "").strip():
        from personalization_assets.core.secrets import load_secrets

        environ, secrets_loaded = load_secrets(environ)
    raw = EnvSettings.from_environ(environ)
    env, data_dir = raw.env, raw.data_dir
    landing_url, lake_url, ledger_url = raw.landing_url, raw.lake_url, raw.ledger_url

    if env == "prod":
        for name, value in (("PERSONALIZATION_LANDING_URL", landing_url), ("PERSONALIZATION_LAKE_URL", lake_url),
                            ("PERSONALIZATION_LEDGER_URL", ledger_url)):
            if not value:
                raise ConfigError(
                    f"{name} is not set. Fix: in prod set {name}=s3://<bucket>/<prefix> "
                    "(the buckets come from infra/terraform outputs)."
                )
            _check_s3_url(name, value)
        missing = [n for n in SNOWFLAKE_REQUIRED if not environ.get(n)] if warehouse else []
        if missing:
            raise ConfigError(
                f"Snowflake setting(s) {', '.join(missing)} not set. Fix: export them (in production they come from AWS "
                "Secrets Manager: injected by External Secrets, or read via PERSONALIZATION_SECRETS_ARNS; see docs/DEPLOYMENT.md)."
            )
        if not raw.pseudonym_keys:
            raise ConfigError(
                "PERSONALIZATION_PSEUDONYM_KEYS is not set. Fix: in prod inject the HMAC key map "
                '{"<version>": "<64 hex chars>"} from AWS Secrets Manager (External Secrets, or '
                "PERSONALIZATION_SECRETS_ARNS=PERSONALIZATION_PSEUDONYM_KEYS=<arn>); local mode generates a dev key instead."
            )
    else:
        _check_local_dir("PERSONALIZATION_DATA_DIR", data_dir)
        landing_url = landing_url or str(data_dir / "landing")
        lake_url = lake_url or str(data_dir / "lake")

    for name, value in (("PERSONALIZATION_LANDING_URL", landing_url), ("PERSONALIZATION_LAKE_URL", lake_url)):
        if value.startswith("s3://"):
            _check_s3_url(name, value)
        else:
            _check_local_dir(name, Path(_normalize_local(value)))
    if not landing_url.startswith("s3://"):
        landing_url = _normalize_local(landing_url)
    if not lake_url.startswith("s3://"):
        lake_url = _normalize_local(lake_url)
    if ledger_url:
        if ledger_url.startswith("s3://"):
            _check_s3_url("PERSONALIZATION_LEDGER_URL", ledger_url)
        else:
            ledger_url = _normalize_local(ledger_url)
            _check_local_dir("PERSONALIZATION_LEDGER_URL", Path(ledger_url))
        if ledger_url.rstrip("/") == lake_url.rstrip("/"):
            ledger_url = ""
    ledger_object_lock, ledger_retention_days = _ledger_settings(raw, ledger_url or lake_url)

    if raw.aws_access_key_id_set != raw.aws_secret_access_key_set:
        raise ConfigError(
            "Only one of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY is set. Fix: set both, or neither to use the "
            "default AWS credential chain (instance or IRSA role)."
        )

    if raw.pseudonym_keys:
        # Validate the shape only; the values are read through dg.EnvVar by the key resource.
        from personalization_assets.core.pseudonym_keys import parse_key_map

        parse_key_map(raw.pseudonym_keys, raw.pseudonym_active_version)

    return Settings(
        env=env,
        data_dir=data_dir,
        landing_url=landing_url,
        lake_url=lake_url,
        s3_endpoint_url=raw.s3_endpoint_url,
        aws_region=raw.aws_region,
        events_start=raw.events_start,
        events_layout=raw.events_layout,
        landing_read_concurrency=raw.landing_read_concurrency,
        max_line_bytes=raw.max_line_bytes,
        horizon_days=raw.horizon_days,
        max_future_minutes=raw.max_future_minutes,
        duckdb_memory_limit=raw.duckdb_memory_limit,
        log_recheck_segments=raw.log_recheck_segments,
        alert_webhook_url=raw.alert_webhook_url,
        pushgateway_url=raw.pushgateway_url,
        has_static_aws_credentials=raw.aws_access_key_id_set and raw.aws_secret_access_key_set,
        pseudonym_keys_from_env=bool(raw.pseudonym_keys),
        pseudonym_active_version_set=raw.pseudonym_active_version is not None,
        ledger_url=ledger_url or None,
        ledger_object_lock=ledger_object_lock,
        ledger_retention_days=ledger_retention_days,
        secrets_from_aws=secrets_loaded,
    )


if __name__ == "__main__":  # print the README's configuration table
    print(settings_table(), end="")
