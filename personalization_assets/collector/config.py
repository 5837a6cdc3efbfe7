"""The collector's settings, read from the environment and validated at start-up.

Two secrets, each read once, kept out of every repr and never logged: the write keys
(`PERSONALIZATION_COLLECTOR_WRITE_KEYS`; requests are logged by key *index*, not by key) and the preference
center's token secret (`PERSONALIZATION_PREFERENCE_TOKEN_SECRET`, optional: without it the center serves
anonymous visitors only). The pseudonymization keys (`PERSONALIZATION_PSEUDONYM_KEYS`, required in prod as for the
platform) key the preference center's store, which holds no raw identifier; the store reads the lake's suppression
list (`PERSONALIZATION_LAKE_URL`) and records that read in the access audit log (`PERSONALIZATION_LEDGER_URL`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from personalization_assets.settings import ConfigError, Settings, load_settings

WRITE_KEYS_ENV = "PERSONALIZATION_COLLECTOR_WRITE_KEYS"
STATE_DIR_ENV = "PERSONALIZATION_COLLECTOR_STATE_DIR"
DEDUP_HOURS_ENV = "PERSONALIZATION_COLLECTOR_DEDUP_HOURS"
CORS_ORIGINS_ENV = "PERSONALIZATION_COLLECTOR_CORS_ORIGINS"
LINGER_MS_ENV = "PERSONALIZATION_COLLECTOR_LINGER_MS"
ERASURE_POLL_ENV = "PERSONALIZATION_COLLECTOR_ERASURE_POLL_SECONDS"
PREFERENCE_TOKEN_SECRET_ENV = "PERSONALIZATION_PREFERENCE_TOKEN_SECRET"
MIN_TOKEN_SECRET_CHARS = 32
# Fault injection for the crash tests only (not a user setting):
# "kill_before_writes=N,kill_after_writes=N,clock_offset_s=S".
FAULTS_ENV = "_PERSONALIZATION_COLLECTOR_FAULTS"

# The CDPs' documented limits (Segment HTTP Tracking API; RudderStack uses the same figures).
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024


@dataclass(frozen=True)
class Faults:
    kill_before_writes: int = 0  # SIGKILL itself before the N-th object write (its intent already in the index)
    kill_after_writes: int = 0  # SIGKILL itself right after the N-th durable write, before answering
    clock_offset_s: float = 0.0  # pretend the clock is this far ahead (receivedAt and the hour folder)


@dataclass(frozen=True)
class LandingTarget:
    """Where the collector writes: the landing zone settings, and nothing else of the platform's."""

    url: str
    s3_endpoint_url: str | None
    aws_region: str
    data_dir: Path


@dataclass(frozen=True)
class CollectorConfig:
    landing: LandingTarget
    state_dir: Path
    dedup_hours: int
    cors_origins: tuple[str, ...]
    linger_ms: int
    write_keys: tuple[str, ...] = field(repr=False)
    faults: Faults = Faults()
    # HMAC key of the preference center's subject tokens (collector/auth.py); None: anonymous visitors only
    preference_token_secret: str | None = field(default=None, repr=False)
    # the lake, ledger and key settings of the preference center's store (None in unit tests of the tracking API only)
    platform: Settings | None = None
    erasure_poll_seconds: float = 60.0  # how often the store looks for a changed suppression list


def _parse_faults(raw: str) -> Faults:
    values = dict(part.split("=", 1) for part in raw.split(",") if "=" in part)
    return Faults(kill_before_writes=int(values.get("kill_before_writes", 0)), kill_after_writes=int(values.get("kill_after_writes", 0)),
                  clock_offset_s=float(values.get("clock_offset_s", 0)))


def _platform_settings(environ: Mapping[str, str]) -> Settings:
    """The platform's settings without the warehouse's: the landing zone it writes; the lake, the ledger and the
    pseudonymization keys for the preference center's store, which keeps no raw identifier and follows the
    suppression list (collector/preference_store.py). In prod each of them is required and named when missing."""
    return load_settings(environ, warehouse=False)


def load_collector_config(environ: Mapping[str, str] | None = None) -> CollectorConfig:
    """Validate the collector's settings; a ConfigError names the setting and the fix."""
    environ = os.environ if environ is None else environ
    platform = _platform_settings(environ)
    landing = LandingTarget(platform.landing_url, platform.s3_endpoint_url, platform.aws_region, platform.data_dir)
    keys = tuple(k.strip() for k in environ.get(WRITE_KEYS_ENV, "").split(",") if k.strip())
    if not keys:
        raise ConfigError(
            f"{WRITE_KEYS_ENV} is not set. Fix: set it to a comma-separated list of write keys (one per source; "
            "in production inject it from AWS Secrets Manager). SDKs send the key as the Basic-auth user name."
        )
    if any(len(k) < 8 or ":" in k for k in keys):
        raise ConfigError(
            f"{WRITE_KEYS_ENV} holds a key shorter than 8 characters or containing ':'. Fix: use long random keys "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)."
        )
    state_raw = environ.get(STATE_DIR_ENV, "").strip()
    state_dir = Path(state_raw).expanduser().resolve() if state_raw else landing.data_dir / "collector"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{STATE_DIR_ENV}={state_dir} cannot be created ({exc.strerror}). Fix: point it at a writable, "
                          "persistent directory (a volume that survives restarts).") from None
    dedup_raw = environ.get(DEDUP_HOURS_ENV, "").strip() or "48"
    try:
        dedup_hours = int(dedup_raw)
        if dedup_hours < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{DEDUP_HOURS_ENV}={dedup_raw!r} is not a whole number >= 1. Fix: set it to how many hours "
                          "SDK retries may arrive after the first attempt (default 48).") from None
    linger_raw = environ.get(LINGER_MS_ENV, "").strip() or "0"
    try:
        linger_ms = int(linger_raw)
        if not 0 <= linger_ms <= 5000:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{LINGER_MS_ENV}={linger_raw!r} is not a whole number of milliseconds in 0..5000. Fix: set it to how "
                          "long a write may wait for more requests to share its object (default 0).") from None
    token_secret = environ.get(PREFERENCE_TOKEN_SECRET_ENV, "").strip() or None
    if token_secret is not None and len(token_secret) < MIN_TOKEN_SECRET_CHARS:
        raise ConfigError(f"{PREFERENCE_TOKEN_SECRET_ENV} is shorter than {MIN_TOKEN_SECRET_CHARS} characters. Fix: use a long random "
                          "secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), shared only with the "
                          "backend that issues the subject tokens; or unset it to serve anonymous visitors only.")
    if token_secret is not None and token_secret in keys:
        raise ConfigError(f"{PREFERENCE_TOKEN_SECRET_ENV} equals a write key. Fix: use a separate secret: write keys are "
                          "public (analytics.js puts them in every page), so anyone could sign subject tokens with it.")
    poll_raw = environ.get(ERASURE_POLL_ENV, "").strip() or "60"
    try:
        erasure_poll = float(poll_raw)
        if not 1 <= erasure_poll <= 3600:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{ERASURE_POLL_ENV}={poll_raw!r} is not a number of seconds in 1..3600. Fix: set it to how often "
                          "the preference center checks the suppression list for erased subjects (default 60).") from None
    origins = tuple(o.strip() for o in (environ.get(CORS_ORIGINS_ENV, "").strip() or "*").split(",") if o.strip())
    try:
        faults = _parse_faults(environ.get(FAULTS_ENV, ""))
    except ValueError:
        raise ConfigError(f"{FAULTS_ENV} is malformed. Fix: unset it (it is for the crash tests only).") from None
    return CollectorConfig(landing=landing, state_dir=state_dir, dedup_hours=dedup_hours, cors_origins=origins,
                           linger_ms=linger_ms, write_keys=keys, faults=faults, preference_token_secret=token_secret,
                           platform=platform, erasure_poll_seconds=erasure_poll)
