"""The single environment switch and every setting the platform reads.

All configuration comes from environment variables (12-factor). ``load_settings()`` validates
them when the Dagster definitions load, so a misconfiguration fails fast with a message that
names the setting and says how to fix it, instead of failing halfway through a run.

Secrets are NOT read here: they are passed to resources as ``dg.EnvVar`` so their values never
appear in code, logs, run config or asset metadata. This module only checks that they are set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from personalization_assets.core.errors import ConfigError
from personalization_assets.core.paths import PROJECT_ROOT

__all__ = ["ConfigError", "PROJECT_ROOT", "Settings", "load_settings", "validate_layout"]

ENVIRONMENTS = ("local", "prod")
EVENT_LAYOUTS = ("auto", "hive", "segment-s3", "rudderstack-s3")  # raw/layouts.py reads each one


@dataclass(frozen=True)
class SettingDoc:
    name: str
    default: str
    meaning: str
    prod: str


# The README's configuration table is generated from (and tested against) this list.
SETTINGS_DOC: tuple[SettingDoc, ...] = (
    SettingDoc("PERSONALIZATION_ENV", "local", "Environment switch: `local` or `prod`. Only resources differ.", "`prod`"),
    SettingDoc("PERSONALIZATION_DATA_DIR", "./.data", "Local data directory holding `landing/`, `lake/`, `warehouse.duckdb` and the dev pseudonymization key.", "unused (scratch space only)"),
    SettingDoc("PERSONALIZATION_LANDING_URL", "$DATA_DIR/landing", "Where CDP batches land (local path or `s3://bucket/prefix`).", "required, `s3://…`"),
    SettingDoc("PERSONALIZATION_LAKE_URL", "$DATA_DIR/lake", "Root of the Parquet lake (local path or `s3://bucket/prefix`).", "required, `s3://…`"),
    SettingDoc("PERSONALIZATION_LEDGER_URL", "the lake", "Where the append-only logs (consent ledger, access audit, erasure, retention, key rotation, DP budget) live: `s3://bucket/prefix` of a bucket with S3 Object Lock, or the lake.", "required, the Object Lock bucket from infra/terraform (`ledger_url` output)"),
    SettingDoc("PERSONALIZATION_LEDGER_OBJECT_LOCK", "none locally", "Object Lock mode of each log segment: `COMPLIANCE`, `GOVERNANCE` or `none` (needs an `s3://` ledger in a bucket created with Object Lock).", "`COMPLIANCE` (default; `none` is refused)"),
    SettingDoc("PERSONALIZATION_LEDGER_RETENTION_DAYS", "retention.yaml `privacy_logs`", "Days each log segment stays locked; at least the policy tier's days.", "same as the policy (2190)"),
    SettingDoc("PERSONALIZATION_SECRETS_ARNS", "(unset)", "Comma-separated AWS Secrets Manager ARNs read at load through dagster-aws: `ENV_NAME=arn` sets that variable to the secret string; a bare `arn` must hold a JSON object of variables (e.g. the Snowflake secret). Alternative to External Secrets Operator.", "optional (unset when ESO injects the env)"),
    SettingDoc("PERSONALIZATION_S3_ENDPOINT_URL", "(unset)", "Endpoint of an S3-compatible store (MinIO, moto, …).", "optional"),
    SettingDoc("AWS_REGION", "us-east-1", "Region of the landing and lake buckets.", "required"),
    SettingDoc("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY", "(unset)", "S3 credentials, read through `dg.EnvVar`; unset = the default AWS chain (IRSA role on EKS).", "optional (prefer IRSA)"),
    SettingDoc("PERSONALIZATION_PSEUDONYM_KEYS", "generated dev key", "JSON map `{\"<version>\": \"<hex key>\"}` of HMAC keys (secret).", "required (Secrets Manager)"),
    SettingDoc("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION", "highest version", "Key version used for new pseudonyms.", "required"),
    SettingDoc("PERSONALIZATION_EVENTS_START", "2025-01-01", "First hour of the `raw/events` partitions (UTC date).", "set to your first landing date"),
    SettingDoc("PERSONALIZATION_EVENTS_LAYOUT", "auto", "Which event layouts of the landing zone are read: `auto` (every layout found), `hive` (`events/date=…/hour=…/`, the collector and generator), `segment-s3` (`segment-logs/…`, Segment's S3 destination) or `rudderstack-s3` (`rudder-logs/…`). Objects of a layout not read are quarantined as `layout_disabled`; see docs/LANDING_CONTRACT.md.", "`auto`, or the one CDP layout you expect"),
    SettingDoc("PERSONALIZATION_MAX_LINE_BYTES", "32768", "Lines longer than this are quarantined (the CDPs' per-message limit).", "same"),
    SettingDoc("PERSONALIZATION_HORIZON_DAYS", "30", "Events whose time is more than this many days before their landing hour are quarantined.", "same"),
    SettingDoc("PERSONALIZATION_MAX_FUTURE_MINUTES", "1440", "Events whose time is more than this after their `receivedAt` are quarantined.", "same"),
    SettingDoc("PERSONALIZATION_DUCKDB_MEMORY_LIMIT", "2GB", "Memory limit of the DuckDB engine used for transforms; above it DuckDB spills to disk.", "size to the run pod"),
    SettingDoc("SNOWFLAKE_ACCOUNT / _USER / _PASSWORD / _ROLE / _WAREHOUSE / _DATABASE / _SCHEMA", "(unset)", "Snowflake connection for the warehouse layer (password is secret).", "required"),
    SettingDoc("SNOWFLAKE_HOST / SNOWFLAKE_PORT / SNOWFLAKE_PROTOCOL", "(unset)", "Override the Snowflake endpoint (tests point these at fakesnow).", "unset"),
    SettingDoc("SNOWFLAKE_LOAD_METHOD", "insert", "How feature tables reach Snowflake: `insert` (batched INSERT of bound JSON; works on Snowflake and the fakesnow server) or `stage` (write_pandas: PUT + COPY INTO, faster for very large tables, needs stages).", "`insert` (or `stage`)"),
    SettingDoc("PERSONALIZATION_POLICY_DIR", "./privacy_policies", "Directory of the privacy policy YAML files (validated at load).", "baked into the image"),
    SettingDoc("PERSONALIZATION_ALERT_WEBHOOK_URL", "(unset)", "Run-failure alerts are POSTed here as JSON.", "recommended"),
    SettingDoc("PROMETHEUS_PUSHGATEWAY_URL", "(unset)", "Push run metrics to this Pushgateway.", "recommended"),
    SettingDoc("PERSONALIZATION_COLLECTOR_WRITE_KEYS", "(unset)", "Collector: comma-separated write keys accepted as HTTP Basic user name (secret; `personalization collect` refuses to start without one).", "required for the collector (Secrets Manager)"),
    SettingDoc("PERSONALIZATION_COLLECTOR_STATE_DIR", "$DATA_DIR/collector", "Collector: directory of its durable messageId index and preference store (must survive restarts).", "a persistent volume"),
    SettingDoc("PERSONALIZATION_COLLECTOR_DEDUP_HOURS", "48", "Collector: how long a messageId is remembered, so an SDK retry within this time is never stored twice.", "same"),
    SettingDoc("PERSONALIZATION_COLLECTOR_LINGER_MS", "0", "Collector: how long a write waits for more requests to share its landing object (fewer, larger objects; adds latency).", "e.g. 200 under steady light traffic"),
    SettingDoc("PERSONALIZATION_COLLECTOR_CORS_ORIGINS", "*", "Collector: origins allowed to post to `/v1/*` from a browser (comma-separated).", "your sites' origins"),
    SettingDoc("DAGSTER_HOME", "./.dagster_home", "Dagster instance directory (sqlite storage locally).", "set by the Helm chart (Postgres storage)"),
)

SNOWFLAKE_REQUIRED = (
    "SNOWFLAKE_ACCOUNT",
    "SNOWFLAKE_USER",
    "SNOWFLAKE_PASSWORD",
    "SNOWFLAKE_ROLE",
    "SNOWFLAKE_WAREHOUSE",
    "SNOWFLAKE_DATABASE",
)


@dataclass(frozen=True)
class Settings:
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
    alert_webhook_url: str | None
    pushgateway_url: str | None
    has_static_aws_credentials: bool
    pseudonym_keys_from_env: bool
    ledger_url: str | None = None  # None = the logs live in the lake
    ledger_object_lock: str | None = None  # COMPLIANCE | GOVERNANCE | None
    ledger_retention_days: int = 0
    events_layout: str = "auto"  # auto | hive | segment-s3 | rudderstack-s3 (raw/layouts.py)
    secrets_from_aws: tuple[str, ...] = ()  # names of the variables loaded from Secrets Manager (never values)
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.env == "local"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def dbt_target(self) -> str:
        return self.env


def _int_setting(environ: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer. Fix: set {name} to a whole number (default {default}).") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}. Fix: set {name} >= {minimum}.")
    return value


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


def _ledger_settings(environ: Mapping[str, str], env: str, ledger_url: str) -> tuple[str | None, int]:
    """Object Lock mode and retention of the log segments, validated against the retention policy."""
    from personalization_assets.core.policies import get_policy

    raw = environ.get("PERSONALIZATION_LEDGER_OBJECT_LOCK", "").strip().upper()
    mode = raw or ("COMPLIANCE" if env == "prod" else "NONE")
    if mode not in ("COMPLIANCE", "GOVERNANCE", "NONE"):
        raise ConfigError(
            f"PERSONALIZATION_LEDGER_OBJECT_LOCK={raw!r} is unknown. Fix: set it to COMPLIANCE, GOVERNANCE or none."
        )
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
    days = _int_setting(environ, "PERSONALIZATION_LEDGER_RETENTION_DAYS", policy_days or 1)
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


def validate_layout(value: str) -> str:
    """The events layout setting, normalized; ValueError naming the setting and the allowed values."""
    name = "PERSONALIZATION_EVENTS_LAYOUT"
    v = (value or "").strip().lower() or "auto"
    if v not in EVENT_LAYOUTS:
        raise ValueError(f"{name}={value!r} is unknown. Fix: set {name} to one of {', '.join(EVENT_LAYOUTS)} (default auto).")
    return v


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate all settings. Raises ConfigError naming the bad setting and the fix."""
    environ = os.environ if environ is None else environ
    secrets_loaded: tuple[str, ...] = ()
    if (environ.get("PERSONALIZATION_SECRETS_ARNS") or "").strip():
        from personalization_assets.core.secrets import load_secrets

        environ, secrets_loaded = load_secrets(environ)
    env = environ.get("PERSONALIZATION_ENV", "local").strip().lower() or "local"
    if env not in ENVIRONMENTS:
        raise ConfigError(
            f"PERSONALIZATION_ENV={env!r} is unknown. Fix: set PERSONALIZATION_ENV to one of {', '.join(ENVIRONMENTS)}."
        )

    data_dir = Path(environ.get("PERSONALIZATION_DATA_DIR", "") or "./.data").expanduser().resolve()
    landing_url = environ.get("PERSONALIZATION_LANDING_URL", "").strip()
    lake_url = environ.get("PERSONALIZATION_LAKE_URL", "").strip()

    ledger_url = environ.get("PERSONALIZATION_LEDGER_URL", "").strip()
    if env == "prod":
        for name, value in (("PERSONALIZATION_LANDING_URL", landing_url), ("PERSONALIZATION_LAKE_URL", lake_url),
                            ("PERSONALIZATION_LEDGER_URL", ledger_url)):
            if not value:
                raise ConfigError(
                    f"{name} is not set. Fix: in prod set {name}=s3://<bucket>/<prefix> "
                    "(the buckets come from infra/terraform outputs)."
                )
            _check_s3_url(name, value)
        missing = [n for n in SNOWFLAKE_REQUIRED if not environ.get(n)]
        if missing:
            raise ConfigError(
                f"Snowflake setting(s) {', '.join(missing)} not set. Fix: export them (in production they come from AWS "
                "Secrets Manager: injected by External Secrets, or read via PERSONALIZATION_SECRETS_ARNS; see docs/DEPLOYMENT.md)."
            )
        if not environ.get("PERSONALIZATION_PSEUDONYM_KEYS"):
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
            local = Path(_normalize_local(value))
            _check_local_dir(name, local)
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
    ledger_object_lock, ledger_retention_days = _ledger_settings(environ, env, ledger_url or lake_url)

    has_key = bool(environ.get("AWS_ACCESS_KEY_ID"))
    has_secret = bool(environ.get("AWS_SECRET_ACCESS_KEY"))
    if has_key != has_secret:
        raise ConfigError(
            "Only one of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY is set. Fix: set both, or neither to use the "
            "default AWS credential chain (instance or IRSA role)."
        )

    events_start = environ.get("PERSONALIZATION_EVENTS_START", "").strip() or "2025-01-01"
    try:
        from datetime import date

        date.fromisoformat(events_start)
    except ValueError:
        raise ConfigError(
            f"PERSONALIZATION_EVENTS_START={events_start!r} is not a date. Fix: use YYYY-MM-DD (UTC)."
        ) from None

    try:
        events_layout = validate_layout(environ.get("PERSONALIZATION_EVENTS_LAYOUT", ""))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    keys_raw = environ.get("PERSONALIZATION_PSEUDONYM_KEYS", "")
    if keys_raw:
        # Validate the shape only; the values are read through dg.EnvVar by the key resource.
        from personalization_assets.core.pseudonym_keys import parse_key_map

        parse_key_map(keys_raw, environ.get("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION"))

    return Settings(
        env=env,
        data_dir=data_dir,
        landing_url=landing_url,
        lake_url=lake_url,
        s3_endpoint_url=environ.get("PERSONALIZATION_S3_ENDPOINT_URL") or None,
        aws_region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        events_start=events_start,
        events_layout=events_layout,
        max_line_bytes=_int_setting(environ, "PERSONALIZATION_MAX_LINE_BYTES", 32 * 1024, minimum=256),
        horizon_days=_int_setting(environ, "PERSONALIZATION_HORIZON_DAYS", 30),
        max_future_minutes=_int_setting(environ, "PERSONALIZATION_MAX_FUTURE_MINUTES", 24 * 60),
        duckdb_memory_limit=environ.get("PERSONALIZATION_DUCKDB_MEMORY_LIMIT", "").strip() or "2GB",
        alert_webhook_url=environ.get("PERSONALIZATION_ALERT_WEBHOOK_URL") or None,
        pushgateway_url=environ.get("PROMETHEUS_PUSHGATEWAY_URL") or None,
        has_static_aws_credentials=has_key and has_secret,
        pseudonym_keys_from_env=bool(keys_raw),
        ledger_url=ledger_url or None,
        ledger_object_lock=ledger_object_lock,
        ledger_retention_days=ledger_retention_days,
        secrets_from_aws=secrets_loaded,
    )
