"""Access audit: every read of a sensitive asset appends a row to `privacy/access_audit_log`.

The reading asset must declare its purpose in privacy_policies/asset_purposes.yaml, and the purpose
must be one the policy allows; otherwise the read fails before any data is touched. The log is
append-only and hash-chained like the consent ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from personalization_assets.privacy.hash_chain import HashChainedLog
from personalization_assets.privacy.policies import PrivacyPolicy
from personalization_assets.resources.storage import LakeStorage

AUDIT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("read_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
        ("reader", pa.string()),
        ("asset", pa.string()),
        ("partition", pa.string()),
        ("columns", pa.string()),
        ("purpose", pa.string()),
        ("prev_hash", pa.string()),
        ("row_hash", pa.string()),
    ]
)


class UndeclaredPurposeError(PermissionError):
    pass


def audit_log(lake: LakeStorage, lock_dir: str | None) -> HashChainedLog:
    return HashChainedLog(lake=lake.log_store(), name="access_audit_log", schema=AUDIT_SCHEMA, lock_dir=lock_dir)


@dataclass
class AccessAuditor:
    lake: LakeStorage
    policy: PrivacyPolicy
    reader: str  # asset key of the reading asset, e.g. "consented/events"
    run_id: str
    lock_dir: str | None = None

    def purpose(self) -> str:
        purpose = self.policy.asset_purposes.get(self.reader)
        if purpose is None:
            raise UndeclaredPurposeError(
                f"{self.reader} reads sensitive data but declares no purpose. Fix: add `{self.reader}: <purpose>` "
                "under `assets:` in privacy_policies/asset_purposes.yaml."
            )
        if purpose not in self.policy.allowed_read_purposes():
            raise UndeclaredPurposeError(f"{self.reader} declares purpose {purpose!r}, which the policy does not allow.")
        return purpose

    def record(self, reads: list[tuple[str, str | None, list[str] | None]]) -> int:
        """Record reads [(asset, partition, columns)]; only sensitive assets are logged. Call BEFORE reading."""
        sensitive = [r for r in reads if self.policy.is_sensitive(r[0])]
        if not sensitive:
            return 0
        purpose = self.purpose()
        now = datetime.now(timezone.utc)
        rows = [
            {"read_at": now, "run_id": self.run_id, "reader": self.reader, "asset": asset, "partition": partition or "",
             "columns": ",".join(columns) if columns else "*", "purpose": purpose}
            for asset, partition, columns in sensitive
        ]
        n, _ = audit_log(self.lake, self.lock_dir).append(rows)
        return n
