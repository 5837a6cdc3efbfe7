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

import functools
import hashlib
import json
import math
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


@dataclass(frozen=True)
class CountMeasurement:
    """One OpenDP measurement for a grouped count release: built once per query shape (key column, ε, contribution
    bound) and applied to every release of that shape, whatever the number of groups. `scale` is the Laplace noise
    scale of every released count, `accuracy_95` its 95% accuracy bound, `privacy_loss` OpenDP's privacy map at the
    contribution bound (≤ ε)."""
    measurement: object  # opendp.mod.Measurement
    scale: float
    accuracy_95: float
    privacy_loss: float


def _count_plan(key_name: str):
    import polars as pl
    from opendp.extras.polars import dp_len

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # OpenDP's signed-count default notice
        return pl.LazyFrame(schema={key_name: pl.String}).group_by(key_name).agg(dp_len().alias("count"))


@functools.lru_cache(maxsize=64)
def count_measurement(key_name: str, epsilon: float, max_contributions: int) -> CountMeasurement:
    """The measurement `dp_counts` releases with: the same query, domain, privacy unit and loss as
    `dp.Context.compositor(data, unit_of(contributions=K), loss_of(epsilon=ε), split_evenly_over=1,
    margins=[Margin(by=[key], invariant="keys")]).query().group_by(key).agg(dp.len())`, whose `resolve()` binary-searches
    the noise scale (≈1,150 measurements built and checked, twice per release: once for `summarize`, once for
    `release`). Here the scale is solved once: the L1 sensitivity of a count vector over invariant keys is K, so
    start from K/ε and move by single floats to the smallest scale OpenDP's own privacy map accepts (the value the
    binary search converges to), i.e. a handful of measurements, then cached per (key column, ε, K)."""
    # the modules themselves, not `opendp.prelude`: the prelude imports every extra, scikit-learn's included (about
    # 1.3 s of start-up in each process that releases, for nothing this module uses)
    import opendp.measurements
    import polars as pl
    from opendp.accuracy import summarize_polars_measurement
    from opendp.context import domain_of, loss_of, unit_of
    from opendp.domains import with_margin
    from opendp.extras.polars import Margin
    from opendp.mod import binary_search_param, enable_features

    enable_features("contrib")
    domain = domain_of(pl.LazyFrame(schema={key_name: pl.String}), infer=True)  # the structure only, never data
    domain = with_margin(domain, Margin(by=[key_name], invariant="keys"))
    metric, d_in = unit_of(contributions=max_contributions)
    measure, d_out = loss_of(epsilon=epsilon)
    plan = _count_plan(key_name)

    def make(scale: float):
        return opendp.measurements.make_private_lazyframe(input_domain=domain, input_metric=metric, output_measure=measure, lazyframe=plan,
                                           global_scale=scale)

    def private(scale: float) -> bool:
        return make(scale).check(d_in, d_out)

    scale = max_contributions / epsilon
    for _ in range(64):  # OpenDP rounds its map conservatively: K/ε may be a float or two short
        if private(scale):
            break
        scale = math.nextafter(scale, math.inf)
    else:  # not the map this module expects: let OpenDP search the scale (always correct, just slower)
        scale = binary_search_param(make, d_in, d_out, T=float)
    for _ in range(64):  # the smallest accepted float, as OpenDP's binary search finds it (no excess noise)
        lower = math.nextafter(scale, 0.0)
        if not private(lower):
            break
        scale = lower
    measurement = make(scale)
    if not measurement.check(d_in, d_out):  # never released without OpenDP's own check at the contribution bound
        raise RuntimeError(f"OpenDP refused the count measurement at scale {scale} for epsilon={epsilon}, contributions={max_contributions}")
    summary = summarize_polars_measurement(measurement, 0.05)
    return CountMeasurement(measurement, float(summary["scale"][0]), float(summary["accuracy"][0]), float(measurement.map(d_in)))


def dp_counts(keys: list[str] | pa.Array, release: DpRelease, key_name: str):
    """Noisy count of rows per key (each person contributes at most `release.max_contributions` rows): one OpenDP
    measurement (built once per query shape, see `count_measurement`) applied to the whole input, all groups at once.

    Returns (polars DataFrame [key_name, count], noise scale, 95% accuracy bound)."""
    import polars as pl

    m = count_measurement(key_name, float(release.epsilon), int(release.max_contributions))
    column = pl.from_arrow(keys) if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pl.Series(keys, dtype=pl.String)
    lf = pl.LazyFrame({key_name: column.cast(pl.String)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        released = m.measurement(lf).collect().sort(key_name)
    return released, m.scale, m.accuracy_95
