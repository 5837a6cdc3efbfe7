"""The raw lake: landing files -> validated, partitioned Parquet + quarantine (group `raw`)."""


import hashlib
import json
from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from dagster_duckdb import DuckDBResource
from pydantic import Field

from personalization_assets.checks.pandera_checks import (
    model_check,
    table_schema,
)
from personalization_assets.core.schemas import arrow_schema
from personalization_assets.checks import anomalies
from personalization_assets.core.asset_keys import (
    RAW_EVENTS,
    RAW_EVENTS_QUARANTINE,
    RAW_MANIFEST,
    RETENTION_LOG,
    SIDE_INPUTS_METADATA,
    SUPPRESSION_LIST,
)
from personalization_assets.core.pseudonymize import (
    Pseudonymizer,
    rows_matching_pseudonyms,
)
from personalization_assets.core.quarantine_match import suppress_quarantine
from personalization_assets.raw import events_ingest, ingest, reference_ingest
from personalization_assets.raw.landing_files import direct_path
from personalization_assets.raw.layouts import list_landing, plan_landing
from personalization_assets.core import retention
from personalization_assets.core.partitions import (
    PARTITION_FMT,
    partition_dict,
)
from personalization_assets.core.tracking_plan import (
    Quarantine,
    RawContent,
    RawCrmProfile,
    RawEvent,
    RawPrivacyRequest,
)
from personalization_assets.resources import PlatformConfig
from personalization_assets.core.storage import LakeStorage, LandingZone

GROUP = "raw"
OWNERS = ["team:data-platform"]
EVENT_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz")

SAMPLE_ROWS = 200_000
# landing and lake may be S3: retry transient storage errors (2 s, then 4 s)
STORAGE_RETRY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)


# the events' ingestion holds it while it reads the manifest and merges into the hours: the erasure run, which rewrites
# raw/events and its quarantine hour by hour, holds it too (else an hour merged meanwhile lost its new rows)
INGESTION_LOCK = {"layer": "raw", "name": "landing_manifest"}
_INGESTION_TABLES = ("events", "events_quarantine")


def _erasure_handler(key: dg.AssetKey, partitioned: bool) -> dict:
    """How the lineage-driven erasure removes a subject from this raw table (see privacy/erasure.py)."""
    table = key.path[-1]
    lock = {"writer_lock": INGESTION_LOCK} if table in _INGESTION_TABLES else {}
    if table.endswith("_quarantine"):
        return {"kind": "quarantine", "table": table, "partitioned": partitioned, **lock}
    if table == "content_catalog":
        return {"kind": "none", "reason": "the catalog holds no personal data"}
    columns = {"events": events_ingest.SUBJECT_COLUMNS, "crm_profiles": {"user_id": "id", "email": "email", "phone": "phone"}}
    return {"kind": "raw", "table": table, "partitioned": partitioned, "columns": columns.get(table, {}), **lock}


def _spec(key: dg.AssetKey, description: str, model, storage_kind: str, partitions_def=None, extra_kinds=()) -> dg.AssetSpec:
    return dg.AssetSpec(
        key,
        description=description,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"parquet", storage_kind, *extra_kinds},
        metadata={"dagster/column_schema": table_schema(model), "privacy/tier": "raw",
                  "privacy/erasure": _erasure_handler(key, partitions_def is not None),
                  # read from its last materialization, not a dependency (see load_suppressed); the events also read the
                  # cutoffs the retention run recorded (raw_events' expired_hour)
                  SIDE_INPUTS_METADATA: [SUPPRESSION_LIST.to_user_string()]
                  + ([RETENTION_LOG.to_user_string()] if key in (RAW_EVENTS, RAW_EVENTS_QUARANTINE) else [])},
        tags={"privacy/sensitivity": "sensitive"},
        partitions_def=partitions_def,
    )


def reconciliation_result(asset_key: dg.AssetKey, read: int, raw_rows: int, quarantined: int, suppressed: int = 0) -> dg.AssetCheckResult:
    """Nothing is silently dropped: read = raw + quarantined (+ suppressed: records of erased subjects)."""
    unaccounted = read - raw_rows - quarantined - suppressed
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name="reconciliation",
        passed=unaccounted == 0,
        metadata={"records_read": read, "raw_rows": raw_rows, "quarantined_rows": quarantined, "suppressed_rows": suppressed, "unaccounted": unaccounted},
    )


def _reasons(quarantine: pa.Table) -> dict[str, int]:
    return dict(Counter(quarantine["reason"].to_pylist()).most_common())


def _load(landing: LandingZone, files) -> list[tuple[events_ingest.LandedFile, str | None]]:
    loaded = []
    for f in files:
        landed = events_ingest.load_file(f.path, landing.read_bytes(f.path))
        local = landing.local_path(f.path)
        usable = direct_path(landed, local)
        loaded.append((landed, usable))
    return loaded


def _concat_sample(tables: list[pa.Table], limit: int = 200_000) -> pa.Table:
    """Concatenate per-partition tables up to ~limit rows (the check factory samples further)."""
    out, n = [], 0
    for t in tables:
        out.append(t)
        n += t.num_rows
        if n >= limit:
            break
    return pa.concat_tables(out) if out else pa.table({})


def load_suppressed(lake: LakeStorage) -> set[str]:
    """Pseudonyms of erased subjects, from the last materialization of privacy/suppression_list. A side input,
    declared in each raw asset's metadata (`SIDE_INPUTS_METADATA`) rather than as a dependency: the suppression
    list is derived from raw data (raw/events -> privacy/identity_links -> privacy/suppression_list), so a
    dependency upstream of raw would be a cycle, which Dagster refuses (CircularDependencyError at load)."""
    layer, table = SUPPRESSION_LIST.path
    if not lake.exists(layer, table):
        return set()
    return set(lake.read_table(layer, table, columns=["identifier"])["identifier"].to_pylist())


RUN_TOTALS_TAG_PREFIX = "personalization/totals"


def record_run_totals(context: dg.AssetExecutionContext, asset: str, totals: dict) -> None:
    """The run's totals of a range run as run tags (`personalization/totals/<asset>/<figure>`): visible on the
    run page and queryable (instance.get_run_tags), instead of repeated on every partition's materialization."""
    tags = {f"{RUN_TOTALS_TAG_PREFIX}/{asset}/{name}": str(int(value)) for name, value in totals.items()}
    context.instance.add_run_tags(context.run.run_id, tags)


class IngestConfig(dg.Config):
    full_refresh: bool = Field(default=False, description="Re-read every landing object and rewrite raw/events in place "
                               "(each hour readable until rewritten); rows of objects gone from the landing zone are removed.")


class ReferenceConfig(dg.Config):
    full_refresh: bool = Field(default=False, description="Re-read the source's landing objects even when they, the "
                               "suppression list and the settings are the ones the stored tables were built from.")


# what a reference source's tables were built from, in their Parquet footers (`reference_inputs_digest`)
INPUTS_META = b"personalization.inputs"
COUNTS_META = b"personalization.counts"
REFERENCE_FORMAT = "1"  # bump when the reference ingestion's rules change: every source is read again once


def reference_inputs_digest(table: str, objects, rejected, suppressed: set[str], key_version: str, platform) -> str:
    """sha256 of everything a reference source's raw and quarantine tables are a function of: its landing objects
    (path and fingerprint: ETag, else size and mtime — the events manifest's identity of an object) and the reason of
    each one not read, the suppression list (erased subjects are dropped at ingestion), the pseudonym key version
    (the suppression match), the line size limit and the layout setting."""
    h = hashlib.sha256(f"{REFERENCE_FORMAT}|{table}|{key_version}|{platform.max_line_bytes}|{platform.events_layout}\n".encode())
    for o in sorted(objects, key=lambda o: o.path):
        h.update(f"read|{o.path}|{o.fingerprint}\n".encode())
    for r in sorted(rejected, key=lambda r: r.obj.path):
        h.update(f"rejected|{r.obj.path}|{r.obj.fingerprint}|{r.reason}\n".encode())
    h.update(hashlib.sha256("\n".join(sorted(suppressed)).encode()).digest())
    return h.hexdigest()


def _stored_inputs(lake: LakeStorage, table: str) -> tuple[str | None, dict]:
    """(digest, counts) both tables of a reference source were written with, from their footers; (None, {}) unless
    both name the same digest and still hold the rows they were written with (another step, e.g. the erasure run,
    may have rewritten one since: then the source is read again)."""
    digests, counts, rows = [], {}, []
    for name in (table, f"{table}_quarantine"):
        if not lake.exists("raw", name):
            return None, {}
        footer = lake.parquet_metadata("raw", name)
        meta = footer.schema.to_arrow_schema().metadata or {}
        digests.append(meta.get(INPUTS_META))
        rows.append(footer.num_rows)
        if name == table and COUNTS_META in meta:
            counts = json.loads(meta[COUNTS_META])
    if (digests[0] is None or digests[0] != digests[1] or not counts
            or [counts.get("raw_rows"), counts.get("quarantined")] != rows):
        return None, {}
    return digests[0].decode(), counts


def ingestion_lock(lake: LakeStorage):
    from personalization_assets.core.hash_chain import table_writer_lock

    return table_writer_lock(lake, INGESTION_LOCK)


def _rebuild_hours(context) -> set[str] | None:
    """Hours explicitly asked for (a UI backfill of raw/events partitions, `materialize --partitions`): their
    objects are read again."""
    tags = context.run.tags
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if not start:
        pk = tags.get("dagster/partition")
        return {pk} if pk else None
    pdef = context.assets_def.specs_by_key[RAW_EVENTS].partitions_def
    return set(pdef.get_partition_keys_in_range(dg.PartitionKeyRange(start, end or start)))


def build_raw_assets(partitions_def: dg.PartitionsDefinition, storage_kind: str) -> list:
    events_checks = [
        dg.AssetCheckSpec("reconciliation", asset=RAW_EVENTS, blocking=True,
                          description="Every line of every landing object read is accounted for: read = raw + quarantined + suppressed "
                          "(records of erased subjects, dropped at ingestion), checked on the hours actually rewritten."),
        dg.AssetCheckSpec("objects_accounted", asset=RAW_MANIFEST, blocking=True,
                          description="Every object under the landing root is read, quarantined with a reason, a reference-source file or reserved."),
        model_check(RAW_EVENTS, RawEvent, blocking=True).spec,
        model_check(RAW_EVENTS_QUARANTINE, Quarantine, blocking=False).spec,
        # data anomalies per hour vs the same hour in previous weeks (checks/anomalies.yaml)
        *anomalies.event_check_specs(RAW_EVENTS, partitions_def),
    ]

    def valid_hour(hour) -> bool:
        return partitions_def.has_partition_key(hour.strftime(PARTITION_FMT))

    def expired_hour(lake: LakeStorage):
        """An hour the retention run has removed from raw (its recorded cutoff, a side input: core/retention.py): a
        message received in one is quarantined, never brought back."""
        cutoff = retention.read_cutoffs(lake).get("raw")
        return lambda hour: retention.hour_before(hour, cutoff)

    # PERSONALIZATION_EVENTS_START, in the ingestion basis: moved earlier, the messages it quarantined become rows
    first_hour = partitions_def.start.isoformat() if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition) else None

    @dg.multi_asset(
        name="raw_events",
        specs=[
            dg.AssetSpec(RAW_MANIFEST, description="Every landing object of the events side ever listed: path, fingerprint (ETag or size+mtime), "
                         "layout, CDP source id, read or quarantined (with reason), records, and the hours its messages went to. "
                         "Ingestion reads only objects that are new or changed against it.",
                         group_name=GROUP, owners=OWNERS, kinds={"parquet", storage_kind},
                         metadata={"privacy/tier": "raw", "privacy/erasure": {"kind": "none", "reason": "object names and counts, no personal data"}},
                         tags={"privacy/sensitivity": "internal"}),
            _spec(RAW_EVENTS, "CDP spec messages that passed the tracking plan, partitioned by the hour of their receivedAt; one copy "
                  "per messageId per hour (earliest receivedAt).", RawEvent, storage_kind, partitions_def).replace_attributes(
                      skippable=True, deps=[RAW_MANIFEST]),
            _spec(RAW_EVENTS_QUARANTINE, "Every rejected landing line or object with file, line number, reason and original bytes, "
                  "filed under the hour of its object.", Quarantine, storage_kind, partitions_def).replace_attributes(
                      skippable=True, deps=[RAW_MANIFEST]),
        ],
        check_specs=events_checks,
        retry_policy=STORAGE_RETRY,
    )
    def raw_events(context: dg.AssetExecutionContext, config: IngestConfig, landing: LandingZone, lake: LakeStorage, duckdb: DuckDBResource,
                   platform: PlatformConfig, pseudonymizer: Pseudonymizer):
        anomaly_config = anomalies.load_config()
        raw_samples, quarantine_samples = [], []
        raw_by_hour_stats: dict[str, dict] = {}

        def on_hour(pk: str, rows: pa.Table) -> None:
            raw_by_hour_stats[pk] = anomalies.partition_stats(rows, 0, 0, anomaly_config.null_columns)
            if sum(t.num_rows for t in raw_samples) < SAMPLE_ROWS and rows.num_rows:
                raw_samples.append(rows)

        with ingestion_lock(lake), duckdb.get_connection() as con:
            outcome = ingest.ingest_landing(
                con, landing, lake, platform, run_id=context.run.run_id, suppressed=load_suppressed(lake), pseudonymizer=pseudonymizer,
                full_refresh=config.full_refresh, rebuild_hours=_rebuild_hours(context), valid_hour=valid_hour,
                first_hour=first_hour, expired_hour=expired_hour(lake), log=context.log.info,
                on_hour=on_hour)
        hour_stats: dict[str, dict] = {}
        in_range = set(context.partition_keys) if context.has_partition_key_range else set()
        for pk, st in sorted(outcome.hours.items()):
            # the hour as stored at the end of the run (also when a tick added a late object to it): its quarantine
            # rate is over all its records, not over this run's
            hour_stats[pk] = {**raw_by_hour_stats.get(pk, anomalies.partition_stats(pa.table({}), 0, 0, anomaly_config.null_columns)),
                              "records_read": st.raw_rows + st.quarantined, "rows_written": st.raw_rows, "quarantined": st.quarantined}
            # each hour's own figures on its own materialization (run totals: run tags and the manifest's metadata).
            # An hour inside the run's partition range gets them on the materialization the output creates; any
            # other hour is logged as a runtime materialization of that partition.
            hour_md = {"dagster/row_count": st.raw_rows, "rows_written": st.raw_rows, "rows_added": st.raw_added,
                          # the hour's records as stored (raw + quarantined) plus those suppressed: its lines
                          "records_read": st.raw_rows + st.quarantined + st.suppressed, "records_read_this_run": st.records_read,
                          "quarantined": st.quarantined, "suppressed_erased_subjects": st.suppressed,
                          "objects_read": len(st.objects), "source_files": dg.MetadataValue.json(sorted(landing.uri(p) for p in st.objects)[:20]),
                          "quarantine_by_reason": dg.MetadataValue.json(dict(st.reasons.most_common())),
                          **anomalies.stats_metadata(hour_stats[pk])}
            q_md = {"dagster/row_count": st.quarantined, "rows_written": st.quarantined, "by_reason": dg.MetadataValue.json(dict(st.reasons.most_common()))}
            for key, md in ((RAW_EVENTS, hour_md), (RAW_EVENTS_QUARANTINE, q_md)):
                if pk in in_range and key in context.selected_asset_keys:
                    context.add_asset_metadata(md, asset_key=key, partition_key=pk)
                else:
                    context.log_event(dg.AssetMaterialization(asset_key=key, partition=pk, metadata=md))
        for pk in sorted(outcome.hours)[:8]:
            part = partition_dict(pk)
            if lake.exists("raw", "events_quarantine", part) and sum(t.num_rows for t in quarantine_samples) < SAMPLE_ROWS:
                quarantine_samples.append(lake.read_table("raw", "events_quarantine", part))
        summary = outcome.summary()
        record_run_totals(context, RAW_EVENTS.to_user_string(), {"partitions": len(outcome.hours), "records_read": outcome.records_read,
                                                  "rows_written": sum(st.raw_rows for st in outcome.hours.values()),
                                                  "quarantined": sum(st.quarantined for st in outcome.hours.values()),
                                                  "objects_read": outcome.objects_read, "objects_quarantined": outcome.objects_quarantined,
                                                  "suppressed": outcome.suppressed})
        context.log.info(f"ingestion: {summary}")
        # versioned by what the tables hold (the manifest records every object read into them): a run that found
        # nothing new keeps the version, so the steps downstream are not stale (automation/staleness.py)
        version = dg.DataVersion(outcome.manifest_digest)
        yield dg.MaterializeResult(asset_key=RAW_MANIFEST, data_version=version, metadata={
            **summary, "files_read": outcome.objects_read + outcome.objects_quarantined,
            "hours": dg.MetadataValue.json(sorted(outcome.hours)[:500]),
            "layouts": dg.MetadataValue.json(dict(outcome.layouts)),
        })
        # the partitioned outputs are yielded when selected (their hours were logged above): a skippable output left
        # unyielded would make Dagster skip every step downstream of it in this run
        # (this run-level materialization carries the run's totals; each hour's own figures are on its partition)
        selected = context.selected_asset_keys
        rows_written = sum(st.raw_rows for st in outcome.hours.values())
        quarantined = sum(st.quarantined for st in outcome.hours.values())
        if in_range:  # a range run: the output materializes every hour of the range, each with its own figures (above)
            for key in (RAW_EVENTS, RAW_EVENTS_QUARANTINE):
                if key in selected:
                    yield dg.MaterializeResult(asset_key=key)
        elif RAW_EVENTS in selected:
            yield dg.MaterializeResult(asset_key=RAW_EVENTS, data_version=version, metadata={
                "hours_rewritten": len(outcome.hours), "records_read": outcome.records_read, "rows_written": rows_written,
                "quarantined": quarantined, "suppressed_erased_subjects": outcome.suppressed})
        if not in_range and RAW_EVENTS_QUARANTINE in selected:
            yield dg.MaterializeResult(asset_key=RAW_EVENTS_QUARANTINE, data_version=version,
                                       metadata={"hours_rewritten": len(outcome.hours), "rows_written": quarantined})
        yield dg.AssetCheckResult(asset_key=RAW_EVENTS, check_name="reconciliation", passed=outcome.unaccounted_records == 0,
                                  metadata={"records_read": outcome.records_read, "suppressed_rows": outcome.suppressed,
                                            "rows_replaced": outcome.rows_removed, "unaccounted": outcome.unaccounted_records,
                                            "hours": len(outcome.hours)})
        yield dg.AssetCheckResult(asset_key=RAW_MANIFEST, check_name="objects_accounted", passed=not outcome.objects_unaccounted,
                                  metadata={"objects_listed": outcome.objects_listed, "unaccounted": len(outcome.objects_unaccounted),
                                            "unaccounted_objects": dg.MetadataValue.json(outcome.objects_unaccounted[:20])})
        yield model_check(RAW_EVENTS, RawEvent, blocking=True).evaluate(_concat_sample(raw_samples) if raw_samples else arrow_schema(RawEvent).empty_table())
        yield model_check(RAW_EVENTS_QUARANTINE, Quarantine, blocking=False).evaluate(
            _concat_sample(quarantine_samples) if quarantine_samples else events_ingest.QUARANTINE_SCHEMA.empty_table())
        # anomaly checks last: a blocking one that fails stops downstream assets, after the data is recorded
        results = anomalies.evaluate_run_partitions(context, RAW_EVENTS, hour_stats, anomaly_config)
        yield from anomalies.emit_check_results(context, RAW_EVENTS, results, anomaly_config)

    reference = [
        _reference_asset("crm_profiles", "crm", "crm", (".csv", ".csv.gz"), RawCrmProfile, storage_kind,
                         "CRM profile rows (all exports); `is_current` marks the latest updated_at per user."),
        _reference_asset("content_catalog", "catalog", "catalog", (".jsonl", ".jsonl.gz"), RawContent, storage_kind,
                         "Content catalog entries from the CMS, deduplicated by content_id (first file wins, later duplicates quarantined)."),
        _reference_asset("privacy_requests", "privacy_requests", "privacy_requests", (".jsonl", ".jsonl.gz"), RawPrivacyRequest, storage_kind,
                         "Data-subject requests (erasure, opt-out/in of sale) as received."),
    ]
    return [raw_events, *reference]


_DEDUP = {"content_catalog": "content_id", "privacy_requests": "request_id"}
# raw reference rows of erased subjects are dropped at ingestion like events (privacy requests are kept:
# they are the record of the erasure, retained as evidence)
_SUPPRESS_RAW = {"crm_profiles": {"user_id": "id", "email": "email", "phone": "phone"}}


def _unchanged_reference(lake: LakeStorage, table: str, key, qkey, model, counts: dict, files: int, version: dg.DataVersion):
    """What a reference asset yields when its inputs are the stored tables' own: the figures they were written with
    (`counts`, checked against their footers by `_stored_inputs`), the checks evaluated on the stored tables."""
    raw = lake.read_table("raw", table)
    quarantined = counts["quarantined"]
    reasons = _reasons(lake.read_table("raw", f"{table}_quarantine", columns=["reason"]))
    meta = {"inputs_unchanged": True, "files_read": 0, "files_unchanged": files}
    yield dg.MaterializeResult(asset_key=key, data_version=version, metadata={
        "dagster/row_count": raw.num_rows, "rows_written": 0, "records_read": counts["records_read"], "quarantined": quarantined,
        "suppressed_erased_subjects": counts["suppressed"], "quarantine_by_reason": dg.MetadataValue.json(reasons), **meta})
    yield dg.MaterializeResult(asset_key=qkey, data_version=version, metadata={"dagster/row_count": quarantined, "rows_written": 0,
                                                         "by_reason": dg.MetadataValue.json(reasons), **meta})
    yield reconciliation_result(key, counts["records_read"], raw.num_rows, quarantined, counts["suppressed"])
    yield model_check(key, model, blocking=True).evaluate(raw)


def _with_rejected_objects(landing: LandingZone, source: str, rejected, quarantine: pa.Table, read: int) -> tuple[pa.Table, int]:
    """Landing objects of a reference source that are not read (raw/layouts.py: wrong suffix, ...) are records
    too: one quarantine row each with the plan's reason and detail and the object's first bytes; they count as read."""
    if not rejected:
        return quarantine, read
    extra = events_ingest.build_quarantine(
        source,
        [(r.obj.path, events_ingest.Reject(0, r.reason, r.detail)) for r in rejected],
        originals={(r.obj.path, 0): landing.read_bytes(r.obj.path)[: events_ingest.MAX_QUARANTINE_BYTES] for r in rejected},
    )
    return pa.concat_tables([quarantine, extra]), read + len(rejected)


def _reference_asset(table: str, landing_dir: str, source: str, suffixes, model, storage_kind: str, description: str):
    key = dg.AssetKey(["raw", table])
    qkey = dg.AssetKey(["raw", f"{table}_quarantine"])

    @dg.multi_asset(
        name=f"raw_{table}",
        specs=[
            _spec(key, description, model, storage_kind),
            _spec(qkey, f"Rejected lines of landing/{landing_dir}/ with reason and original bytes.", Quarantine, storage_kind),
        ],
        check_specs=[
            dg.AssetCheckSpec("reconciliation", asset=key, blocking=True,
                              description="read = raw + quarantined + suppressed (records of erased subjects, dropped at ingestion)"),
            model_check(key, model, blocking=True).spec,
        ],
        retry_policy=STORAGE_RETRY,
    )
    def _asset(context: dg.AssetExecutionContext, config: ReferenceConfig, landing: LandingZone, lake: LakeStorage, duckdb: DuckDBResource,
               platform: PlatformConfig, pseudonymizer: Pseudonymizer):
        # every object under landing/<dir>/ is read or quarantined with its reason (raw/layouts.py), '.'/'_' names included
        plan = plan_landing(list_landing(landing, landing_dir), platform.events_layout)
        files = plan.reference[landing_dir]
        rejected = [r for r in plan.rejected if r.source == landing_dir]
        all_files = sorted([*files, *(r.obj for r in rejected)], key=lambda f: f.path)
        suppressed = load_suppressed(lake)
        digest = reference_inputs_digest(table, files, rejected, suppressed, str(pseudonymizer.chain().active), platform)
        stored, counts = _stored_inputs(lake, table)
        # the tables are a function of their inputs' digest: it is their data version (automation/staleness.py)
        version = dg.DataVersion(digest)
        if stored == digest and not config.full_refresh:
            # the same objects, suppression list and settings as the stored tables: nothing to read (a tick every few
            # minutes re-read and rewrote the whole source each time). The checks are evaluated on the stored tables.
            yield from _unchanged_reference(lake, table, key, qkey, model, counts, len(all_files), version)
            return
        loaded = _load(landing, files)
        with duckdb.get_connection() as con:
            if source == "crm":
                result = reference_ingest.ingest_crm(con, loaded, platform.max_line_bytes)
            else:
                result = reference_ingest.ingest_jsonl_source(con, source, loaded, model, platform.max_line_bytes, dedup_key=_DEDUP.get(table))
            quarantine, read = _with_rejected_objects(landing, source, rejected, result.quarantine, result.records_read)
            raw, n_suppressed = result.raw, 0
            if suppressed and table in _SUPPRESS_RAW and raw.num_rows:
                mask, _ = rows_matching_pseudonyms(raw, _SUPPRESS_RAW[table], suppressed, pseudonymizer.pseudonymize_values)
                n_suppressed = pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
                raw = raw.filter(pc.invert(mask)) if n_suppressed else raw
            quarantine, q_suppressed = suppress_quarantine(con, quarantine, suppressed, pseudonymizer)
            n_suppressed += q_suppressed
        counts = {"records_read": read, "suppressed": n_suppressed, "raw_rows": raw.num_rows, "quarantined": quarantine.num_rows}
        # the raw table first, the quarantine last: both footers must name the digest before a run trusts them
        written = lake.write_table("raw", table, raw.replace_schema_metadata(
            {**(raw.schema.metadata or {}), INPUTS_META: digest.encode(), COUNTS_META: json.dumps(counts).encode()}))
        q_written = lake.write_table("raw", f"{table}_quarantine", quarantine.replace_schema_metadata(
            {**(quarantine.schema.metadata or {}), INPUTS_META: digest.encode()}))
        reasons = _reasons(quarantine)
        yield dg.MaterializeResult(
            asset_key=key,
            data_version=version,
            metadata={
                "dagster/row_count": raw.num_rows,
                "rows_written": raw.num_rows,
                "records_read": read,
                "quarantined": quarantine.num_rows,
                "suppressed_erased_subjects": n_suppressed,
                "quarantine_by_reason": dg.MetadataValue.json(reasons),
                "files_read": len(all_files), "inputs_unchanged": False,
                "source_files": dg.MetadataValue.json([landing.uri(f.path) for f in all_files[:100]]),
                "path": written.path,
            },
        )
        yield dg.MaterializeResult(asset_key=qkey, data_version=version, metadata={"dagster/row_count": quarantine.num_rows, "rows_written": quarantine.num_rows, "by_reason": dg.MetadataValue.json(reasons), "path": q_written.path})
        yield reconciliation_result(key, read, raw.num_rows, quarantine.num_rows, n_suppressed)
        yield model_check(key, model, blocking=True).evaluate(raw)

    return _asset
