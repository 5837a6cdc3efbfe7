"""Access audit: every read of a sensitive asset appends a row to `privacy/access_audit_log`.

The reading asset must declare its purpose in privacy_policies/asset_purposes.yaml, and the purpose
must be one the policy allows; otherwise the read fails before any data is touched. The log is
append-only and hash-chained like the consent ledger.

Audited by construction: the lake (`LakeStorage`) knows the sensitive tables and, during a run, audits
every read of one itself. An asset that knows its reads up front declares them in one append
(`AccessAuditor.record`, which also marks them as covered for the rest of the step); a read nobody
declared is recorded by the sink below, one row per read, before the data is touched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from personalization_assets.core.hash_chain import HashChainedLog
from personalization_assets.core.platform import PlatformConfig, lock_dir
from personalization_assets.core.policies import PrivacyPolicy, get_policy
from personalization_assets.core.storage import LakeStorage, declare_audited_partitions, declare_audited_reads, register_audit_sink

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

    def record(self, reads: list[tuple[str, str | None, list[str] | None]], declare: bool = True) -> int:
        """Record reads [(asset, partition, columns)]; only sensitive assets are logged. Call BEFORE reading.
        With `declare`, the step's later reads of those assets are covered by these rows (see module doc)."""
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
        if declare:
            declare_audited_reads({asset for asset, _, _ in sensitive})
        return n


_SINK_STATE = threading.local()


def record_partition_reads(lake: LakeStorage, partitions: list[tuple[str, str]]) -> int:
    """Record, in one append and before they happen, the current step's reads of these (asset, partition path)
    pairs (whole rows), and cover exactly those partitions for the rest of the step: a step that reads many
    partitions one by one (the ingestion's merge of the hours a batch touches) appends once instead of once per
    read. Outside a run nothing is audited, as for any read. Returns the rows appended."""
    import dagster as dg

    sensitive = [(a, p) for a, p in partitions if lake.is_sensitive(*a.split("/", 1))]
    try:
        context = dg.OpExecutionContext.get()
    except dg.DagsterInvariantViolationError:
        return 0
    if not sensitive:
        return 0
    n = _step_auditor(lake, context).record([(a, p, None) for a, p in sensitive], declare=False)
    declare_audited_partitions(sensitive)
    return n


def auditor(context, lake: LakeStorage, platform: PlatformConfig, reader) -> AccessAuditor:
    """The auditor of one step: `reader` is the reading asset's key."""
    return AccessAuditor(lake=lake, policy=get_policy(), reader=reader.to_user_string(), run_id=context.run.run_id, lock_dir=lock_dir(platform))


def _step_auditor(lake: LakeStorage, context) -> AccessAuditor:
    """The auditor of the running step when the lake records a read itself: the step's asset reads."""
    return AccessAuditor(lake=lake, policy=get_policy(), reader=reader_of(context), run_id=context.run.run_id, lock_dir=lake.lock_dir)


def reader_of(context) -> str:
    """The reading asset of a step: its asset key (for a multi-asset, the one that declares a purpose, else the
    first), or the checked asset for a check-only step."""
    policy = get_policy()
    keys = sorted(k.to_user_string() for k in context.assets_def.keys) if context.has_assets_def else []
    if not keys and context.has_assets_def:
        keys = sorted(k.asset_key.to_user_string() for k in context.assets_def.check_keys)
    declared = [k for k in keys if k in policy.asset_purposes]
    return (declared or keys or [str(context.op_handle)])[0]


def _audit_undeclared_read(lake: LakeStorage, asset: str, partition: str | None, columns: list[str] | None) -> None:
    """The lake's audit sink: a sensitive read the step did not declare is recorded here, before it happens."""
    import dagster as dg

    if getattr(_SINK_STATE, "active", False):  # the audit log's own reads are not audited
        return
    _SINK_STATE.active = True
    try:
        context = dg.OpExecutionContext.get()
        _step_auditor(lake, context).record([(asset, partition, columns)], declare=False)
    finally:
        _SINK_STATE.active = False


register_audit_sink(_audit_undeclared_read)
