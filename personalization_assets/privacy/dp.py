"""Differentially private releases of aggregates that leave the platform, through OpenDP.

Privacy unit = one person. Each release declares how many rows one person may contribute
(`max_contributions` in privacy_policies/differential_privacy.yaml); callers bound contributions per
person BEFORE the release (e.g. a person's top-K categories), which is a per-person transformation and
keeps the unit's sensitivity at K. Group keys (segment names, content categories) are public sets, so
the margin declares them invariant. Each release spends its ε from a per-period budget recorded in a
hash-chained ledger; a release that would exceed the remaining budget fails before touching the data.
Internal tables (e.g. segments/segment_sizes) stay exact and never leave the platform.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from personalization_assets.privacy.hash_chain import HashChainedLog
from personalization_assets.privacy.policies import DpRelease, PrivacyPolicy
from personalization_assets.resources.storage import LakeStorage

BUDGET_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("period", pa.string()),
        ("release", pa.string()),
        ("epsilon", pa.float64()),
        ("released_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
        ("prev_hash", pa.string()),
        ("row_hash", pa.string()),
    ]
)


class DpBudgetExceeded(RuntimeError):
    pass


PERIOD_FORMATS = {"month": "%Y-%m", "day": "%Y-%m-%d", "year": "%Y"}


def period_of(policy: PrivacyPolicy, when: datetime) -> str:
    return when.strftime(PERIOD_FORMATS[policy.dp_period])


@dataclass
class BudgetLedger:
    log: HashChainedLog
    policy: PrivacyPolicy

    @classmethod
    def open(cls, lake: LakeStorage, policy: PrivacyPolicy, lock_dir: str | None) -> "BudgetLedger":
        return cls(HashChainedLog(lake=lake.log_store(), name="dp_budget_ledger", schema=BUDGET_SCHEMA, lock_dir=lock_dir), policy)

    def spent(self, period: str) -> float:
        table = self.log.read_all()
        return float(sum(r["epsilon"] for r in table.to_pylist() if r["period"] == period))

    def remaining(self, period: str) -> float:
        return self.policy.dp_total_epsilon - self.spent(period)

    def charge(self, release: DpRelease, run_id: str, when: datetime | None = None) -> float:
        """Reserve ε for a release, or raise DpBudgetExceeded. Returns what remains afterwards."""
        when = when or datetime.now(timezone.utc)
        period = period_of(self.policy, when)
        status = self.log.verify()
        if not status.ok:
            raise DpBudgetExceeded(f"the DP budget ledger is corrupt ({status.problem}); refusing to release")
        remaining = self.remaining(period)
        if release.epsilon > remaining + 1e-12:
            raise DpBudgetExceeded(
                f"DP release '{release.name}' needs epsilon={release.epsilon} but only {remaining:.3f} of "
                f"{self.policy.dp_total_epsilon} remains for {period} (privacy_policies/differential_privacy.yaml). "
                "Wait for the next period or lower the release's epsilon."
            )
        self.log.append([{"period": period, "release": release.name, "epsilon": release.epsilon, "released_at": when, "run_id": run_id}])
        return remaining - release.epsilon


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
