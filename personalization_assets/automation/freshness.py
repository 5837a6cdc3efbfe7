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


# ---------------------------------------------------------------------------------------------------------
# One freshness contract for Dagster and dbt: dbt's source freshness (dbt/models/staging/__sources.yml,
# source `features`, loaded_at_field `as_of`) is GENERATED from LAYER_DEFAULTS["features"] above, so the
# warehouse and the orchestrator call the same data stale at the same moment. Regenerate after editing:
#     python -m personalization_assets.automation.freshness
# (tests/warehouse/test_dbt_docs_and_contracts.py fails while the two disagree). The benchmark-only
# PERSONALIZATION_FRESHNESS_SCALE applies to Dagster's policies only.

DBT_SOURCES_YML = "dbt/models/staging/__sources.yml"
DBT_SOURCE_LAYER = {"features": "features"}  # dbt source name -> layer whose windows it uses
_BEGIN = "# freshness: generated from personalization_assets/automation/freshness.py (do not edit by hand)"


def dbt_source_freshness(source: str = "features") -> dict:
    """dbt's `freshness:` of a source, from the Dagster windows of its layer (minutes)."""
    fail, warn = LAYER_DEFAULTS[DBT_SOURCE_LAYER[source]]
    return {"warn_after": {"count": int(warn), "period": "minute"}, "error_after": {"count": int(fail), "period": "minute"}}


def render_dbt_freshness(source: str = "features", indent: int = 6) -> str:
    f = dbt_source_freshness(source)
    pad = " " * indent
    return (f"{pad}{_BEGIN}\n{pad}freshness:\n"
            f"{pad}  warn_after: {{count: {f['warn_after']['count']}, period: minute}}\n"
            f"{pad}  error_after: {{count: {f['error_after']['count']}, period: minute}}\n")


def sync_dbt_sources(path=None, write: bool = True) -> bool:
    """Rewrite the `freshness:` block of the `features` source; returns True when the file changed."""
    import re
    from pathlib import Path

    from personalization_assets.settings import PROJECT_ROOT

    p = Path(path) if path else PROJECT_ROOT / DBT_SOURCES_YML
    text = p.read_text(encoding="utf-8")
    pattern = re.compile(r"(?m)^(?P<indent>[ ]+)(?:# freshness: generated[^\n]*\n[ ]+)?freshness:\n(?:(?P=indent)[ ]{2}\w+_after:[^\n]*\n)+")
    match = pattern.search(text)
    if match is None:
        raise ValueError(f"{p}: no `freshness:` block under the features source. Fix: add one under `config:`.")
    new = text[: match.start()] + render_dbt_freshness("features", len(match.group("indent"))) + text[match.end():]
    if new != text and write:
        p.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    changed = sync_dbt_sources()
    print(f"{DBT_SOURCES_YML}: {'updated' if changed else 'already in sync'} with LAYER_DEFAULTS['features']")
