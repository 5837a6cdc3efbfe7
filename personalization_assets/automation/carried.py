"""What a landing run carries besides ingestion: the features, the warehouse load and the segments, when their
freshness policies say they are due.

Without this, new landing data reached the segments in two runs: the landing sensor's (ingestion, privacy state,
consented tier), then, one automation tick after it ended, the automation's (features → warehouse → segments) —
a second run launch (a process importing the definitions, ≈ 5 s here) and a wait for the automation tick
(≈ 6–8 s) between new data and fresh segments. When they are due, the landing run now takes them along.

"Due" is decided from the same policies (`automation/freshness.py`) the automation evaluates, the way Dagster's
time-window evaluator does: an asset is due when it was never materialized or its last materialization is older
than its warn window (`freshness_driven`: WARN or FAIL or missing). The rest of `freshness_driven` holds by
construction or is checked here:

* upstream has new data — a landing run carries a key only when one of its parents is written by the same run
  (the landing run's own assets, or a carried key); a warehouse model whose parents are not carried stays with
  the automation, as `freshness_driven` would leave it;
* nothing in progress — nothing is carried while any queued or running run may write a carried key (a run
  without an explicit asset selection counts as one);
* blocking checks — the carried keys' parents outside the carried set are all written by the same run, and a
  failed blocking check there skips everything downstream in that run;
* a step that cannot run a subset (the features step) is carried whole.

The exports (weekly, each release spends privacy budget) are never carried: their automation decides alone.
Nothing changes for the automation sensors: what the landing run did not carry, they request as before; what it
carried is fresh afterwards, so they do not request it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Mapping

import dagster as dg

from personalization_assets.automation import freshness

CARRIED_GROUPS = ("features", "warehouse", "segments")
# statuses of a run that may still write an asset
_LIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
         dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


@dataclass(frozen=True)
class Carried:
    """The carried keys in dependency order, each with its parents, the keys of its step (requested together) and
    its warn window in seconds (None: no policy, never due on its own)."""

    order: tuple[dg.AssetKey, ...]
    parents: Mapping[dg.AssetKey, frozenset[dg.AssetKey]]
    step: Mapping[dg.AssetKey, frozenset[dg.AssetKey]]
    warn_seconds: Mapping[dg.AssetKey, float | None]

    @property
    def keys(self) -> frozenset[dg.AssetKey]:
        return frozenset(self.order)

    def due(self, instance: dg.DagsterInstance, written: Iterable[dg.AssetKey], now: float | None = None) -> list[dg.AssetKey]:
        """The keys a run writing `written` should carry, in dependency order ([] while another run may write one)."""
        if not self.order or _live_run_touches(instance, self.keys):
            return []
        now = time.time() if now is None else now
        records = {r.asset_entry.asset_key: r.asset_entry for r in instance.get_asset_records(list(self.order))}
        fed, carried = set(written), set()
        for key in self.order:
            if key in carried or not (self.parents[key] & fed):
                continue
            entry = records.get(key)
            last = entry.last_materialization if entry is not None else None
            warn = self.warn_seconds[key]
            if last is None or (warn is not None and now - last.timestamp >= warn):
                carried |= self.step[key]
                fed |= self.step[key]
        return [k for k in self.order if k in carried]


def _live_run_touches(instance: dg.DagsterInstance, keys: frozenset[dg.AssetKey], limit: int = 500) -> bool:
    """A queued or running run may write one of `keys` (more live runs than `limit`, e.g. a wide backfill in the queue,
    count as one: not seen, not ruled out)."""
    records = instance.get_run_records(dg.RunsFilter(statuses=_LIVE), limit=limit)
    if len(records) >= limit:
        return True
    return any(r.dagster_run.asset_selection is None or r.dagster_run.asset_selection & keys for r in records)


def _warn_seconds(policy) -> float | None:
    """When the policy's state leaves PASS: its warn window, else its fail window."""
    if policy is None:
        return None
    return (policy.warn_window or policy.fail_window).to_timedelta().total_seconds()


def carried_downstream(platform: dg.Definitions) -> Carried:
    """The carried keys of the platform's asset graph (groups `CARRIED_GROUPS`)."""
    graph = platform.resolve_asset_graph()
    keys = dg.AssetSelection.groups(*CARRIED_GROUPS).resolve(graph)
    order = [k for k in graph.toposorted_asset_keys if k in keys]
    step = {}
    for key in order:
        assets_def = graph.get(key).assets_def
        step[key] = frozenset({key} if assets_def.can_subset else set(assets_def.keys) & keys)
    warn = {k: _warn_seconds(freshness.policy_for(k)) for k in order}
    return Carried(order=tuple(order), parents={k: frozenset(graph.get(k).parent_keys) for k in order}, step=step,
                   warn_seconds=warn)
