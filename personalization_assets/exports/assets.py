"""Exported aggregates (group `exports`): released through OpenDP, never exact.

* `exports/segment_sizes_dp` — people per RFM segment (a person is in one segment: 1 contribution).
* `exports/content_popularity_dp` — people per content category, each person counted for their top-K
  categories by affinity (K = max_contributions; the bound is applied per person before the release).

Group keys are public sets (segment names from the policy, categories from the public catalog).
Each release spends its ε from the monthly budget (privacy/dp.py) once per distinct input and at most once
per release period (budget.min_release_interval_hours): a rerun on unchanged data, or any run within the
period of the previous release, rewrites the stored release and spends nothing (without reading the input); the internal, exact
`segments/segment_sizes` never leaves the platform.
"""

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from personalization_assets.core.asset_keys import (
    CONSENTED_CATALOG,
    CONTENT_AFFINITY,
    CONTENT_POPULARITY_DP,
    SEGMENT_SIZES_DP,
    STALE_AFTER_METADATA,
    USER_SEGMENTS,
)
from personalization_assets.core.platform import lock_dir
from personalization_assets.privacy.dp import BudgetLedger, DpBudgetExceeded, ReleaseOutcome, dp_counts, period_of, release_id
from personalization_assets.core.policies import get_policy
from personalization_assets.resources import PlatformConfig
from personalization_assets.core.storage import LakeStorage
from personalization_assets.settings import Settings
from personalization_assets.warehouse.resources import SnowflakeWarehouse, query_warehouse

GROUP = "exports"
OWNERS = ["team:privacy-engineering"]
NO_SUBJECT_DATA = {"kind": "none", "reason": "differentially private aggregates: no subject-level rows"}


def release_counts(lake: LakeStorage, platform: PlatformConfig, run_id: str, release_name: str, keys: list[str], public_keys: list[str],
                   key_name: str, now: datetime | None = None):
    """Noisy counts per public key, spending ε once per distinct input (see privacy/dp.py): returns
    (ReleaseOutcome, rows dropped outside the public keys). Raises DpBudgetExceeded."""
    policy = get_policy()
    release = policy.dp_releases[release_name]
    public = set(public_keys)
    values = [k for k in keys if k in public]  # groups outside the public set are never released
    ledger = BudgetLedger.open(lake, policy, lock_dir(platform))
    rid = release_id(release, policy, key_name, values)

    def compute() -> dict:
        released, scale, accuracy = dp_counts(values, release, key_name)
        return {"keys": released[key_name].to_list(), "dp_counts": [int(c) for c in released["count"].to_list()],
                "noise_scale": scale, "accuracy_95": accuracy,
                # the parameters it was made with: a release kept through its release period is written as made
                "epsilon": release.epsilon, "max_contributions": release.max_contributions}

    return ledger.release(release, run_id, rid, compute, now or datetime.now(timezone.utc)), len(keys) - len(values)


def _release(context, lake: LakeStorage, platform: PlatformConfig, release_name: str,
             read_inputs: Callable[[], tuple[list[str], list[str]]], key_name: str):
    """Release `read_inputs()` = (keys, public keys), unless the release period has not come round: within
    budget.min_release_interval_hours of the previous release of this name, the stored release is rewritten as
    is (no spend) and the inputs are not even read."""
    policy = get_policy()
    release = policy.dp_releases[release_name]
    now = datetime.now(timezone.utc)
    ledger = BudgetLedger.open(lake, policy, lock_dir(platform))
    recent = ledger.recent(release_name, now)
    dropped = None
    if recent is not None:
        outcome = ReleaseOutcome(recent["release_id"], json.loads(recent["release_payload"]), recent["released_at"], 0.0,
                                 ledger.remaining(period_of(policy, now)), True)
        context.log.info(f"{release_name}: released at {outcome.released_at.isoformat()}, less than "
                         f"{policy.dp_min_release_interval_hours:g} h ago (budget.min_release_interval_hours): "
                         "the stored release is kept, no budget spent")
    else:
        keys, public_keys = read_inputs()
        try:
            outcome, dropped = release_counts(lake, platform, context.run.run_id, release_name, keys, public_keys, key_name, now)
        except DpBudgetExceeded as exc:
            raise dg.Failure(str(exc), allow_retries=False) from None
    p = outcome.payload
    n = len(p["keys"])
    table = pa.table({
        key_name: pa.array(p["keys"], pa.string()),
        "dp_count": pa.array(p["dp_counts"], pa.int64()),
        "epsilon": pa.array([p.get("epsilon", release.epsilon)] * n, pa.float64()),
        "max_contributions": pa.array([p.get("max_contributions", release.max_contributions)] * n, pa.int64()),
        "noise_scale": pa.array([p["noise_scale"]] * n, pa.float64()),
        "accuracy_95": pa.array([p["accuracy_95"]] * n, pa.float64()),
        "released_at": pa.array([outcome.released_at] * n, pa.timestamp("us", tz="UTC")),
    })
    written = lake.write_table("exports", release_name + "_dp", table)
    next_due = outcome.released_at + timedelta(hours=policy.dp_min_release_interval_hours)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": n, "rows_written": n, "epsilon_spent": outcome.epsilon_spent, "noise_scale": p["noise_scale"],
        "accuracy_95": p["accuracy_95"], "budget_remaining": outcome.remaining, "budget_period": period_of(policy, now),
        "release_id": outcome.release_id, "reused_stored_release": outcome.reused,
        "release_period_open": recent is None, "next_release_not_before": next_due.isoformat(),
        # the stored release was kept without reading the inputs: due again when the period comes round
        **({} if recent is None else {STALE_AFTER_METADATA: next_due.isoformat()}),
        **({} if dropped is None else {"rows_dropped_outside_public_keys": dropped}), "path": written.path,
    })


def build_export_assets(settings: Settings) -> list:
    """The warehouse is read through the same resource keys everywhere (DuckDB file locally, Snowflake in prod)."""

    @dg.asset(
        key=SEGMENT_SIZES_DP,
        description="People per RFM segment, released with OpenDP (Laplace, ε from differential_privacy.yaml). Safe to share.",
        group_name=GROUP, owners=OWNERS, kinds={"parquet", "opendp"}, deps=[USER_SEGMENTS],
        metadata={"privacy/tier": "exports", "privacy/erasure": NO_SUBJECT_DATA},
        tags={"privacy/sensitivity": "public-dp"},
    )
    def segment_sizes_dp(context: dg.AssetExecutionContext, lake: LakeStorage, platform: PlatformConfig, snowflake: SnowflakeWarehouse):
        def read_inputs():
            rows = query_warehouse(settings, snowflake, "select rfm_segment from segments.user_segments")
            return [r[0] for r in rows], list(get_policy().dp_releases["segment_sizes"].keys)

        return _release(context, lake, platform, "segment_sizes", read_inputs, "segment_name")

    @dg.asset(
        key=CONTENT_POPULARITY_DP,
        description="People per content category (each person counted for at most K of their top categories), released with OpenDP.",
        group_name=GROUP, owners=OWNERS, kinds={"parquet", "opendp", "duckdb"},
        deps=[CONTENT_AFFINITY, CONSENTED_CATALOG],
        metadata={"privacy/tier": "exports", "privacy/erasure": NO_SUBJECT_DATA},
        tags={"privacy/sensitivity": "public-dp"},
    )
    def content_popularity_dp(context: dg.AssetExecutionContext, lake: LakeStorage, duckdb: DuckDBResource, platform: PlatformConfig):
        def read_inputs():
            k = get_policy().dp_releases["content_popularity"].max_contributions
            with duckdb.get_connection() as con:
                lake.register(con, "affinity", "features", "content_affinity", empty_schema=pa.schema([("person_id", pa.string()), ("category", pa.string()), ("affinity", pa.float64())]))
                lake.register(con, "catalog", "consented", "content_catalog", empty_schema=pa.schema([("category", pa.string())]))
                bounded = con.execute(
                    f"""select category from (
                            select category, row_number() over (partition by person_id order by affinity desc, category) as r
                            from affinity) where r <= {int(k)}"""
                ).fetchall()
                public = [r[0] for r in con.execute("select distinct category from catalog where category is not null").fetchall()]
            return [r[0] for r in bounded], public

        return _release(context, lake, platform, "content_popularity", read_inputs, "category")

    return [segment_sizes_dp, content_popularity_dp]
