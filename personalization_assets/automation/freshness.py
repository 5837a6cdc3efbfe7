"""Freshness policies: defaults per layer in one place, overridable per asset and by environment.

| layer | fail after | warn after | why |
|---|---|---|---|
| consented | 15 min | 10 min | new landing hours should reach the consented tier within a few sensor ticks |
| features | 30 min | 20 min | the personalization engine reads features; half an hour of lag is the SLA |
| segments, warehouse | 60 min | 45 min | warehouse segments are rebuilt at most hourly (Snowflake cost) |
| exports | 7 days | 6 days 23 h | each DP release spends privacy budget: weekly keeps a month within ε = 4 |

`PERSONALIZATION_FRESHNESS_SCALE` (default 1.0) multiplies every window — the freshness-latency benchmark
uses a small scale so a settled pipeline is immediately "stale" and reacts to the next file at once.
"""

from __future__ import annotations

import os
from datetime import timedelta

import dagster as dg

# (fail_window, warn_window) in minutes per layer (the first element of the asset key)
LAYER_DEFAULTS: dict[str, tuple[float, float]] = {
    "consented": (15, 10),
    "features": (30, 20),
    "segments": (60, 45),
    "warehouse": (60, 45),  # the feature load and the dbt staging views move with the segments
    # DP exports spend privacy budget on every release: weekly (see differential_privacy.yaml)
    "exports": (7 * 24 * 60, 7 * 24 * 60 - 60),
}
# per-asset overrides, e.g. {"features/events_clean": (60, 45)}
OVERRIDES: dict[str, tuple[float, float]] = {
    "features/events_clean": (60, 45),  # a large table nobody serves from directly
}


def _scale() -> float:
    try:
        return float(os.environ.get("PERSONALIZATION_FRESHNESS_SCALE", "1") or 1)
    except ValueError:
        raise ValueError("PERSONALIZATION_FRESHNESS_SCALE must be a number. Fix: unset it or set e.g. 0.05.") from None


def windows_for(key: dg.AssetKey) -> tuple[float, float] | None:
    name = key.to_user_string()
    if name in OVERRIDES:
        return OVERRIDES[name]
    return LAYER_DEFAULTS.get(key.path[0])


def policy_for(key: dg.AssetKey) -> dg.FreshnessPolicy | None:
    w = windows_for(key)
    if w is None:
        return None
    scale = _scale()
    # Dagster's minimums: both windows >= 1 minute, warn < fail
    fail = max(timedelta(minutes=w[0] * scale), timedelta(minutes=2))
    warn = max(min(timedelta(minutes=w[1] * scale), fail - timedelta(minutes=1)), timedelta(minutes=1))
    return dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn)
