"""Differentially private releases of aggregates that leave the platform, through OpenDP.

Privacy unit = one person. Each release declares how many rows one person may contribute
(`max_contributions` in privacy_policies/differential_privacy.yaml); callers bound contributions per
person BEFORE the release (e.g. a person's top-K categories), which is a per-person transformation and
keeps the unit's sensitivity at K. Group keys (segment names, content categories) are public sets, so
the margin declares them invariant. Each release spends its ε from a per-period budget recorded in a
hash-chained ledger; a release that would exceed the remaining budget fails before touching the data.
Internal tables (e.g. segments/segment_sizes) stay exact and never leave the platform.

Releases are idempotent and the charge is atomic with the result. A release is identified by a
`release_id` = hash of (release name, ε, contribution bound, public keys, policy version, a fingerprint
of the exact input: the sorted per-key counts). `BudgetLedger.release` runs under the ledger's writer
lock: if the id is already in the ledger it returns the stored result and spends nothing (a rerun on
unchanged data, a retry after a crash); otherwise it checks the remaining budget, draws the noise and
appends ONE row holding both the ε charged and the released counts. A release period bounds the spend
whatever the input does: within `budget.min_release_interval_hours` of the previous release of the same
name, the previous release is returned (no spend), so a pipeline materialized every hour does not release
(and spend) every hour. There is no state in which ε was
spent without the release being stored, and two processes can never overspend (check and append under
one lock; the ledger refuses a release_id twice).
"""

from __future__ import annotations

import hashlib
import json
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import pyarrow as pa

from personalization_assets.core.hash_chain import HashChainedLog
from personalization_assets.core.policies import DpRelease, PrivacyPolicy
from personalization_assets.core.storage import LakeStorage

BUDGET_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("period", pa.string()),
        ("release", pa.string()),
        ("epsilon", pa.float64()),
        ("released_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
        ("release_id", pa.string()),  # idempotency key (see module docstring)
        ("release_payload", pa.string()),  # the released result, JSON: stored with the charge, in the same row
        ("prev_hash", pa.string()),
        ("row_hash", pa.string()),
    ]
)


class DpBudgetExceeded(RuntimeError):
    pass


PERIOD_FORMATS = {"month": "%Y-%m", "day": "%Y-%m-%d", "year": "%Y"}


def period_of(policy: PrivacyPolicy, when: datetime) -> str:
    return when.strftime(PERIOD_FORMATS[policy.dp_period])


def release_id(release: DpRelease, policy: PrivacyPolicy, key_name: str, values: list[str] | pa.Array) -> str:
    """Identity of a release: its parameters and a fingerprint of the exact input (sorted per-key counts,
    computed column-wise). Same data + same parameters = same id = the stored release, no new spend."""
    import pyarrow.compute as pc

    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
    counts = pc.value_counts(arr).flatten() if len(arr) else [pa.array([], pa.string()), pa.array([], pa.int64())]
    pairs = pa.table({"k": counts[0], "n": counts[1]}).sort_by("k")
    fingerprint = hashlib.sha256(json.dumps([pairs["k"].to_pylist(), pairs["n"].to_pylist()]).encode()).hexdigest()
    spec = {"release": release.name, "epsilon": release.epsilon, "max_contributions": release.max_contributions,
            "public_keys": sorted(release.keys), "key_name": key_name, "policy_version": policy.version, "input": fingerprint}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ReleaseOutcome:
    release_id: str
    payload: dict  # what `compute` returned when the release was first made
    released_at: datetime
    epsilon_spent: float  # 0 when the stored release was returned
    remaining: float  # budget left in the current period afterwards
    reused: bool


@dataclass
class BudgetLedger:
    log: HashChainedLog
    policy: PrivacyPolicy

    @classmethod
    def open(cls, lake: LakeStorage, policy: PrivacyPolicy, lock_dir: str | None) -> "BudgetLedger":
        return cls(HashChainedLog(lake=lake.log_store(), name="dp_budget_ledger", schema=BUDGET_SCHEMA, lock_dir=lock_dir, unique_key="release_id"), policy)

    def spent(self, period: str) -> float:
        import pyarrow.compute as pc

        table = self.log.read_all(["period", "epsilon"])
        return float(pc.sum(table.filter(pc.equal(table["period"], period))["epsilon"]).as_py() or 0.0)

    def remaining(self, period: str) -> float:
        return self.policy.dp_total_epsilon - self.spent(period)

    def stored(self, rid: str) -> dict | None:
        import pyarrow.compute as pc

        table = self.log.read_all(["release_id", "release_payload", "released_at", "epsilon"])
        hit = table.filter(pc.equal(table["release_id"], rid))
        return hit.to_pylist()[0] if hit.num_rows else None

    def recent(self, release_name: str, when: datetime) -> dict | None:
        """The latest stored release of `release_name` made less than the policy's min_release_interval_hours
        before `when` (its row: release_id, release_payload, released_at), or None when a new release is due."""
        import pyarrow.compute as pc

        hours = self.policy.dp_min_release_interval_hours
        if hours <= 0 or "release_payload" not in self.log.schema.names:
            return None
        table = self.log.read_all(["release", "release_id", "release_payload", "released_at"])
        table = table.filter(pc.and_(pc.equal(table["release"], release_name), pc.is_valid(table["release_payload"])))
        rows = [r for r in table.to_pylist() if "keys" in json.loads(r["release_payload"] or "{}")]  # one-off charges hold no result
        if not rows:
            return None
        latest = max(rows, key=lambda r: r["released_at"])
        return latest if when - latest["released_at"] < timedelta(hours=hours) else None

    def release(self, release: DpRelease, run_id: str, rid: str, compute: Callable[[], dict], when: datetime | None = None,
                gate: bool = True) -> ReleaseOutcome:
        """Return the stored release `rid`, or the latest release of the same name when it is more recent than the
        policy's min_release_interval_hours (whatever the input: the release period has not come round), or spend ε
        and store `compute()`'s result with the charge in one append. Budget check, noise and append happen under
        the ledger's writer lock."""
        when = when or datetime.now(timezone.utc)
        period = period_of(self.policy, when)
        with self.log.exclusive():
            status = self.log.verify()
            if not status.ok:
                raise DpBudgetExceeded(f"the DP budget ledger is corrupt ({status.problem}); refusing to release")
            previous = self.stored(rid) or (self.recent(release.name, when) if gate else None)
            if previous is not None:
                return ReleaseOutcome(previous["release_id"], json.loads(previous["release_payload"] or "{}"), previous["released_at"], 0.0,
                                      self.remaining(period), True)
            remaining = self.remaining(period)
            if release.epsilon > remaining + 1e-12:
                raise DpBudgetExceeded(
                    f"DP release '{release.name}' needs epsilon={release.epsilon} but only {remaining:.3f} of "
                    f"{self.policy.dp_total_epsilon} remains for {period} (privacy_policies/differential_privacy.yaml). "
                    "Wait for the next period or lower the release's epsilon."
                )
            payload = compute()
            self.log.append([{"period": period, "release": release.name, "epsilon": release.epsilon, "released_at": when, "run_id": run_id,
                              "release_id": rid, "release_payload": json.dumps(payload, sort_keys=True)}],
                            checked_through=status.rows)
            return ReleaseOutcome(rid, payload, when, release.epsilon, remaining - release.epsilon, False)

    def charge(self, release: DpRelease, run_id: str, when: datetime | None = None) -> float:
        """Spend ε for a one-off release with no stored result (always a new charge), or raise
        DpBudgetExceeded. Returns what remains afterwards."""
        return self.release(release, run_id, uuid.uuid4().hex, dict, when, gate=False).remaining


def dp_counts(keys: list[str], release: DpRelease, key_name: str):
    """Noisy count of rows per key (each person contributes at most `release.max_contributions` rows).

    Returns (polars DataFrame [key_name, count], noise scale, 95% accuracy bound)."""
    import opendp.prelude as dp
    import polars as pl

    dp.enable_features("contrib")
    lf = pl.LazyFrame({key_name: pl.Series(keys, dtype=pl.String)})
    ctx = dp.Context.compositor(
        data=lf,
        privacy_unit=dp.unit_of(contributions=release.max_contributions),
        privacy_loss=dp.loss_of(epsilon=release.epsilon),
        split_evenly_over=1,
        margins=[dp.polars.Margin(by=[key_name], invariant="keys")],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # OpenDP's signed-count default notice
        query = ctx.query().group_by(key_name).agg(dp.len().alias("count"))
        summary = query.summarize(alpha=0.05)
        released = query.release().collect().sort(key_name)
    return released, float(summary["scale"][0]), float(summary["accuracy"][0])
