"""Versioned HMAC keys for pseudonymization.

Keys come from the environment as a JSON map ``{"<version>": "<hex key>"}`` (at least 32 bytes each)
plus the active version. Pseudonyms are ``v<version>:<hex HMAC-SHA256>``, so a table can hold values
from several key versions during a rotation and every value says which key made it.

Locally, when no key is configured, a development key is generated once into the data directory and a
loud warning says it is not for production.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

MIN_KEY_BYTES = 32
DEV_KEY_FILE = "dev_pseudonym_keys.json"
DEV_KEY_WARNING = (
    "Using a DEVELOPMENT pseudonymization key generated into {path}. It is NOT for production: "
    "set PERSONALIZATION_PSEUDONYM_KEYS from your secret store (see docs/DEPLOYMENT.md)."
)


class KeyConfigError(ValueError):
    pass


def parse_key_map(raw: str, active: str | None = None) -> tuple[dict[str, bytes], str]:
    """Parse and validate the key map. Errors name the setting and never echo key material."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise KeyConfigError(
            'PERSONALIZATION_PSEUDONYM_KEYS is not valid JSON. Fix: set it to {"1": "<64 hex chars>"}.'
        ) from None
    if not isinstance(data, dict) or not data:
        raise KeyConfigError('PERSONALIZATION_PSEUDONYM_KEYS must be a non-empty JSON object. Fix: set it to {"<version>": "<hex key>"}.')
    keys: dict[str, bytes] = {}
    for version, hexkey in data.items():
        if not str(version).isdigit():
            raise KeyConfigError(f"PERSONALIZATION_PSEUDONYM_KEYS: version {version!r} must be a positive integer. Fix: use keys like \"1\", \"2\".")
        try:
            key = bytes.fromhex(str(hexkey))
        except ValueError:
            raise KeyConfigError(
                f"PERSONALIZATION_PSEUDONYM_KEYS: the key of version {version} is not hex. Fix: generate keys with `openssl rand -hex 32`."
            ) from None
        if len(key) < MIN_KEY_BYTES:
            raise KeyConfigError(
                f"PERSONALIZATION_PSEUDONYM_KEYS: the key of version {version} has {len(key)} bytes; "
                f"use at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`)."
            )
        keys[str(int(version))] = key
    if active in (None, ""):
        active = max(keys, key=int)
    active = str(active)
    if active not in keys:
        raise KeyConfigError(
            f"PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION={active} has no key in PERSONALIZATION_PSEUDONYM_KEYS "
            f"(versions: {', '.join(sorted(keys, key=int))}). Fix: add the key or set the active version to an existing one."
        )
    return keys, active


def ensure_dev_keys(data_dir: Path) -> tuple[str, bool]:
    """Return the dev key map JSON (creating it once). The bool says whether it was just created.

    Processes that start at once on a fresh data directory (test workers, two CLI runs) all end with the one key
    that won: the file is written whole under a private name and hard-linked into place, which either creates it
    complete or fails because another process's is there (then that one is read). Creating it in place with
    O_EXCL let the loser fail, or read it half written."""
    path = Path(data_dir) / DEV_KEY_FILE
    if path.exists():
        return path.read_text(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps({"1": secrets.token_hex(32)})
    tmp = path.with_name(f".{DEV_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_text(), False
    finally:
        os.unlink(tmp)
    return raw, True
