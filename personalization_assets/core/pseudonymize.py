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

from personalization_assets.core.pseudonym_keys import DEV_KEY_WARNING, KeyConfigError, parse_key_map
from personalization_assets.core.storage import LakeStorage

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
    lake: Optional[LakeStorage] = Field(default=None, description="The lake whose pseudonyms these keys make: each key "
                                        "version is checked against the key id the lake recorded for it (`check_key_ids`).")

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
            if self.lake is not None:
                check_key_ids(self.lake, keys, "PERSONALIZATION_PSEUDONYM_KEYS" if self.keys_json else f"the development key file {self.keys_file}")
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



KEY_IDS = ("privacy", "pseudonym_key_ids")  # version -> key id of the key that version's pseudonyms were made with
_KEY_ID_LABEL = b"personalization/pseudonym-key-id"
# (lake, version, key id) found recorded by this process: a recorded version's key id never changes (the table only
# gains versions), so each step of a run need not read it again (two requests per step on S3)
_VERIFIED: set[tuple[str, str, str]] = set()


def key_id(key: bytes) -> str:
    """A public name of a key (HMAC of a fixed label under it: says nothing of the key, tells two keys apart)."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def check_key_ids(lake: LakeStorage, keys: dict[str, bytes], source: str, record: bool = True) -> None:
    """Every key version must be the key the lake's pseudonyms of that version were made with. A key replaced under
    the same version (a secret rotated without a new version, another data dir's development key over the same lake)
    made pseudonyms that match nothing stored: the suppression list no longer caught an erased subject's new events,
    consent lookups missed. The first use of a version records its key id (`privacy/pseudonym_key_ids`); any other
    key under it is refused with the fix. `record=False` (a reader of the lake that writes none of it: the collector)
    refuses a wrong key and records nothing."""
    from personalization_assets.core.hash_chain import table_writer_lock

    ids = {v: key_id(k) for v, k in keys.items()}
    where = lake.uri(lake.table_dir(*KEY_IDS))
    if all((where, v, i) in _VERIFIED for v, i in ids.items()):
        return

    def recorded() -> dict[str, str]:
        if not lake.exists(*KEY_IDS):
            return {}
        t = lake.read_table(*KEY_IDS)
        return dict(zip(t["version"].to_pylist(), t["key_id"].to_pylist()))

    def refuse(known: dict[str, str]) -> None:
        wrong = sorted((v for v in ids if v in known and known[v] != ids[v]), key=int)
        if wrong:
            v = wrong[0]
            raise KeyConfigError(
                f"Pseudonymization key version {v} from {source} is not the key this lake's version-{v} pseudonyms were "
                f"made with (key id {ids[v]}; the lake recorded {known[v]} in {'/'.join(KEY_IDS)}). Fix: restore the "
                f"original key for version {v}; to change keys, add the new key under a new version, set "
                "PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION to it and run the rotate_pseudonym_keys job.")

    known = recorded()
    refuse(known)
    if not record:
        return
    if not set(ids) <= set(known):
        with table_writer_lock(lake, {"layer": KEY_IDS[0], "name": f"{KEY_IDS[1]}_writer"}):
            known = recorded()
            refuse(known)
            merged = {**{v: ids[v] for v in ids}, **known}
            versions = sorted(merged, key=int)
            lake.write_table(*KEY_IDS, pa.table({"version": pa.array(versions, pa.string()),
                                                 "key_id": pa.array([merged[v] for v in versions], pa.string())}))
    _VERIFIED.update((where, v, i) for v, i in ids.items())


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
