"""The cutoff (`as_of`) of a build: one rule for the features and consented/crm_profiles, so both judge consent
at the same instant."""

from __future__ import annotations

from datetime import UTC, datetime

from personalization_assets.core.partitions import partition_key_for_path, partition_start


def latest_complete_hour(lake) -> datetime | None:
    """The end of the last complete landing hour: the start of the latest hour partition present in raw/events
    (the latest hour may still be receiving data). From the partition listing only (no data read). None when
    raw/events has no partition."""
    keys = [pk for f in lake.partition_files("raw", "events") if (pk := partition_key_for_path(f.path))]
    return partition_start(max(keys)) if keys else None


def resolve_as_of(value: str | datetime | None, lake, log=None) -> tuple[datetime, str]:
    """The cutoff of a build and where it came from: an explicit value (run config, CLI `--as-of`) wins; else
    the end of the last complete landing hour (`latest_complete_hour`), so two runs over the same landing give
    the same result; else (raw/events is empty) now, truncated to the second, with a warning."""
    if value not in (None, ""):
        return parse_as_of(value), "explicit"
    latest = latest_complete_hour(lake)
    if latest is not None:
        return latest, "latest_raw_hour_start"
    if log is not None:
        log.warning("as_of: raw/events has no partition to derive the cutoff from; using now (pass as_of to fix it)")
    return parse_as_of(None), "now_no_raw_partitions"


def parse_as_of(value: str | datetime | None, now: datetime | None = None) -> datetime:
    """The cutoff as an aware UTC datetime.

    None -> now (UTC) truncated to the second. A string is ISO 8601; without an offset it is read as
    UTC. An offset is converted to UTC.
    """
    if value is None or value == "":
        now = now or datetime.now(UTC)
        return now.astimezone(UTC).replace(microsecond=0)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"as_of={value!r} is not an ISO 8601 timestamp (e.g. 2026-11-28T00:00:00Z)") from None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
