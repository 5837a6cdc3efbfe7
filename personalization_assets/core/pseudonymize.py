"""Keyed, versioned pseudonyms: ``v<version>:<hex HMAC-SHA256>`` over a normalized identifier.

Only DISTINCT identifier values are hashed (a partition has far fewer identifiers than events); the
mapping is joined back in DuckDB. Keys chain across versions so that rotation keeps joins:

    d_1 = HMAC(K_1, normalize(value));  d_v = HMAC(K_v, d_{v-1});  pseudonym = "v<active>:" + hex(d_active)

Re-keying a table from version a to b applies HMAC(K_{a+1}) … HMAC(K_b) to the stored digests, giving
exactly what fresh data produces under version b — without the raw identifiers (which the raw tier
may already have deleted). Key versions must therefore never be removed from the key map; a leaked
old key alone cannot compute current pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from typing import Iterable, Optional

import dagster as dg
import pyarrow as pa
from pydantic import Field, PrivateAttr

from personalization_assets.core.pseudonym_keys import DEV_KEY_WARNING, parse_key_map

log = logging.getLogger(__name__)
PSEUDONYM_RE = re.compile(r"^v(\d+):([0-9a-f]{64})$")
_NON_DIGITS = re.compile(r"[^\d]")


def normalize(value: str | None, kind: str) -> str | None:
    """Canonical form of an identifier before hashing (None/blank -> None)."""
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    if kind == "email":
        return v.lower()
    if kind == "phone":
        # E.164-style: keep digits, '+' prefix; a leading international '00' means '+'.
        plus = v.startswith("+") or v.startswith("00")
        digits = _NON_DIGITS.sub("", v)
        if v.startswith("00"):
            digits = digits[2:]
        return ("+" if plus else "") + digits if digits else None
    if kind == "id":
        return v
    raise ValueError(f"unknown identifier kind {kind!r}")


class KeyChain:
    """The ordered key versions and the active one."""

    def __init__(self, keys: dict[str, bytes], active: str):
        self.keys = keys
        self.active = active
        self.versions = sorted((v for v in keys if int(v) <= int(active)), key=int)

    def digest(self, normalized: str) -> bytes:
        d = normalized.encode("utf-8")
        for v in self.versions:
            d = hmac.new(self.keys[v], d, hashlib.sha256).digest()
        return d

    def pseudonym(self, normalized: str) -> str:
        return f"v{self.active}:{self.digest(normalized).hex()}"

    def rekey(self, pseudonym: str, to_version: str | None = None) -> str:
        """Re-key an existing pseudonym to `to_version` (default: the active version)."""
        target = str(to_version or self.active)
        m = PSEUDONYM_RE.match(pseudonym)
        if not m:
            raise ValueError("not a pseudonym")
        src = m.group(1)
        if int(src) > int(target):
            raise ValueError(f"cannot re-key version {src} down to {target}")
        d = bytes.fromhex(m.group(2))
        for v in sorted((v for v in self.keys if int(src) < int(v) <= int(target)), key=int):
            d = hmac.new(self.keys[v], d, hashlib.sha256).digest()
        return f"v{target}:{d.hex()}"


class Pseudonymizer(dg.ConfigurableResource):
    """HMAC keys from the environment (`dg.EnvVar("PERSONALIZATION_PSEUDONYM_KEYS")`) or, locally, a dev key file."""

    keys_json: Optional[str] = Field(default=None, description="Key map JSON; pass dg.EnvVar, never a literal.")
    keys_file: Optional[str] = Field(default=None, description="Local dev only: file holding a generated key map.")
    active_version: Optional[str] = Field(default=None, description="Active key version (default: highest).")

    _chain: Optional[KeyChain] = PrivateAttr(default=None)

    def chain(self) -> KeyChain:
        if self._chain is None:
            if self.keys_json:
                raw = self.keys_json
            elif self.keys_file:
                with open(self.keys_file) as f:
                    raw = f.read()
                log.warning(DEV_KEY_WARNING.format(path=self.keys_file))
            else:
                raise dg.DagsterInvariantViolationError(
                    "No pseudonymization key: set PERSONALIZATION_PSEUDONYM_KEYS (see README, configuration)."
                )
            keys, active = parse_key_map(raw, self.active_version)
            self._chain = KeyChain(keys, active)
        return self._chain

    @property
    def is_dev_key(self) -> bool:
        return not self.keys_json

    def pseudonymize_values(self, values: Iterable[str | None], kind: str) -> list[str | None]:
        chain = self.chain()
        cache: dict[str, str | None] = {}
        out = []
        for v in values:
            if v not in cache:
                n = normalize(v, kind)
                cache[v] = None if n is None else chain.pseudonym(n)
            out.append(cache[v])
        return out



def rows_matching_pseudonyms(table: pa.Table, columns: dict[str, str], targets: set[str], pseudonymize) -> tuple[pa.Array, set[str]]:
    """Mask of rows whose raw identifier columns ({column: normalize kind}) pseudonymize into `targets`,
    and the raw values that matched. Only distinct values are hashed. Used by ingestion (suppression)
    and by the erasure run (raw tables); `pseudonymize(values, kind)` is a Pseudonymizer's method."""
    import pyarrow.compute as pc

    mask = pa.array([False] * table.num_rows, pa.bool_())
    matched: set[str] = set()
    if not targets:
        return mask, matched
    for col, kind in columns.items():
        if col not in table.column_names:
            continue
        distinct = pc.unique(table[col].combine_chunks().drop_null()).to_pylist()
        hits = {v for v, p in zip(distinct, pseudonymize(distinct, kind)) if p in targets}
        if hits:
            matched |= hits
            mask = pc.or_(mask, pc.fill_null(pc.is_in(table[col], value_set=pa.array(sorted(hits), pa.string())), False))
    return mask, matched
