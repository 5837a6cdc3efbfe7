"""Resources, chosen by environment. Asset code sees the same resource keys everywhere:

| key | local | prod |
|---|---|---|
| `landing` | LandingZone on `$DATA_DIR/landing` | LandingZone on `s3://…` |
| `lake` | LakeStorage on `$DATA_DIR/lake` | LakeStorage on `s3://…` |
| `lake.log_store()` | the lake (append-only logs under `privacy/`) | the ledger bucket (`PERSONALIZATION_LEDGER_URL`), S3 Object Lock |
| `duckdb` | in-memory DuckDB engine (spills to `$DATA_DIR/tmp`) | same, in the run pod |
| `platform` | PlatformConfig (limits from settings) | same |
| `pseudonymizer` | dev key generated into `$DATA_DIR` | keys from `PERSONALIZATION_PSEUDONYM_KEYS` |
| `warehouse` / `dbt` | DuckDB file `warehouse.duckdb` | Snowflake |
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import dagster as dg
from dagster_duckdb import DuckDBResource

from personalization_assets.core.memory import release_freed_memory
from personalization_assets.core.platform import PlatformConfig, duckdb_limits
from personalization_assets.core.policies import get_policy
from personalization_assets.core.pseudonym_keys import DEV_KEY_FILE, DEV_KEY_WARNING, ensure_dev_keys
from personalization_assets.core.pseudonymize import Pseudonymizer
from personalization_assets.core.storage import LakeStorage, LandingZone
from personalization_assets.settings import Settings


def _s3_credentials(settings: Settings) -> dict:
    if settings.has_static_aws_credentials:
        return {
            "aws_access_key_id": dg.EnvVar("AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": dg.EnvVar("AWS_SECRET_ACCESS_KEY"),
        }
    return {}


class DuckDBEngine(DuckDBResource):
    """dagster-duckdb's resource with session defaults every transform relies on (UTC time zone)."""

    @contextmanager
    def get_connection(self):
        try:
            with super().get_connection() as con:
                # TimeZone needs the ICU extension, which is loaded only after connect
                con.execute("SET TimeZone = 'UTC'")
                yield con
        finally:
            # the connection's memory is freed now: give it back before the next step allocates elsewhere
            release_freed_memory()


def duckdb_engine(settings: Settings) -> DuckDBEngine:
    return DuckDBEngine(
        database=":memory:",
        connection_config={**duckdb_limits(settings.data_dir, settings.duckdb_memory_limit), "preserve_insertion_order": True},
    )


def build_resources(settings: Settings) -> dict:
    from personalization_assets.core import audit  # noqa: F401  registers the lake's audit sink (the lake refuses sensitive reads without it)

    creds = _s3_credentials(settings)
    common = {"s3_endpoint_url": settings.s3_endpoint_url, "aws_region": settings.aws_region, **creds}
    resources = {
        "landing": LandingZone(url=settings.landing_url, **common),
        "lake": LakeStorage(
            url=settings.lake_url,
            logs_url=settings.ledger_url,
            logs_object_lock_mode=settings.ledger_object_lock,
            logs_object_lock_days=settings.ledger_retention_days,
            sensitive_tables=list(get_policy().sensitive_assets),
            lock_dir=str(settings.data_dir / "locks"),
            **common,
        ),
        "duckdb": duckdb_engine(settings),
        "platform": PlatformConfig(
            env=settings.env,
            data_dir=str(settings.data_dir),
            max_line_bytes=settings.max_line_bytes,
            horizon_days=settings.horizon_days,
            max_future_minutes=settings.max_future_minutes,
            events_layout=settings.events_layout,
            landing_read_concurrency=settings.landing_read_concurrency,
            duckdb_memory_limit=settings.duckdb_memory_limit,
            log_recheck_segments=settings.log_recheck_segments,
        ),
    }
    resources["pseudonymizer"] = pseudonymizer(settings, lake=resources["lake"])
    return resources


def pseudonymizer(settings: Settings, lake: LakeStorage | None = None) -> Pseudonymizer:
    """`lake`: the lake the keys' pseudonyms are stored in, whose recorded key ids every key version is checked
    against (`pseudonymize.check_key_ids`)."""
    if settings.pseudonym_keys_from_env:
        return Pseudonymizer(
            keys_json=dg.EnvVar("PERSONALIZATION_PSEUDONYM_KEYS"),
            active_version=dg.EnvVar("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION") if settings.pseudonym_active_version_set else None,
            lake=lake,
        )
    # local only (prod requires the env var, see settings.load_settings)
    _, created = ensure_dev_keys(settings.data_dir)
    path = settings.data_dir / DEV_KEY_FILE
    if created:
        logging.getLogger("personalization").warning(DEV_KEY_WARNING.format(path=path))
    return Pseudonymizer(keys_file=str(path), lake=lake)
