"""The raw lake: landing files -> validated, partitioned Parquet + quarantine (group `raw`)."""


from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from dagster_duckdb import DuckDBResource

from personalization_assets.checks.pandera_checks import model_check, table_schema
from personalization_assets.monitoring import anomalies
from personalization_assets.raw import events_ingest, reference_ingest
from personalization_assets.raw.layouts import list_landing, plan_landing
from personalization_assets.raw.partitions import landing_events_prefix, partition_dict, partition_start
from personalization_assets.raw.tracking_plan import (
    Quarantine,
    RawContent,
    RawCrmProfile,
    RawEvent,
    RawPrivacyRequest,
)
from personalization_assets.privacy.pseudonymize import Pseudonymizer, rows_matching_pseudonyms
from personalization_assets.privacy.quarantine_match import quarantine_match_mask
from personalization_assets.resources import PlatformConfig
from personalization_assets.resources.storage import LakeStorage, LandingZone

GROUP = "raw"
OWNERS = ["team:data-platform"]
EVENT_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz")

SAMPLE_ROWS = 200_000
# landing and lake may be S3: retry transient storage errors (2 s, then 4 s)
STORAGE_RETRY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)
RAW_EVENTS = dg.AssetKey(["raw", "events"])
RAW_EVENTS_QUARANTINE = dg.AssetKey(["raw", "events_quarantine"])


def _erasure_handler(key: dg.AssetKey, partitioned: bool) -> dict:
    """How the lineage-driven erasure removes a subject from this raw table (see privacy/erasure.py)."""
    table = key.path[-1]
    if table.endswith("_quarantine"):
        return {"kind": "quarantine", "table": table, "partitioned": partitioned}
    if table == "content_catalog":
        return {"kind": "none", "reason": "the catalog holds no personal data"}
    columns = {"events": events_ingest.SUBJECT_COLUMNS, "crm_profiles": {"user_id": "id", "email": "email", "phone": "phone"}}
    return {"kind": "raw", "table": table, "partitioned": partitioned, "columns": columns.get(table, {})}


def _spec(key: dg.AssetKey, description: str, model, storage_kind: str, partitions_def=None, extra_kinds=()) -> dg.AssetSpec:
    return dg.AssetSpec(
        key,
        description=description,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"parquet", storage_kind, *extra_kinds},
        metadata={"dagster/column_schema": table_schema(model), "privacy/tier": "raw",
                  "privacy/erasure": _erasure_handler(key, partitions_def is not None)},
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
        # DuckDB may read the original file only if it is exactly what we indexed (plain, no BOM)
        usable = local if (local and not f.path.endswith(".gz") and landed.data[:3] != events_ingest.BOM) else None
        loaded.append((landed, usable))
    return loaded


def _with_unsupported(landing: LandingZone, source: str, suffixes, bad_files, quarantine: pa.Table, read: int) -> tuple[pa.Table, int]:
    """Files that are not batches of the source (wrong name) are records too: one quarantine row each,
    with the file's first bytes; they count as read."""
    if not bad_files:
        return quarantine, read
    extra = events_ingest.build_quarantine(
        source,
        [(f.path, events_ingest.Reject(0, "unsupported_file", f"file name does not end with one of {suffixes}")) for f in bad_files],
        originals={(f.path, 0): landing.read_bytes(f.path)[: events_ingest.MAX_QUARANTINE_BYTES] for f in bad_files},
    )
    return pa.concat_tables([quarantine, extra]), read + len(bad_files)


def _unsupported(files) -> list:
    return [f for f in files if not f.path.endswith(EVENT_SUFFIXES)]


def _concat_sample(tables: list[pa.Table], limit: int = 200_000) -> pa.Table:
    """Concatenate per-partition tables up to ~limit rows (the check factory samples further)."""
    out, n = [], 0
    for t in tables:
        out.append(t)
        n += t.num_rows
        if n >= limit:
            break
    return pa.concat_tables(out) if out else pa.table({})


BATCH_BYTES = 128 << 20  # decompressed landing bytes validated together (bounds memory)
BATCH_PARTITIONS = 48


def _estimated_bytes(f) -> int:
    return f.size * (6 if f.path.endswith(".gz") else 1)


def plan_batches(landing: LandingZone, partition_keys) -> list[list[tuple[str, list]]]:
    """Group partitions so each batch holds at most ~BATCH_BYTES of landing data (a big hour is its own batch)."""
    batches, current, size = [], [], 0
    for pk in partition_keys:
        files = landing.list_files(landing_events_prefix(pk))
        b = sum(_estimated_bytes(f) for f in files)
        if current and (size + b > BATCH_BYTES or len(current) >= BATCH_PARTITIONS):
            batches.append(current)
            current, size = [], 0
        current.append((pk, files))
        size += b
    if current:
        batches.append(current)
    return batches


def load_suppressed(lake: LakeStorage) -> set[str]:
    """Pseudonyms of erased subjects. Read as a side input (not a declared dependency): the suppression
    list is derived from raw data, so declaring it upstream of raw/events would create a cycle."""
    if not lake.exists("privacy", "suppression_list"):
        return set()
    return set(lake.read_table("privacy", "suppression_list", columns=["identifier"])["identifier"].to_pylist())


def suppress_quarantine(con, quarantine: pa.Table, suppressed: set[str] | None, pseudonymizer) -> tuple[pa.Table, int]:
    """Drop the quarantine rows of erased subjects (exact identifiers the rejected record still holds, see
    privacy/quarantine_match.py); they are counted as suppressed, so read = raw + quarantined + suppressed
    still holds. Without this an erased subject's rejected line would come back on every run."""
    if not suppressed or pseudonymizer is None or quarantine.num_rows == 0:
        return quarantine, 0
    mask = quarantine_match_mask(con, quarantine, suppressed, pseudonymizer.pseudonymize_values)
    n = pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
    return (quarantine.filter(pc.invert(mask)) if n else quarantine), n


def ingest_events_batch(con, batch: list[tuple[str, list]], landing: LandingZone, lake: LakeStorage, platform: PlatformConfig,
                        suppressed: set[str] | None = None, pseudonymizer=None) -> list[dict]:
    """Ingest landing hours into raw/events + raw/events_quarantine (replacing those partitions)."""
    inputs, bad_by_pk = [], {}
    for pk, all_files in batch:
        bad = _unsupported(all_files)
        bad_by_pk[pk] = bad
        inputs.append((partition_start(pk), _load(landing, [f for f in all_files if f not in bad])))
    results = events_ingest.ingest_event_batch(
        con, inputs, horizon_days=platform.horizon_days, max_future_minutes=platform.max_future_minutes, max_line_bytes=platform.max_line_bytes,
        suppressed=suppressed, pseudonymize=pseudonymizer.pseudonymize_values if pseudonymizer is not None else None,
    )
    out = []
    for (pk, all_files), result in zip(batch, results):
        quarantine, records_read = _with_unsupported(landing, "events", EVENT_SUFFIXES, bad_by_pk[pk], result.quarantine, result.records_read)
        quarantine, quarantine_suppressed = suppress_quarantine(con, quarantine, suppressed, pseudonymizer)
        part = partition_dict(pk)
        raw_written = lake.write_table("raw", "events", result.raw, partition=part)
        lake.write_table("raw", "events_quarantine", quarantine, partition=part)
        out.append({
            "partition": pk,
            "files": len(all_files),
            "records_read": records_read,
            "raw_rows": result.raw.num_rows,
            "quarantined": quarantine.num_rows,
            "suppressed": result.suppressed + quarantine_suppressed,
            "fast_path_files": result.fast_path_files,
            "bytes": raw_written.bytes,
            "reasons": _reasons(quarantine),
            "source_files": [landing.uri(f.path) for f in all_files[:20]],
            "raw": result.raw,
            "quarantine": quarantine,
        })
    return out


def partition_metadata(stats: dict) -> dict:
    """One landing hour's own figures, recorded on that hour's materialization of raw/events."""
    return {
        "dagster/row_count": stats["raw_rows"],
        "rows_written": stats["raw_rows"],
        "records_read": stats["records_read"],
        "quarantined": stats["quarantined"],
        "suppressed_erased_subjects": stats["suppressed"],
        "files_read": stats["files"],
        "fast_path_files": stats["fast_path_files"],
        "bytes_written": stats["bytes"],
        "quarantine_by_reason": dg.MetadataValue.json(stats["reasons"]),
        "source_files": dg.MetadataValue.json(stats["source_files"]),
    }


RUN_TOTALS_TAG_PREFIX = "personalization/totals"


def record_run_totals(context: dg.AssetExecutionContext, asset: str, totals: dict) -> None:
    """The run's totals of a range run as run tags (`personalization/totals/<asset>/<figure>`): visible on the
    run page and queryable (instance.get_run_tags), instead of repeated on every partition's materialization."""
    tags = {f"{RUN_TOTALS_TAG_PREFIX}/{asset}/{name}": str(int(value)) for name, value in totals.items()}
    context.instance.add_run_tags(context.run.run_id, tags)


def build_raw_assets(partitions_def: dg.PartitionsDefinition, storage_kind: str) -> list:
    events_checks = [
        dg.AssetCheckSpec("reconciliation", asset=RAW_EVENTS, blocking=True,
                          description="Every landing line is accounted for: read = raw + quarantined + suppressed (records of erased subjects, dropped at ingestion)."),
        model_check(RAW_EVENTS, RawEvent, blocking=True).spec,
        model_check(RAW_EVENTS_QUARANTINE, Quarantine, blocking=False).spec,
        # data anomalies per hour vs the same hour in previous weeks (monitoring/anomalies.yaml)
        *anomalies.event_check_specs(RAW_EVENTS, partitions_def),
    ]

    @dg.multi_asset(
        name="raw_events",
        specs=[
            _spec(RAW_EVENTS, "CDP spec messages of one landing hour that passed the tracking plan, deduplicated by messageId within the hour.", RawEvent, storage_kind, partitions_def),
            _spec(RAW_EVENTS_QUARANTINE, "Every rejected landing line of the hour with file, line number, reason and original bytes.", Quarantine, storage_kind, partitions_def),
        ],
        check_specs=events_checks,
        partitions_def=partitions_def,
        # one run may cover a range of hours (backfills, `personalization materialize`): no per-partition start-up cost
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=STORAGE_RETRY,
    )
    def raw_events(context: dg.AssetExecutionContext, landing: LandingZone, lake: LakeStorage, duckdb: DuckDBResource, platform: PlatformConfig,
                   pseudonymizer: Pseudonymizer):
        totals = Counter()
        unreconciled = []
        anomaly_config = anomalies.load_config()
        hour_stats: dict[str, dict] = {}
        raw_samples = []
        quarantine_samples = []
        with duckdb.get_connection() as con:
            suppressed = load_suppressed(lake)
            for batch in plan_batches(landing, context.partition_keys):
                for stats in ingest_events_batch(con, batch, landing, lake, platform, suppressed, pseudonymizer):
                    pk = stats["partition"]
                    totals.update({k: stats[k] for k in ("records_read", "raw_rows", "quarantined", "suppressed", "files", "fast_path_files", "bytes")})
                    if stats["records_read"] != stats["raw_rows"] + stats["quarantined"] + stats["suppressed"]:
                        unreconciled.append(pk)
                    # keep a bounded sample for the schema checks (memory stays bounded by a partition)
                    if sum(t.num_rows for t in raw_samples) < SAMPLE_ROWS:
                        raw_samples.append(stats["raw"])
                    if sum(t.num_rows for t in quarantine_samples) < SAMPLE_ROWS:
                        quarantine_samples.append(stats["quarantine"])
                    context.log.info(
                        f"{pk}: {stats['records_read']} records from {stats['files']} files -> raw {stats['raw_rows']}, quarantined {stats['quarantined']}"
                    )
                    hour_stats[pk] = anomalies.partition_stats(stats["raw"], stats["records_read"], stats["quarantined"], anomaly_config.null_columns)
                    # each hour's own figures on its own materialization (not the run's totals on every hour)
                    context.add_asset_metadata({**partition_metadata(stats), **anomalies.stats_metadata(hour_stats[pk])},
                                               asset_key=RAW_EVENTS, partition_key=pk)
                    context.add_asset_metadata(
                        {"dagster/row_count": stats["quarantined"], "rows_written": stats["quarantined"],
                         "by_reason": dg.MetadataValue.json(stats["reasons"])},
                        asset_key=RAW_EVENTS_QUARANTINE, partition_key=pk,
                    )
        # run-level totals live on the run (tags, shown on the run page), not on each partition
        record_run_totals(context, "raw/events", {
            "partitions": len(context.partition_keys), "records_read": totals["records_read"], "rows_written": totals["raw_rows"],
            "quarantined": totals["quarantined"], "suppressed": totals["suppressed"], "files_read": totals["files"],
        })
        yield dg.MaterializeResult(asset_key=RAW_EVENTS)
        yield dg.MaterializeResult(asset_key=RAW_EVENTS_QUARANTINE)
        check = reconciliation_result(RAW_EVENTS, totals["records_read"], totals["raw_rows"], totals["quarantined"], totals["suppressed"])
        if unreconciled:
            check = dg.AssetCheckResult(asset_key=RAW_EVENTS, check_name="reconciliation", passed=False,
                                        metadata={**check.metadata, "unreconciled_partitions": dg.MetadataValue.json(unreconciled)})
        yield check
        yield model_check(RAW_EVENTS, RawEvent, blocking=True).evaluate(_concat_sample(raw_samples))
        yield model_check(RAW_EVENTS_QUARANTINE, Quarantine, blocking=False).evaluate(_concat_sample(quarantine_samples))
        # anomaly checks last: a blocking one that fails stops downstream assets, after the data is recorded
        results = anomalies.evaluate_run_partitions(context, RAW_EVENTS, hour_stats, anomaly_config)
        for r in results:
            if not r.passed:
                context.log.warning(f"anomaly {r.check} on {r.partition}: {r.description}")
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
    def _asset(context: dg.AssetExecutionContext, landing: LandingZone, lake: LakeStorage, duckdb: DuckDBResource, platform: PlatformConfig,
               pseudonymizer: Pseudonymizer):
        # every object under landing/<dir>/ is read or quarantined with its reason (raw/layouts.py), '.'/'_' names included
        plan = plan_landing(list_landing(landing, landing_dir), platform.events_layout)
        files = plan.reference[landing_dir]
        rejected = [r for r in plan.rejected if r.source == landing_dir]
        all_files = sorted([*files, *(r.obj for r in rejected)], key=lambda f: f.path)
        loaded = _load(landing, files)
        with duckdb.get_connection() as con:
            if source == "crm":
                result = reference_ingest.ingest_crm(con, loaded, platform.max_line_bytes)
            else:
                result = reference_ingest.ingest_jsonl_source(con, source, loaded, model, platform.max_line_bytes, dedup_key=_DEDUP.get(table))
            quarantine, read = _with_rejected_objects(landing, source, rejected, result.quarantine, result.records_read)
            suppressed = load_suppressed(lake)
            raw, n_suppressed = result.raw, 0
            if suppressed and table in _SUPPRESS_RAW and raw.num_rows:
                mask, _ = rows_matching_pseudonyms(raw, _SUPPRESS_RAW[table], suppressed, pseudonymizer.pseudonymize_values)
                n_suppressed = pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
                raw = raw.filter(pc.invert(mask)) if n_suppressed else raw
            quarantine, q_suppressed = suppress_quarantine(con, quarantine, suppressed, pseudonymizer)
            n_suppressed += q_suppressed
        written = lake.write_table("raw", table, raw)
        q_written = lake.write_table("raw", f"{table}_quarantine", quarantine)
        reasons = _reasons(quarantine)
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={
                "dagster/row_count": raw.num_rows,
                "rows_written": raw.num_rows,
                "records_read": read,
                "quarantined": quarantine.num_rows,
                "suppressed_erased_subjects": n_suppressed,
                "quarantine_by_reason": dg.MetadataValue.json(reasons),
                "files_read": len(all_files),
                "source_files": dg.MetadataValue.json([landing.uri(f.path) for f in all_files[:100]]),
                "path": written.path,
            },
        )
        yield dg.MaterializeResult(asset_key=qkey, metadata={"dagster/row_count": quarantine.num_rows, "rows_written": quarantine.num_rows, "by_reason": dg.MetadataValue.json(reasons), "path": q_written.path})
        yield reconciliation_result(key, read, raw.num_rows, quarantine.num_rows, n_suppressed)
        yield model_check(key, model, blocking=True).evaluate(raw)

    return _asset
