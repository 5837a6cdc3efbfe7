"""Hourly partitions of the event tables: the hour of each message's receivedAt.

Partition key ``2026-11-28-13:00`` <-> lake folder ``raw/events/date=2026-11-28/hour=13/`` (whatever landing
object or folder the message came in; see raw/ingest.py). ``end_offset=1`` makes the current hour a partition,
so data that lands now can be ingested now (and merged again as more objects arrive).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import dagster as dg

PARTITION_FMT = "%Y-%m-%d-%H:%M"
_LANDING_RE = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})(?:/|$)")


def events_partitions(start_date: str) -> dg.HourlyPartitionsDefinition:
    return dg.HourlyPartitionsDefinition(start_date=f"{start_date}-00:00", timezone="UTC", end_offset=1)


def partition_dict(partition_key: str) -> dict[str, str]:
    dt = datetime.strptime(partition_key, PARTITION_FMT)
    return {"date": dt.strftime("%Y-%m-%d"), "hour": dt.strftime("%H")}


def partition_start(partition_key: str) -> datetime:
    return datetime.strptime(partition_key, PARTITION_FMT).replace(tzinfo=timezone.utc)


def partition_key_for_path(path: str) -> str | None:
    """The partition key of a landing or lake path, or None if the path is not in a date/hour folder."""
    m = _LANDING_RE.search(path)
    if not m:
        return None
    return f"{m.group(1)}-{m.group(2)}:00"

