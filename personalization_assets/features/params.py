"""Parameters of one feature build: the cutoff (`as_of`) and the tunable definitions.

`FeatureParams` is the plain, validated value the SQL functions take; `FeatureConfig` (in
`features/assets.py`) is the Dagster run config that produces it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

PURPOSE = "personalization"  # the purpose every feature is processed under


def latest_complete_hour(lake) -> datetime | None:
    """The end of the last complete landing hour: the start of the latest hour partition present in raw/events
    (the latest hour may still be receiving data). From the partition listing only (no data read). None when
    raw/events has no partition."""
    from personalization_assets.core.partitions import partition_key_for_path, partition_start

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


@dataclass(frozen=True)
class FeatureParams:
    as_of: datetime
    late_bound_days: int = 3
    max_links: int = 5
    session_gap_minutes: int = 30
    max_session_hours: int = 24
    rfm_window_days: int = 90
    half_life_days: float = 14.0

    def __post_init__(self):
        object.__setattr__(self, "as_of", parse_as_of(self.as_of))
        for name, minimum in (("late_bound_days", 0), ("max_links", 1), ("session_gap_minutes", 1),
                              ("max_session_hours", 1), ("rfm_window_days", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}")
        if not float(self.half_life_days) > 0:
            raise ValueError(f"half_life_days={self.half_life_days!r}: must be > 0")
        object.__setattr__(self, "half_life_days", float(self.half_life_days))

    @property
    def as_of_sql(self) -> str:
        """The cutoff as a DuckDB TIMESTAMPTZ literal (microsecond precision)."""
        return f"TIMESTAMPTZ '{self.as_of.strftime('%Y-%m-%d %H:%M:%S.%f')}+00:00'"

    @property
    def as_of_us(self) -> int:
        """The cutoff in microseconds since the epoch (exact integer arithmetic in SQL)."""
        delta = self.as_of - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

    @property
    def as_of_iso(self) -> str:
        return self.as_of.isoformat()

    def metadata(self) -> dict:
        """The parameters as JSON-friendly values (recorded on every materialization)."""
        out = asdict(self)
        out["as_of"] = self.as_of_iso
        return out
