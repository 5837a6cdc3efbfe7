"""Sensors: landing arrival (new or changed landing objects -> one incremental ingestion run) and run-failure alerts."""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.request
from typing import Optional

import dagster as dg
from pydantic import Field

from personalization_assets.core.asset_keys import (
    CONSENT_LEDGER,
    CONSENT_STATE,
    CONSENTED_CRM,
    CONSENTED_EVENTS,
    CONSENTED_EVENTS_STATE,
    IDENTITY_LINKS,
    RAW_EVENTS,
    RAW_EVENTS_QUARANTINE,
    RAW_MANIFEST,
    SUPPRESSION_LIST,
)
from personalization_assets.automation.carried import CARRIED_GROUPS, Carried
from personalization_assets.core.storage import FileInfo, LandingZone
from personalization_assets.resources import PlatformConfig

log = logging.getLogger("personalization.alerts")

EVENTS_STATE = "landing"  # the cursor's key for the events side of the landing zone
# what a new hour changes right away: run it in the ingestion run itself (one launch instead of three)
FOLLOWERS = (
    IDENTITY_LINKS, CONSENT_LEDGER, SUPPRESSION_LIST, CONSENT_STATE,
    CONSENTED_EVENTS_STATE,  # its step rewrites the stale consented/events hours (logged at runtime)
    # rebuilt on every change of the consent state anyway (automation `derived_state`): here instead of in a run of
    # its own, whose process start-up competed with this run's steps for the cores
    CONSENTED_CRM,
)
REFERENCE_SOURCES = {"crm": "crm_profiles", "catalog": "content_catalog", "privacy_requests": "privacy_requests"}
DIGEST_TAG = "personalization/landing-digest"
STREAMING_TAG = "personalization/streaming"
# what the landing sensor and its schedule backstop may request (a run request outside its target cannot launch):
# ingestion, its followers, and what a landing run carries when it is due (automation/carried.py)
LANDING_TARGET = (dg.AssetSelection.groups("raw") | dg.AssetSelection.assets(*FOLLOWERS)
                  | dg.AssetSelection.groups(*CARRIED_GROUPS))


def files_digest(files: list[FileInfo]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\n".encode())
    return h.hexdigest()[:20]


EMPTY_DIGEST = files_digest([])  # a reference source without a file


def landing_state(landing: LandingZone, valid_partitions=None, events_layout: str = "auto") -> dict[str, dict[str, str]]:
    """Digest of the landing objects: the events side as one (ingestion reads only the objects its manifest
    lacks, and files each message under its own receivedAt hour) and each reference source — an empty one too
    (`EMPTY_DIGEST`): a source whose last file left the landing zone (its 30-day lifecycle) must be ingested again,
    to an empty table, or its raw snapshot (CRM contacts, requests) would be kept for ever."""
    from personalization_assets.raw.layouts import list_landing, plan_landing

    plan = plan_landing(list_landing(landing), events_layout)
    event_side = [e.obj for e in plan.events] + [r.obj for r in plan.rejected if r.source in ("events", "landing")]
    sources, newest_sources = {}, {}
    for directory in REFERENCE_SOURCES:
        files = list(plan.reference.get(directory, [])) + [r.obj for r in plan.rejected if r.source == directory]
        sources[directory] = files_digest(files)
        if files:
            newest_sources[directory] = max(f.mtime_ns for f in files)
    return {
        "events": {EVENTS_STATE: files_digest(event_side)} if event_side else {},
        "sources": sources,
        "newest_ns": {EVENTS_STATE: max(f.mtime_ns for f in event_side)} if event_side else {},
        "newest_sources_ns": newest_sources,
    }


def _already_requested(instance, digest_tag: str) -> bool:
    """A run for exactly these files exists (from the sensor or the schedule) and has not failed."""
    records = instance.get_run_records(dg.RunsFilter(tags={DIGEST_TAG: digest_tag}), limit=5)
    return any(r.dagster_run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED) for r in records)


def _materialized_after_files(instance, pk: str | None, newest_file_ns: int, key: dg.AssetKey = RAW_EVENTS) -> bool:
    """The asset (partition) was materialized after its newest landing file was written (e.g. by the CLI
    or a backfill before the sensor ever ran): nothing new to ingest."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[pk] if pk else None), limit=1
    ).records
    return bool(records) and records[0].timestamp * 1e9 > newest_file_ns


def run_requests_for(state: dict, previous: dict, instance=None, with_followers: bool = False,
                     carried: Carried | None = None, tags: dict[str, str] | None = None) -> list[dg.RunRequest]:
    """The runs the landing zone's change asks for. `with_followers`: the events run brings the privacy state and the
    consented tier along; `carried` (with followers and an instance): also the features, warehouse and segments
    that are due (automation/carried.py)."""
    requests = []
    newest = state.get("newest_ns", {})
    digest = state["events"].get(EVENTS_STATE)
    if digest and previous.get("events", {}).get(EVENTS_STATE) != digest:
        tag = f"events:{digest}"
        seen = instance is not None and (_already_requested(instance, tag) or (
            EVENTS_STATE not in previous.get("events", {}) and _materialized_after_files(instance, None, newest.get(EVENTS_STATE, 0), RAW_MANIFEST)))
        if not seen:
            # one unpartitioned ingestion run: it reads the objects its manifest lacks and rewrites the hours they touch;
            # in steady streaming it brings the consent state and the consented hours along (one launch instead of three;
            # tagged: the run queue runs one such run at a time, as they all rebuild the unpartitioned consent state)
            selection = [RAW_MANIFEST, RAW_EVENTS, RAW_EVENTS_QUARANTINE, *(FOLLOWERS if with_followers else ())]
            if with_followers and carried is not None and instance is not None:
                selection += carried.due(instance, written=[*selection, CONSENTED_EVENTS])
            requests.append(dg.RunRequest(run_key=tag, asset_selection=selection,
                                          tags={**(tags or {}), DIGEST_TAG: tag, "personalization/trigger": "landing",
                                                **({STREAMING_TAG: "1"} if with_followers else {})}))
    for directory, digest in state["sources"].items():
        before = previous.get("sources", {}).get(directory)
        if before == digest:
            continue
        table = REFERENCE_SOURCES[directory]
        if digest == EMPTY_DIGEST:
            # the source's last file is gone: its table is rebuilt empty. Seen go (files before): a run per emptying;
            # no digest before (a fresh cursor, the schedule backstop, a cursor from before empty sources were
            # digested): only if the table was ever built, once per tag
            if before is None and not (instance is not None and _materialized_after_files(instance, None, 0, dg.AssetKey(["raw", table]))):
                continue
            tag = f"{directory}:{digest}" + (f":after:{before}" if before else "")
        else:
            tag = f"{directory}:{digest}"
        if instance is not None and _already_requested(instance, tag):
            continue
        if (digest != EMPTY_DIGEST and instance is not None and before is None
                and _materialized_after_files(instance, None, state.get("newest_sources_ns", {}).get(directory, 0), dg.AssetKey(["raw", table]))):
            continue
        requests.append(
            dg.RunRequest(
                run_key=tag,
                asset_selection=[dg.AssetKey(["raw", table]), dg.AssetKey(["raw", f"{table}_quarantine"])],
                tags={**(tags or {}), DIGEST_TAG: tag, "personalization/trigger": "landing"},
            )
        )
    return requests


def build_landing_sensor(partitions_def: dg.PartitionsDefinition, carried: Carried | None = None,
                         tags: dict[str, str] | None = None) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_arrival",
        description="Detects new or changed objects in the landing zone (local directory or S3 prefix, every layout) and "
        "requests one incremental ingestion run (it reads only what its manifest lacks and rewrites the hours those objects "
        "touch) and the changed reference sources. The ingestion run brings the privacy state and the consented tier along, "
        "and the features, the warehouse load and the segments when their freshness policies say they are due. The cursor "
        "holds a digest of the objects; it is only advanced together with the run requests, so a crash between two ticks "
        "loses nothing.",
        # evaluated on every loop of the sensor daemon (whose loop takes at least 5 s): an interval of 5 s, equal to the
        # loop's, skipped every loop that began a moment less than 5 s after the last tick (a tick every 10 s then).
        # One listing per tick (a LIST per 1000 keys on S3).
        minimum_interval_seconds=1,
        default_status=dg.DefaultSensorStatus.RUNNING,
        target=LANDING_TARGET,
    )
    def landing_arrival(context: dg.SensorEvaluationContext, landing: LandingZone, platform: PlatformConfig):
        previous = json.loads(context.cursor) if context.cursor else {}
        state = landing_state(landing, events_layout=getattr(platform, "events_layout", "auto"))
        requests = run_requests_for(state, previous, context.instance, with_followers=True, carried=carried, tags=tags)
        cursor = json.dumps({"events": state["events"], "sources": state["sources"]})
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new landing files"), cursor=cursor)
        context.log.info(f"requesting {len(requests)} ingestion run(s): {[r.run_key for r in requests][:10]}")
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return landing_arrival


class AlertWebhook(dg.ConfigurableResource):
    """Where run-failure alerts go (a JSON POST). The URL may carry a token: pass it with dg.EnvVar."""

    url: Optional[str] = Field(default=None, description="Webhook URL; unset = structured log only.")
    timeout_seconds: float = 10.0

    def post(self, payload: dict) -> int | None:
        if not self.url:
            return None
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_seconds) as resp:
            return resp.status


def failure_payload(context: dg.RunFailureSensorContext) -> dict:
    run = context.dagster_run
    failed_steps, errors = [], []
    for ev in context.get_step_failure_events():
        failed_steps.append(ev.step_key)
        err = ev.event_specific_data.error if ev.event_specific_data else None
        while err is not None and err.cause is not None:  # Dagster wraps user errors: report the root cause
            err = err.cause
        if err is not None:
            errors.append({"step": ev.step_key, "error": f"{err.cls_name or 'Error'}: {err.message.strip()[:2000]}"})
    return {
        "alert": "dagster_run_failed",
        "run_id": run.run_id,
        "job": run.job_name,
        "failed_steps": failed_steps,
        "errors": errors,
        "run_error": (context.failure_event.message or "")[:2000],
        "partition": run.tags.get("dagster/partition") or run.tags.get("dagster/asset_partition_range_start"),
        "tags": {k: v for k, v in run.tags.items() if k.startswith(("dagster/", "personalization/"))},
    }


@dg.run_failure_sensor(
    name="run_failure_alert",
    description="Every failed run raises an alert: a structured log line and a JSON POST to PERSONALIZATION_ALERT_WEBHOOK_URL, "
    "naming the run, the failed step(s) and the error.",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def run_failure_alert(context: dg.RunFailureSensorContext, alert_webhook: AlertWebhook):
    payload = failure_payload(context)
    log.error(json.dumps(payload))
    context.log.error(f"run {payload['run_id']} of {payload['job']} failed in {payload['failed_steps']}")
    alert_webhook.post(payload)
