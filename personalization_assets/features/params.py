"""Parameters of one feature build: the cutoff (`as_of`) and the tunable definitions.

`FeatureParams` is the plain, validated value the SQL functions take; `FeatureConfig` (in
`features/assets.py`) is the Dagster run config that produces it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from personalization_assets.core.as_of import parse_as_of, resolve_as_of  # noqa: F401 (the as_of rule the features build with)

PURPOSE = "personalization"  # the purpose every feature is processed under


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
