"""The consented tier (group `consented`): raw data pseudonymized per classification.yaml and kept only where
the subject's consent allows it, as of the event's time (events) or the features' cutoff (CRM profiles).

Reads the raw tables and the privacy layer's identity links, consent state and suppression list (declared
dependencies); the features build on it."""

import contextvars
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource
from pydantic import Field

from personalization_assets.checks import anomalies
from personalization_assets.checks.pandera_checks import model_check, table_schema
from personalization_assets.consented import state as cstate
from personalization_assets.consented.transform import (
    CONSENTED_EVENT_SCHEMA,
    LOOKUPS,
    _required_output,
    consent_events,
    consent_time_sql,
    kept_rows_by_hour,
    prepare_lookups,
    rows_carrying,
    rows_not_carrying,
)
from personalization_assets.core.as_of import resolve_as_of
from personalization_assets.core.asset_keys import (
    CONSENT_STATE,
    CONSENTED_CATALOG,
    CONSENTED_CRM,
    CONSENTED_EVENTS,
    CONSENTED_EVENTS_STATE,
    IDENTITY_LINKS,
    RAW_CATALOG,
    RAW_CRM,
    RAW_EVENTS,
    SUPPRESSION_LIST,
)
from personalization_assets.core.audit import auditor
from personalization_assets.core.hash_chain import table_writer_lock
from personalization_assets.core.partitions import partition_dict, partition_start
from personalization_assets.core.policies import get_policy
from personalization_assets.core.pseudonymize import Pseudonymizer
from personalization_assets.core.schemas import arrow_schema
from personalization_assets.core.storage import LakeStorage
from personalization_assets.core.tracking_plan import RawContent, RawCrmProfile
from personalization_assets.privacy import consent as consent_lib
from personalization_assets.privacy.identity import IDENTITY_SCHEMA
from personalization_assets.privacy.models import ConsentedEvent
from personalization_assets.privacy.erasure import partition_lock
from personalization_assets.privacy.suppression import SUPPRESSION_SCHEMA, LateSuppression
from personalization_assets.privacy.transforms import (
    add_text_stats,
    apply_column_policies,
    empty_text_stats,
    output_column,
    protect_text_columns,
    text_metadata,
)
from personalization_assets.resources import PlatformConfig

GROUP = "consented"
OWNERS = ["team:privacy-engineering"]
RAW_CRM_SCHEMA = arrow_schema(RawCrmProfile)


def _write_metadata(written, extra=None) -> dict:
    return {"dagster/row_count": written.rows, "rows_written": written.rows, "path": written.path, **(extra or {})}


CONSENT_BATCH_ROWS = 400_000

# how the erasure finds a subject's rows in consented/events. The hours are written by concurrent runs (backfills), so no
# lock is held for a whole build: each hour's write holds that hour's lock (`partition_lock`), re-checking the
# suppression list there, and so does the erasure rewriting the hour (`write_hour_checked`)
EVENTS_ERASURE = {"kind": "lake", "layer": "consented", "table": "events", "partitioned": True, "partition_lock": True,
                  "columns": ["user_pseudonym", "anonymous_pseudonym", "consent_subject", "email_pseudonym", "previous_pseudonym"]}


# held by every consented/crm_profiles build, and by the erasure and the key rotation rewriting the profiles
CRM_LOCK = {"layer": "consented", "name": "crm_profiles_build"}


def write_hour_checked(lake: LakeStorage, pk: str, table: pa.Table, late: LateSuppression) -> int:
    """Write one consented hour under its partition writer lock, without the rows of a subject whose erasure reached
    the suppression list after this run read it; returns how many rows that removed."""
    part = partition_dict(pk)
    with partition_lock(lake, EVENTS_ERASURE, part):  # the lock the handler declares, which the erasure takes too
        table, removed = late.filter(table)
        lake.write_table("consented", "events", table, partition=part)
    return removed


def delete_hour_locked(lake: LakeStorage, pk: str) -> None:
    """Delete one consented hour under its partition writer lock (an erasure rewriting it meanwhile would put it back)."""
    part = partition_dict(pk)
    with partition_lock(lake, EVENTS_ERASURE, part):
        lake.delete_partition("consented", "events", part)


def _row_batches(lake: LakeStorage, partition_keys, max_rows: int):
    """Group partitions into batches of at most ~max_rows raw rows (Parquet footers, no data read)."""
    batch, rows = [], 0
    for pk in partition_keys:
        part = partition_dict(pk)
        n = lake.parquet_metadata("raw", "events", part).num_rows if lake.exists("raw", "events", part) else 0
        if batch and rows + n > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(pk)
        rows += n
    if batch:
        yield batch


def hour_us(pk: str) -> int:
    """An hourly partition key's start in epoch microseconds (a consented row's landing_hour)."""
    return int(partition_start(pk).timestamp()) * 1_000_000


def _register_privacy_views(con, lake: LakeStorage):
    """Load identity links, consent state and suppression list into DuckDB temp tables once per run: the
    signatures, the per-subject lookups (`prepare_lookups`, which the batches join) and the suppression test of
    every batch read them, and re-scanning the lake files (over the network on S3) each time costs more."""
    for name, table, schema in (("identity", "identity_links", IDENTITY_SCHEMA), ("consent_state", "consent_state", consent_lib.STATE_SCHEMA),
                                ("suppression", "suppression_list", SUPPRESSION_SCHEMA)):
        lake.register(con, f"__lake_{name}", "privacy", table, empty_schema=schema)
        con.execute(f'create or replace temp table "{name}" as select * from "__lake_{name}"')


def drop_privacy_views(con) -> None:
    """Drop what `_register_privacy_views` and `prepare_lookups` created (the signatures `__sig_new` stay)."""
    for name in ("identity", "consent_state", "suppression", *LOOKUPS):
        con.execute(f'drop table if exists "{name}"')


CONSENTED_STATE_DESCRIPTION = (
    "What consented/events was built from (consented/state.py): per hour the fingerprint of its raw partition "
    "file, an identifier -> hours index, and per identifier a signature of its resolution, jurisdiction, consent "
    "intervals and suppression. The step that writes it finds its own stale hours and rewrites only those."
)


class ConsentedEventsConfig(dg.Config):
    """Run config of the consented tier step (op `consented_events`)."""

    full_refresh: bool = Field(default=False, description="Rebuild every hour present in raw/events (and rebuild the state).")


class ConsentedCrmConfig(dg.Config):
    """Run config of consented/crm_profiles."""

    as_of: str | None = Field(default=None, description="Consent is evaluated at this instant, ISO 8601 (no offset = UTC). "
                              "Default: the end of the last complete landing hour (start of the latest raw/events hour), as for the features.")


def _requested_hours(context: dg.AssetExecutionContext, partitions_def: dg.PartitionsDefinition) -> list[str] | None:
    """The hours of an explicit partition range (UI backfill, `materialize --partitions A..B`), else None."""
    tags = context.run.tags
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if start and end:
        return list(partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(start, end)))
    single = tags.get("dagster/partition")
    return [single] if single else None


def _emit_check(context: dg.AssetExecutionContext, result: dg.AssetCheckResult, failed: list[str]):
    """Yield the check result when the run selected the check; else (the state alone was requested: every plain
    `personalization materialize`, whose plan holds the state, not the hours; automation) record the same evaluation
    as a runtime event, so the check is never skipped, and add a failed blocking one to `failed`: the step raises
    once its outputs and checks are recorded (a logged evaluation does not block by itself; it used to be logged
    without `blocking`, and the features and segments were built from the hours it failed on)."""
    key = dg.AssetCheckKey(CONSENTED_EVENTS, result.check_name)
    if key in context.selected_asset_check_keys:
        yield result
    else:
        blocking = context.assets_def.get_spec_for_check_key(key).blocking
        context.log_event(dg.AssetCheckEvaluation(asset_key=CONSENTED_EVENTS, check_name=result.check_name, passed=result.passed,
                                                  metadata=result.metadata or {}, severity=result.severity, blocking=blocking))
        if not result.passed and blocking and result.severity == dg.AssetCheckSeverity.ERROR:
            failed.append(result.check_name)


def build_consented_assets(partitions_def: dg.PartitionsDefinition, storage_kind: str) -> list:
    first_hour = partitions_def.start if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition) else None

    def valid_key(pk: str) -> bool:
        return first_hour is None or partition_start(pk) >= first_hour

    deps = [RAW_EVENTS, CONSENT_STATE, IDENTITY_LINKS, SUPPRESSION_LIST]
    anomaly_config = anomalies.load_config().target(CONSENTED_EVENTS.to_user_string())

    @dg.multi_asset(
        name="consented_events",
        specs=[
            dg.AssetSpec(
                CONSENTED_EVENTS_STATE, description=CONSENTED_STATE_DESCRIPTION, group_name=GROUP, owners=OWNERS,
                kinds={"parquet", storage_kind}, deps=deps,
                metadata={"privacy/tier": "consented",
                          "privacy/erasure": {"kind": "lake", "layer": "consented", "table": "events_state", "partitioned": False,
                                              "columns": cstate.ERASURE_COLUMNS, "writer_lock": cstate.STATE_LOCK}},
                tags={"privacy/sensitivity": "pseudonymized"},
            ),
            dg.AssetSpec(
                CONSENTED_EVENTS,
                description="Events of one landing hour, pseudonymized per classification.yaml and kept only if their subject's "
                "consent for at least one purpose was in force AT THE EVENT'S TIME (as-of join; fail-closed). `purposes` lists them. "
                "Written by the unpartitioned step `consented_events`, which rewrites only the stale hours (raw hour new or "
                "changed, or holding an identifier whose resolution, consent, jurisdiction or suppression changed) and logs "
                "one materialization per hour; an explicit partition range rebuilds exactly those hours.",
                group_name=GROUP, owners=OWNERS, kinds={"parquet", storage_kind, "duckdb"}, deps=deps,
                partitions_def=partitions_def, skippable=True,
                metadata={"privacy/tier": "consented", "dagster/column_schema": table_schema(ConsentedEvent),
                          "privacy/erasure": EVENTS_ERASURE},
                tags={"privacy/sensitivity": "pseudonymized"},
            ),
        ],
        check_specs=[
            model_check(CONSENTED_EVENTS, ConsentedEvent, blocking=True).spec,
            dg.AssetCheckSpec("consented_le_raw", asset=CONSENTED_EVENTS, blocking=True,
                              description="Per partition, consented rows <= raw rows."),
            # data anomalies per hour written vs the same hour in previous weeks (checks/anomalies.yaml)
            *anomalies.event_check_specs(CONSENTED_EVENTS, partitions_def, anomaly_config),
        ],
        can_subset=True,  # automation requests the unpartitioned state alone (never every hour of consented/events)
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def consented_events(context: dg.AssetExecutionContext, config: ConsentedEventsConfig, lake: LakeStorage, duckdb: DuckDBResource,
                         pseudonymizer: Pseudonymizer, platform: PlatformConfig):
        policy = get_policy()
        audit = auditor(context, lake, platform, CONSENTED_EVENTS)
        # raw rows read, consented rows written, rows decided again in patched hours; exclusions of the rows decided
        totals = {"read": 0, "written": 0, "decided_again": 0, "no_consent": 0, "suppressed": 0}
        text_totals: dict = {"pii_redacted": {}, "formulas_neutralized": {}}
        violations, sample = [], []
        hour_stats: dict[str, dict] = {}  # anomaly statistics of each hour written
        columns = [c for c, cp in policy.columns["events"].items() if cp.action != "drop"]
        cols = policy.columns["events"]
        keys_sql = cstate.hour_keys_sql(_required_output(policy, "events", "user_id"), _required_output(policy, "events", "anonymous_id"),
                                        output_column(cols, "trait_email"), consent_time_sql("", cols))
        key_version = pseudonymizer.chain().active
        with duckdb.get_connection() as con:
            late = LateSuppression(lake, EVENTS_ERASURE["columns"])  # before the list is read
            _register_privacy_views(con, lake)
            prepare_lookups(con)
            cstate.current_signatures(con)
            state = cstate.load_state_into(con, lake, "__state_snapshot")
            # this run's index rows (hour, key, max_ts), kept in DuckDB: tens of millions of rows at 100M events
            con.execute("create or replace temp table __run_keys (hour varchar, key varchar, max_ts bigint)")
            requested = _requested_hours(context, partitions_def)
            events_selected = CONSENTED_EVENTS in context.selected_asset_keys
            # a partitioned run that selected consented/events yields its output (one materialization per hour of the
            # range, as before); otherwise each hour written is logged as a runtime materialization
            range_output = events_selected and requested is not None and not config.full_refresh
            plan = cstate.plan(con, lake, state, policy=policy, active_key_version=key_version,
                               requested=requested, full_refresh=config.full_refresh,
                               valid_key=valid_key)
            state = cstate.snapshot_hours(con, state)
            context.log.info(f"consented/events ({plan.mode}): {len(plan.build)} hour(s) to build, {len(plan.delete)} to delete; "
                             f"stale: {plan.reasons}")
            writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="consented-writer")
            pending: list = []  # (write future, hour, metadata) of hours submitted and not yet logged, oldest first

            def log_written(keep: int) -> None:
                """Log the hours whose writes are done, oldest first, until at most `keep` are pending; a failed write
                raises here, before its hour is logged."""
                while len(pending) > keep:
                    future, pk, hour_md = pending.pop(0)
                    removed = future.result()
                    if removed:  # an erasure processed meanwhile: the rows of its subjects were not written
                        hour_md = {**hour_md, "dagster/row_count": hour_md["dagster/row_count"] - removed,
                                   "rows_written": hour_md["rows_written"] - removed, "excluded_erased_during_run": removed}
                        totals["written"] -= removed
                        totals["suppressed"] += removed
                    if range_output:  # the run's output materializes each hour of its range: this hour's own figures on it
                        context.add_asset_metadata(hour_md, asset_key=CONSENTED_EVENTS, partition_key=pk)
                    else:
                        context.log_event(dg.AssetMaterialization(asset_key=CONSENTED_EVENTS, partition=pk, metadata=hour_md))

            def write_hour(pk: str, part_out: pa.Table, hour_raw_rows: int, hour_md: dict, decided: pa.Table | None = None):
                """Write one consented hour and log its materialization (or add its figures to the range's output).
                `decided`: the rows of the hour this run decided (default: all of them), which the contract check samples:
                the rows a patch keeps as stored were checked by the run that decided them."""
                # the Parquet encoding (pyarrow, outside the GIL) runs in the writer thread while this thread logs the
                # previous hour and prepares the next; an hour is logged only once its file is in place
                # in this step's context (contextvars): the writer thread's read of a changed suppression list is audited
                future = writer.submit(contextvars.copy_context().run, write_hour_checked, lake, pk, part_out, late)
                hour_stats[pk] = anomalies.partition_stats(part_out, hour_raw_rows, 0, anomaly_config.null_columns, ("consent_subject",))
                # this hour's own figures on its own materialization, PII counts included (run totals: run tags)
                hour_md = {"dagster/row_count": part_out.num_rows, "rows_written": part_out.num_rows, "raw_rows_read": hour_raw_rows,
                           **hour_md, "key_version": key_version, **anomalies.stats_metadata(hour_stats[pk])}
                pending.append((future, pk, hour_md))
                log_written(keep=1)
                if part_out.num_rows > hour_raw_rows:
                    violations.append(pk)
                if sum(t.num_rows for t in sample) < 200_000:
                    sample.append(part_out if decided is None else decided)
                totals["written"] += part_out.num_rows

            def decide(raw: pa.Table, batch: list[str]) -> dict:
                """consent_events over `raw` (rows of the batch's hours), its index rows into __run_keys; the kept rows
                stay in DuckDB table __kept. Returns the decisions' counts per landing hour (naive UTC)."""
                _, stats = consent_events(con, raw, policy, pseudonymizer, keep_in="__kept")
                if raw.num_rows:
                    # a row whose landing_hour is not one of the batch's hours gets a null hour: refused below
                    con.register("__batch_hours", pa.table({"hour_us": pa.array([hour_us(pk) for pk in batch], pa.int64()),
                                                            "hour": pa.array(batch, pa.string())}))
                    con.execute(f"insert into __run_keys select m.hour, k.key, k.max_ts from ({keys_sql}) k "
                                "left join __batch_hours m on m.hour_us = k.hour_us")
                    con.unregister("__batch_hours")
                for k in ("no_consent", "suppressed"):
                    totals[k] += stats[k]
                add_text_stats(text_totals, stats)
                return {(h.astimezone(timezone.utc).replace(tzinfo=None) if h.tzinfo else h): v for h, v in stats.get("by_hour", {}).items()}

            def read_raw(batch: list[str]) -> tuple[pa.Table, list[int]]:
                audit.record([(RAW_EVENTS.to_user_string(), pk, columns) for pk in batch])
                parts = [lake.read_table("raw", "events", partition_dict(pk), columns=columns) for pk in batch]
                totals["read"] += sum(t.num_rows for t in parts)
                return pa.concat_tables(parts), [t.num_rows for t in parts]

            try:
                patched = set(plan.patch)
                for batch in _row_batches(lake, [pk for pk in plan.build if pk not in patched], CONSENT_BATCH_ROWS):
                    raw, raw_rows = read_raw(batch)
                    # the kept rows stay in DuckDB (__kept) and come back one hour at a time: the batch is not held in
                    # Arrow whole next to its per-hour copies
                    by_hour = decide(raw, batch)
                    del raw
                    # the batch's hours in order (plan.build is sorted), streamed from one ordered query: nothing else may
                    # use the connection in this loop (the iterator comes first in zip, so that it is run to its end)
                    kept_hours = kept_rows_by_hour(con, "__kept", [partition_start(pk) for pk in batch])
                    for part_out, pk, hour_raw_rows in zip(kept_hours, batch, raw_rows):
                        split = by_hour.get(partition_start(pk).replace(tzinfo=None), {})
                        write_hour(pk, part_out, hour_raw_rows, {
                            "excluded_no_consent": split.get("no_consent", 0), "excluded_suppressed": split.get("suppressed", 0),
                            "build_mode": plan.mode,
                            **text_metadata(split if "pii_redacted" in split else empty_text_stats(policy.columns["events"]))})
                        del part_out
                    con.execute("drop view __kept")
                # hours stale only because some keys' signatures changed: the rows carrying one of those keys are decided
                # again, the others are kept as stored (their decisions read nothing that changed)
                changed = (con.sql(f"select key from {cstate.CHANGED_KEYS}").arrow().read_all().column(0).combine_chunks()
                           if plan.patch else None)
                for batch in _row_batches(lake, plan.patch, CONSENT_BATCH_ROWS):
                    raw, raw_rows = read_raw(batch)
                    subset = raw.take(rows_carrying(con, raw, policy, pseudonymizer, cstate.CHANGED_KEYS))
                    del raw
                    by_hour = decide(subset, batch)
                    totals["decided_again"] += subset.num_rows
                    audit.record([(CONSENTED_EVENTS.to_user_string(), pk, None) for pk in batch])
                    stored = {pk: lake.read_table("consented", "events", partition_dict(pk)) for pk in batch}
                    new_rows = list(kept_rows_by_hour(con, "__kept", [partition_start(pk) for pk in batch]))
                    con.execute("drop view __kept")
                    for pk, fresh, hour_raw_rows in zip(batch, new_rows, raw_rows):
                        kept_as_stored = rows_not_carrying(stored.pop(pk), policy, changed).select(CONSENTED_EVENT_SCHEMA.names)
                        part_out = pa.concat_tables([kept_as_stored.cast(CONSENTED_EVENT_SCHEMA), fresh])
                        split = by_hour.get(partition_start(pk).replace(tzinfo=None), {})
                        write_hour(pk, part_out, hour_raw_rows, {
                            "build_mode": "patch", "rows_kept_as_stored": kept_as_stored.num_rows,
                            "rows_decided_again": sum(split.get(k, 0) for k in ("kept", "no_consent", "suppressed")),
                            "decided_again_kept": split.get("kept", 0), "decided_again_excluded_no_consent": split.get("no_consent", 0),
                            "decided_again_excluded_suppressed": split.get("suppressed", 0)}, decided=fresh)
                        del part_out
                log_written(keep=0)
            finally:
                writer.shutdown(wait=True)  # on an error too: no write is still running once the step ends
            for pk in plan.delete:
                delete_hour_locked(lake, pk)
            if con.execute("select count(*) from __run_keys where hour is null").fetchall()[0][0]:
                raise AssertionError("consented/events: a processed row's landing_hour is not the hour of its raw partition")
            # the state is written after every hour it describes: a run killed before this point leaves the old
            # state, whose fingerprints make the next run redo this run's hours. It is merged, under the state's
            # lock, into the state as other runs left it meanwhile (concurrent backfill runs keep each other's hours)
            # the per-run copies of the privacy tables are done with: free DuckDB's memory for the commit
            drop_privacy_views(con)
            state_rows, written = cstate.commit(con, lake, state, plan, "__run_keys", policy, late=late)
        from personalization_assets.raw.assets import record_run_totals

        text_totals_md = text_metadata(text_totals)
        record_run_totals(context, CONSENTED_EVENTS.to_user_string(), {"partitions": len(plan.build), "raw_rows_read": totals["read"],
                                                        "rows_written": totals["written"], "hours_patched": len(plan.patch),
                                                        "rows_decided_again_in_patched_hours": totals["decided_again"], "excluded_no_consent": totals["no_consent"],
                                                        "excluded_suppressed": totals["suppressed"],
                                                        "pii_redacted": text_totals_md["pii_redacted_total"],
                                                        "formulas_neutralized": sum(text_totals["formulas_neutralized"].values())})
        if CONSENTED_EVENTS_STATE in context.selected_asset_keys:
            yield dg.MaterializeResult(asset_key=CONSENTED_EVENTS_STATE, metadata={
                "build_mode": plan.mode, "hours_built": len(plan.build), "hours_patched": len(plan.patch), "hours_deleted": len(plan.delete),
                "hours_retired_by_raw_retention": len(plan.retire), "hours_marked_dirty": len(plan.dirty),
                "stale_hours_by_reason": dg.MetadataValue.json(plan.reasons),
                "hours_built_list": dg.MetadataValue.json(plan.build[:500]), "hours_patched_list": dg.MetadataValue.json(plan.patch[:500]), "hours_deleted_list": dg.MetadataValue.json(plan.delete[:500]),
                "raw_rows_read": totals["read"], "rows_written": totals["written"], "state_rows": state_rows,
                "path": written.path, "key_version": key_version, **text_metadata(text_totals),
            })
        if events_selected:
            # Without an output, Dagster skips every step downstream of consented/events in this run (features in a
            # whole-pipeline run). In a run without partition tags this output carries no partition: the hours
            # themselves are the runtime materializations logged above.
            # In a range run the output materializes every hour of the range: run totals there would repeat on
            # each hour (each has its own figures, above; the totals are run tags and on consented/events_state)
            yield dg.MaterializeResult(asset_key=CONSENTED_EVENTS, metadata={} if range_output else {
                "build_mode": plan.mode, "hours_written": len(plan.build), "hours_deleted": len(plan.delete),
                "key_version": key_version, **text_metadata(text_totals)})
        sample_table = pa.concat_tables(sample) if sample else CONSENTED_EVENT_SCHEMA.empty_table()
        failed: list[str] = []
        yield from _emit_check(context, model_check(CONSENTED_EVENTS, ConsentedEvent, blocking=True).evaluate(sample_table), failed)
        yield from _emit_check(context, dg.AssetCheckResult(asset_key=CONSENTED_EVENTS, check_name="consented_le_raw", passed=not violations,
                                                            metadata={"violating_partitions": dg.MetadataValue.json(violations)}), failed)
        # anomaly checks last (one evaluation per hour written): a blocking one that fails stops downstream assets
        results = anomalies.evaluate_run_partitions(context, CONSENTED_EVENTS, hour_stats, anomaly_config)
        yield from anomalies.emit_check_results(context, CONSENTED_EVENTS, results, anomaly_config)
        if failed:
            raise dg.Failure(
                description=f"blocking check failed on {CONSENTED_EVENTS.to_user_string()}: {', '.join(failed)} (the hours are "
                "written and each evaluation is recorded; downstream steps of this run do not run, and the next run "
                "rebuilds this step)",
                metadata={"failed_checks": dg.MetadataValue.json(failed)},
            )

    @dg.asset(
        key=CONSENTED_CRM,
        description="Current CRM profiles, pseudonymized per classification.yaml (names dropped, birth date -> age band), "
        "only for users with consent for at least one purpose at as_of (default: the end of the last complete landing hour, "
        "as for the features; run config `as_of` overrides it); `purposes` lists them.",
        group_name=GROUP, owners=OWNERS, kinds={"parquet", "duckdb"},
        deps=[RAW_CRM, CONSENT_STATE, IDENTITY_LINKS, SUPPRESSION_LIST],
        metadata={"privacy/tier": "consented",
                  "privacy/erasure": {"kind": "lake", "layer": "consented", "table": "crm_profiles", "columns": ["user_pseudonym", "email_pseudonym"],
                                      "writer_lock": CRM_LOCK}},
    )
    def consented_crm_profiles(context: dg.AssetExecutionContext, config: ConsentedCrmConfig, lake: LakeStorage, duckdb: DuckDBResource,
                               pseudonymizer: Pseudonymizer, platform: PlatformConfig):
        # held while the privacy tables are read and the profiles written: the erasure rewriting them waits for it (a
        # build that read the suppression list before an erasure wrote the erased user's profile back after it)
        with table_writer_lock(lake, CRM_LOCK):
            return _build_crm_profiles(context, config, lake, duckdb, pseudonymizer, platform)

    def _build_crm_profiles(context: dg.AssetExecutionContext, config: ConsentedCrmConfig, lake: LakeStorage, duckdb: DuckDBResource,
                            pseudonymizer: Pseudonymizer, platform: PlatformConfig) -> dg.MaterializeResult:
        policy = get_policy()
        # consent is checked at the same cutoff the features use (one rule: features/params.py resolve_as_of)
        as_of, as_of_source = resolve_as_of(config.as_of, lake, context.log)
        as_of_sql = f"TIMESTAMPTZ '{as_of.strftime('%Y-%m-%d %H:%M:%S.%f')}+00:00'"
        auditor(context, lake, platform, CONSENTED_CRM).record([(RAW_CRM.to_user_string(), None, None)])
        with duckdb.get_connection() as con:
            _register_privacy_views(con, lake)
            lake.register(con, "crm_all", "raw", "crm_profiles", empty_schema=RAW_CRM_SCHEMA)
            con.execute("create or replace temp table crm_current as select * from crm_all where is_current")
            selects, joins = apply_column_policies(con, "crm_current", policy.columns["crm_profiles"], pseudonymizer)
            con.execute(f"create or replace temp table __crm as select {', '.join(selects)} from crm_current r {' '.join(joins)}")
            text_stats = protect_text_columns(con, "__crm", policy.columns["crm_profiles"])
            table = con.sql(
                f"""select c.*, list(s.purpose order by s.purpose) as purposes
                   from __crm c
                   join consent_state s on s.consent_subject = c.user_pseudonym and s.status = 'granted'
                        and s.valid_from <= {as_of_sql} and (s.valid_to is null or s.valid_to > {as_of_sql})
                   where c.user_pseudonym not in (select identifier from suppression)
                     and coalesce(c.email_pseudonym, '') not in (select identifier from suppression)
                   group by all order by c.user_pseudonym"""
            ).arrow().read_all()
            total = con.execute("select count(*) from __crm").fetchall()[0][0]
        written = lake.write_table("consented", "crm_profiles", table)
        return dg.MaterializeResult(metadata=_write_metadata(written, {"current_profiles": int(total), "excluded_no_consent_or_suppressed": int(total - table.num_rows),
                                                                       "as_of": as_of.isoformat(), "as_of_source": as_of_source,
                                                                       **text_metadata(text_stats)}))

    @dg.asset(
        key=CONSENTED_CATALOG,
        description="Content catalog (no personal data) as allowed by classification.yaml.",
        group_name=GROUP, owners=OWNERS, kinds={"parquet", "duckdb"}, deps=[RAW_CATALOG],
        metadata={"privacy/tier": "consented"},
    )
    def consented_content_catalog(context: dg.AssetExecutionContext, lake: LakeStorage, duckdb: DuckDBResource, pseudonymizer: Pseudonymizer, platform: PlatformConfig):
        policy = get_policy()
        auditor(context, lake, platform, CONSENTED_CATALOG).record([(RAW_CATALOG.to_user_string(), None, None)])
        with duckdb.get_connection() as con:
            lake.register(con, "catalog", "raw", "content_catalog", empty_schema=arrow_schema(RawContent))
            selects, joins = apply_column_policies(con, "catalog", policy.columns["content_catalog"], pseudonymizer)
            con.execute(f"create or replace temp table __catalog as select {', '.join(selects)} from catalog r {' '.join(joins)} order by r.content_id")
            text_stats = protect_text_columns(con, "__catalog", policy.columns["content_catalog"])
            table = con.sql("select * from __catalog order by content_id").arrow().read_all()
        written = lake.write_table("consented", "content_catalog", table)
        return dg.MaterializeResult(metadata=_write_metadata(written, text_metadata(text_stats)))

    return [consented_events, consented_crm_profiles, consented_content_catalog]


