"""The cutoffs the retention run enforced (`privacy/retention_cutoffs`): per tier of privacy_policies/retention.yaml,
every hour wholly before the tier's cutoff is gone from it, for good.

The retention run records a tier's cutoff before it deletes anything, and a cutoff never moves back. What must not
bring such an hour back reads it: ingestion quarantines a message received in an hour before the raw cutoff as
`past_retention` (a late object, or a full refresh over a landing zone that keeps more than the raw tier), and
privacy/identity_links keeps the partials of raw hours the raw cutoff removed. Reading the recorded cutoff, not the
clock, keeps those decisions a function of the data: a lake retention never ran on ingests every hour it is given."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa

from personalization_assets.core.partitions import PARTITION_FMT

LAYER, TABLE = "privacy", "retention_cutoffs"
SCHEMA = pa.schema([("tier", pa.string()), ("cutoff", pa.timestamp("us", tz="UTC"))])


def hour_before(hour: datetime, cutoff: datetime | None) -> bool:
    """Whether the hour starting at `hour` (naive = UTC) lies wholly before `cutoff` (None: no cutoff, False)."""
    if cutoff is None:
        return False
    start = hour if hour.tzinfo else hour.replace(tzinfo=timezone.utc)
    return start + timedelta(hours=1) <= cutoff


def partition_before(part: dict, cutoff: datetime | None) -> bool:
    """`hour_before` of a partition {'date', 'hour'} (a daily one: hour 00)."""
    return hour_before(datetime.strptime(f"{part['date']}-{part.get('hour', '00')}:00", PARTITION_FMT), cutoff)


def read_cutoffs(lake) -> dict[str, datetime]:
    """{tier: the latest cutoff the retention run enforced}; {} before its first run."""
    if not lake.exists(LAYER, TABLE):
        return {}
    t = lake.read_table(LAYER, TABLE)
    return {tier: cutoff for tier, cutoff in zip(t["tier"].to_pylist(), t["cutoff"].to_pylist())}


def record_cutoffs(lake, cutoffs: dict[str, datetime]) -> dict[str, datetime]:
    """Record `cutoffs`, each kept only if later than the recorded one (a cutoff never moves back: a retention.yaml
    lengthened later cannot bring deleted hours back). Returns the cutoffs now recorded. A read-modify-write under the
    table's writer lock: two retention runs at once (a manual run beside the daily schedule) would each write back the
    table they read, and the second would drop a cutoff only the first recorded, or move one back."""
    from personalization_assets.core.hash_chain import table_writer_lock

    with table_writer_lock(lake, {"layer": LAYER, "name": TABLE}):
        merged = read_cutoffs(lake)
        for tier, cutoff in cutoffs.items():
            if tier not in merged or cutoff > merged[tier]:
                merged[tier] = cutoff
        tiers = sorted(merged)
        lake.write_table(LAYER, TABLE, pa.table({"tier": pa.array(tiers, pa.string()),
                                                 "cutoff": pa.array([merged[t] for t in tiers], pa.timestamp("us", tz="UTC"))}))
    return merged
