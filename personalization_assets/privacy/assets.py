"""The privacy layer (group `privacy`): identity links, consent ledger and state, suppression list and the
access audit log. The consented tables are the next layer (personalization_assets/consented/)."""

from datetime import datetime, timezone

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from personalization_assets.checks.pandera_checks import model_check, table_schema
from personalization_assets.core.schemas import arrow_schema
from personalization_assets.privacy import consent as consent_lib
from personalization_assets.privacy import ledger_checkpoint
from personalization_assets.core.asset_keys import (
    ACCESS_AUDIT_LOG,
    CONSENT_LEDGER,
    CONSENT_STATE,
    IDENTITY_LINKS,
    RAW_CRM,
    RAW_EVENTS,
    RAW_REQUESTS,
    SUPPRESSION_LIST,
)
from personalization_assets.core.audit import audit_log, auditor
from personalization_assets.core.platform import duckdb_spill_config, lock_dir
from personalization_assets.privacy.suppression import SUPPRESSION_SCHEMA
from personalization_assets.core.hash_chain import HashChainedLog
from personalization_assets.privacy.identity import (
    IDENTITY_SCHEMA,
    crm_country_jurisdiction_sql,
    jurisdiction_case_sql,
    pseudonymize_column,
)
from personalization_assets.privacy.models import ConsentLedgerRow, ConsentState
from personalization_assets.core.policies import UNKNOWN_JURISDICTION, get_policy
from personalization_assets.core.pseudonymize import Pseudonymizer
from personalization_assets.core.tracking_plan import CONSENT_EVENT, EMAIL_PATTERN, MIN_SUBJECT_IDENTIFIER_CHARS, RawCrmProfile, RawEvent, RawPrivacyRequest
from personalization_assets.resources import PlatformConfig
from personalization_assets.core.storage import ROW_GROUP_ROWS, LakeStorage

GROUP = "privacy"
OWNERS = ["team:privacy-engineering"]

RAW_EVENT_SCHEMA = arrow_schema(RawEvent)
LAYER_PRIVACY = "privacy"
RAW_CRM_SCHEMA = arrow_schema(RawCrmProfile)
RAW_REQUEST_SCHEMA = arrow_schema(RawPrivacyRequest)
# the stored privacy/identity_links: the identity columns and each identifier's linked user pseudonyms
IDENTITY_LINKS_SCHEMA = IDENTITY_SCHEMA.append(pa.field("linked_user_pseudonyms", pa.list_(pa.string())))


def ledger_log(lake: LakeStorage, platform: PlatformConfig) -> HashChainedLog:
    return HashChainedLog(lake=lake.log_store(), name="consent_ledger", schema=consent_lib.LEDGER_SCHEMA, lock_dir=lock_dir(platform),
                          unique_key="decision_id", duckdb_config=duckdb_spill_config(platform))


def _spec(key, description, model=None, deps=(), partitions_def=None, kinds=("parquet",), sensitive=False, erasure=None, extra_md=None):
    md = {"privacy/tier": key.path[0]}
    if model is not None:
        md["dagster/column_schema"] = table_schema(model)
    if erasure is not None:
        md["privacy/erasure"] = erasure
    md.update(extra_md or {})
    return dg.AssetSpec(
        key, description=description, group_name=GROUP, owners=OWNERS, kinds=set(kinds), deps=list(deps),
        metadata=md, tags={"privacy/sensitivity": "sensitive" if sensitive else "pseudonymized"}, partitions_def=partitions_def,
    )


def _register_raw_events(con, lake: LakeStorage, columns: list[str] | None = None):
    lake.register(con, "raw_events_all", "raw", "events", empty_schema=RAW_EVENT_SCHEMA)
    cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
    con.execute(f"create or replace temp view raw_events as select {cols} from raw_events_all")


def _write_metadata(written, extra=None) -> dict:
    return {"dagster/row_count": written.rows, "rows_written": written.rows, "path": written.path, **(extra or {})}


IDENTITY_COLUMNS = ["user_id", "anonymous_id", "previous_id", "trait_email", "context_country", "context_region", "timestamp"]
CRM_IDENTITY_COLUMNS = ["user_id", "email", "country", "is_current", "updated_at"]


class IdentityLinksConfig(dg.Config):
    full_refresh: bool = False  # recompute the partial of every raw hour (default: only the hours that changed)


IDENTITY_PARTIAL_BATCH_ROWS = 2_000_000  # raw rows per DuckDB pass when recomputing hour partials
# held by every identity_links build, and by the erasure and the key rotation rewriting the links and their partials
IDENTITY_LOCK = {"layer": "privacy", "name": "identity_links_build"}


@dg.asset(
    key=IDENTITY_LINKS,
    description="Every identifier (pseudonymized user, anonymous and email ids) with the consent subject it resolves to: "
    "the user it is linked to when linked to exactly one user, else itself; plus the subject's jurisdiction and what "
    "decided it (jurisdiction_source: most recent event location, else current CRM country, else unknown). Folded "
    "forward from per-raw-hour partials (privacy/identity_partials): a run reads only the raw hours that changed.",
    group_name=GROUP, owners=OWNERS, kinds={"parquet", "duckdb"}, deps=[RAW_EVENTS, RAW_CRM],
    metadata={"privacy/tier": "privacy", "privacy/erasure": {"kind": "lake", "layer": "privacy", "table": "identity_links",
                                                          "columns": ["identifier", "consent_subject"], "writer_lock": IDENTITY_LOCK,
                                                          "also": [{"layer": "privacy", "table": "identity_partials", "partitioned": True,
                                                                    "columns": ["identifier", "user_pseudonym"]}]}},
    tags={"privacy/sensitivity": "sensitive"},
)
def identity_links(context: dg.AssetExecutionContext, config: IdentityLinksConfig, lake: LakeStorage, duckdb: DuckDBResource,
                   pseudonymizer: Pseudonymizer, platform: PlatformConfig):
    from personalization_assets.core.hash_chain import table_writer_lock

    # held from the raw listing to the consumed record: the erasure and the rotation rewriting the links or their
    # partials wait for it (a build that read a raw hour before the erasure rewrote it wrote the subject's partial back
    # after the erasure had verified it), and two builds never interleave their partials and records
    with table_writer_lock(lake, IDENTITY_LOCK):
        return _build_identity_links(context, config, lake, duckdb, pseudonymizer, platform)


def _build_identity_links(context: dg.AssetExecutionContext, config: IdentityLinksConfig, lake: LakeStorage, duckdb: DuckDBResource,
                          pseudonymizer: Pseudonymizer, platform: PlatformConfig) -> dg.MaterializeResult:
    import numpy as np

    from personalization_assets.privacy import incremental as inc
    from personalization_assets.privacy.identity_partials import PARTIAL_SCHEMA, PARTIALS_TABLE, RAW_COLUMNS, hour_partials, identity_from_partials
    from personalization_assets.core.retention import partition_before, read_cutoffs
    from personalization_assets.privacy.operations import rekey_table

    policy = get_policy()
    chain = pseudonymizer.chain()
    active = str(chain.active)
    # listing first (metadata only): an hour rewritten after this point is recorded with its old fingerprint -> re-read next run
    current = lake.partition_fingerprints("raw", "events")
    consumed = inc.read_consumed(lake, "identity_links")
    recorded_key = (consumed.settings.get("key_version") if consumed else None) or active
    full = config.full_refresh or consumed is None or int(recorded_key) > int(active)
    stored = set(lake.partition_fingerprints(LAYER_PRIVACY, PARTIALS_TABLE))
    # an hour whose partial is missing (never written, removed by hand) is recomputed too
    changed = sorted(set(inc.changed_partitions(current, consumed, full)) | (set(current) - stored))
    # the partial of a raw hour that is gone goes too (the landing no longer holds it), except when retention removed it:
    # the links it holds attribute consent decisions the ledger keeps for years (an anonymous visitor's opt-out, then a
    # login): dropped with the raw hour, the user fell back to the jurisdiction's default a month later
    raw_cutoff = read_cutoffs(lake).get("raw")  # what the retention run removed (core/retention.py)
    gone = sorted(stored - set(current))
    stale_paths = {p for p in gone if not partition_before(inc.partition_of(p), raw_cutoff)}
    stale = [inc.partition_of(p) for p in sorted(stale_paths)]
    raw_columns = IDENTITY_COLUMNS + ["landing_hour"]
    reads = [("raw/events", "*", raw_columns)] if full or len(changed) > 500 else [("raw/events", p, raw_columns) for p in changed]
    auditor(context, lake, platform, IDENTITY_LINKS).record(
        reads + [("raw/crm_profiles", None, CRM_IDENTITY_COLUMNS), (f"privacy/{PARTIALS_TABLE}", "*", None)])
    rekeyed = 0
    if recorded_key != active:
        # the active key changed without the rotation job: bring the stored partials this run does not recompute to the
        # active version first — those kept past raw retention included (no raw hour recomputes them: left under the old
        # version, their links matched nothing, and the erasure, which looks for active-version pseudonyms, missed them)
        for path in sorted(stored - set(changed) - stale_paths):
            part = inc.partition_of(path)
            if lake.exists(LAYER_PRIVACY, PARTIALS_TABLE, part):
                new, n = rekey_table(lake.read_table(LAYER_PRIVACY, PARTIALS_TABLE, part), chain, active)
                if n:
                    lake.write_table(LAYER_PRIVACY, PARTIALS_TABLE, new, partition=part)
                    rekeyed += 1
    raw_rows = 0
    with duckdb.get_connection() as con:
        for batch in inc.row_batches(lake, "raw", "events", changed, IDENTITY_PARTIAL_BATCH_ROWS):
            lake.register_partitions(con, "__raw_hours", "raw", "events", [inc.partition_of(p) for p in batch], RAW_EVENT_SCHEMA, RAW_COLUMNS)
            raw_rows += con.execute("select count(*) from __raw_hours").fetchall()[0][0]
            partials = hour_partials(con, pseudonymizer, "__raw_hours")
            unexpected = set(pa.compute.unique(partials["partition"]).to_pylist()) - set(batch)
            if unexpected:
                raise dg.Failure(f"raw/events rows whose landing_hour is not their partition's hour ({sorted(unexpected)[:5]}) in "
                                 f"partitions {batch[:5]}: raw/events is corrupt; rematerialize those raw hours")
            # sorted by partition: each hour is one slice. An hour without identifiers gets an empty partial (it
            # replaces an older one)
            keys = np.asarray(partials["partition"].to_pylist(), dtype=object)
            body = partials.drop_columns(["partition"]).cast(PARTIAL_SCHEMA)
            for path in batch:
                lo, hi = int(np.searchsorted(keys, path, "left")), int(np.searchsorted(keys, path, "right"))
                lake.write_table(LAYER_PRIVACY, PARTIALS_TABLE, body.slice(lo, hi - lo), partition=inc.partition_of(path))
        for part in stale:  # the raw hour is gone, not by retention: so is what it contributed
            lake.delete_partition(LAYER_PRIVACY, PARTIALS_TABLE, part)
        lake.register(con, "__partials", LAYER_PRIVACY, PARTIALS_TABLE, empty_schema=PARTIAL_SCHEMA)
        lake.register(con, "raw_crm", "raw", "crm_profiles", empty_schema=RAW_CRM_SCHEMA)
        identity_from_partials(con, pseudonymizer, jurisdiction_case_sql(policy), "__partials")
        ambiguous = con.execute("select count(*) from __identity where linked_users > 1").fetchall()[0][0]
        # streamed from DuckDB into the Parquet file: the table is never held whole in Python (millions of rows at 100M)
        table = con.sql(
            f"""select {', '.join(f'i."{c}"' for c in IDENTITY_SCHEMA.names)}, coalesce(l.users, []) as linked_user_pseudonyms
               from __identity i left join (select identifier, identifier_kind, list(user_pseudonym order by user_pseudonym) as users
                                            from __links group by 1, 2) l using (identifier, identifier_kind)
               order by identifier_kind, identifier"""
        )
        written = lake.write_table("privacy", "identity_links", table.to_arrow_reader(ROW_GROUP_ROWS).cast(IDENTITY_LINKS_SCHEMA))
    inc.write_consumed(lake, "identity_links", current, {"key_version": active})  # after the output: a crash re-processes
    return dg.MaterializeResult(metadata=_write_metadata(written, {
        "identifiers": written.rows,
        "ambiguous_identifiers_not_merged": int(ambiguous),
        "key_version": active,
        "dev_key": pseudonymizer.is_dev_key,
        "full_refresh": full,
        "raw_hours": len(current),
        "raw_hours_read": len(changed),
        "raw_rows_read": int(raw_rows),
        "partials_deleted": len(stale),
        "partials_kept_past_raw_retention": len(gone) - len(stale),
        "partials_rekeyed": rekeyed,
    }))


class AuditLogConfig(dg.Config):
    """Run config of privacy/access_audit_log."""

    full_refresh: bool = False  # verify the whole chain (default: what was appended since the last verified checkpoint)


class ConsentLedgerConfig(dg.Config):
    full_refresh: bool = False  # decide from every raw hour (default: only the hours changed since the last run)


LEDGER_SEGMENT_ROWS = 500_000
CONSENT_INPUT_COLUMNS = ["user_id", "anonymous_id", "message_id", "timestamp", "received_at", "consent_preferences", "gpc", "type", "event",
                         "context_country", "context_region"]


@dg.asset(
    key=CONSENT_LEDGER,
    description="Append-only, hash-chained record of every consent decision (CMP events, GPC signals, opt-out/opt-in "
    "requests). Each row: identifier pseudonym, purpose, granted/denied/withdrawn, effective time, source, policy version, "
    "jurisdiction and what decided it (the event's location, else the user's current CRM country; a request's own "
    "jurisdiction field; else unknown).",
    group_name=GROUP, owners=OWNERS, kinds={"parquet"}, deps=[RAW_EVENTS, RAW_REQUESTS, RAW_CRM],
    metadata={"privacy/tier": "privacy", "dagster/column_schema": table_schema(ConsentLedgerRow)},
    tags={"privacy/sensitivity": "sensitive", "privacy/log-writer": "consent_ledger"},
    check_specs=[
        dg.AssetCheckSpec("hash_chain_intact", asset=CONSENT_LEDGER, blocking=True,
                          description="Recomputes the chain (segments appended since the last verified checkpoint; all of them when "
                          "a checkpointed segment was rewritten): fails on any edited, removed, inserted or reordered row."),
        model_check(CONSENT_LEDGER, ConsentLedgerRow, blocking=True).spec,
    ],
)
def consent_ledger(context: dg.AssetExecutionContext, config: ConsentLedgerConfig, lake: LakeStorage, duckdb: DuckDBResource,
                   pseudonymizer: Pseudonymizer, platform: PlatformConfig):
    from personalization_assets.privacy import incremental as inc

    policy = get_policy()
    log = ledger_log(lake, platform)
    # read-decide-append under the ledger's writer lock: a concurrent run (a second CLI, a retry racing the
    # original) waits, then sees this run's rows (and what they consumed) and appends none of them again
    with log.exclusive():
        # verified from the checkpoint: only segments appended since the last verified run (privacy/ledger_checkpoint.py)
        checked = ledger_checkpoint.verify(log, lake, full=config.full_refresh, recheck_segments=platform.log_recheck_segments)
        before = checked.status  # also fails on a decision id stored twice
        if before.ok:
            ledger_checkpoint.write_checkpoint(lake, log, checked)
            # only raw hours changed since the ledger last consumed them (listing first: metadata only); a new policy
            # version decides every hour again (its purposes may map differently)
            current = lake.partition_fingerprints("raw", "events")
            consumed = inc.read_consumed(lake, "consent_ledger")
            full = config.full_refresh or consumed is None or consumed.settings.get("policy_version") != policy.version
            changed = inc.changed_partitions(current, consumed, full)
            reads = ([("raw/events", "*", CONSENT_INPUT_COLUMNS)] if full or len(changed) > 500
                     else [("raw/events", p, CONSENT_INPUT_COLUMNS) for p in changed])
            auditor(context, lake, platform, CONSENT_LEDGER).record(
                reads + [("raw/privacy_requests", None, ["request_id", "type", "user_id", "email", "received_at", "jurisdiction"]),
                         ("raw/crm_profiles", None, ["user_id", "country", "is_current", "updated_at"])]
            )
            outcome = _append_new_decisions(log, lake, duckdb, pseudonymizer, policy, before.rows,
                                            None if full else [inc.partition_of(p) for p in changed])
            inc.write_consumed(lake, "consent_ledger", current, {"policy_version": policy.version})  # after the append
            verified = ledger_checkpoint.verify(log, lake, recheck_segments=platform.log_recheck_segments)  # the segments just appended
            if verified.status.ok:
                ledger_checkpoint.write_checkpoint(lake, log, verified)
    if not before.ok:
        # never append to a broken chain: that would bury the evidence
        yield dg.MaterializeResult(metadata={"appended": 0, "chain_problem": before.problem or "", **checked.metadata()})
        yield dg.AssetCheckResult(check_name="hash_chain_intact", passed=False, metadata={"problem": before.problem or "", "rows": before.rows,
                                                                                           **checked.metadata()})
        yield model_check(CONSENT_LEDGER, ConsentLedgerRow, blocking=True).evaluate(log.read_all())
        return
    appended, by_decision, candidates = outcome
    after = verified.status
    yield dg.MaterializeResult(metadata={**checked.metadata(), "segments_verified_after_append": verified.segments_verified,
        "rows_written": appended, "appended": appended, "ledger_rows": after.rows, "segments": after.segments,
        "head_hash": after.head_hash, "appended_by_decision": dg.MetadataValue.json(by_decision),
        "candidates_seen": candidates, "policy_version": policy.version,
        "full_refresh": full, "raw_hours": len(current), "raw_hours_read": len(changed),
    })
    yield dg.AssetCheckResult(check_name="hash_chain_intact", passed=after.ok,
                              metadata={"rows": after.rows, "head_hash": after.head_hash, "problem": after.problem or "",
                                        **verified.metadata()})
    # the schema check validates the newest rows (this run's appends first), not the whole history
    yield model_check(CONSENT_LEDGER, ConsentLedgerRow, blocking=True).evaluate(log.read_recent(min(max(appended, 1), 200_000)))


def _append_new_decisions(log: HashChainedLog, lake: LakeStorage, duckdb: DuckDBResource, pseudonymizer: Pseudonymizer, policy,
                          head_seq: int, partitions: list[dict] | None = None) -> tuple[int, dict, int]:
    """Decide the ledger rows not yet recorded and append them (the caller holds the writer lock; the
    ledger was read up to `head_seq`). `partitions`: the raw/events hours to decide from (None: all of them).
    Returns (rows appended, appended per decision, candidates seen)."""
    jur = jurisdiction_case_sql(policy)
    unknown = UNKNOWN_JURISDICTION
    with duckdb.get_connection() as con:
        if partitions is None:
            _register_raw_events(con, lake, CONSENT_INPUT_COLUMNS)
        else:
            lake.register_partitions(con, "raw_events", "raw", "events", partitions, RAW_EVENT_SCHEMA, CONSENT_INPUT_COLUMNS)
        lake.register(con, "raw_requests", "raw", "privacy_requests", empty_schema=RAW_REQUEST_SCHEMA)
        lake.register(con, "raw_crm", "raw", "crm_profiles", empty_schema=RAW_CRM_SCHEMA)
        con.execute(
            f"""create or replace temp table __consent_raw as
                select *, (type = 'track' and event = $ev) as is_consent_event,
                       {jur.format(country='context_country', region='context_region')} as __jur_location
                from raw_events
                where (type = 'track' and event = $ev and consent_preferences is not null) or coalesce(gpc, false)""",
            {"ev": CONSENT_EVENT},
        )
        con.execute("create or replace temp table __req as select * from raw_requests where type in ('opt_out_sale', 'opt_in_sale')")
        # a decision's jurisdiction: the event's location, else the user's current CRM country, else unknown
        crm_jur = crm_country_jurisdiction_sql(jur, "arg_max(nullif(trim(country), ''), updated_at)")
        con.execute(
            f"""create or replace temp table __crm_jur as
                select user_id, {crm_jur} as jurisdiction
                from raw_crm
                where is_current and user_id in (select user_id from __consent_raw union all select user_id from __req)
                group by 1"""
        )
        pseudonymize_column(con, pseudonymizer, "__consent_raw", "user_id", "id", "__cu")
        pseudonymize_column(con, pseudonymizer, "__consent_raw", "anonymous_id", "id", "__ca")
        con.execute(
            f"""create or replace temp view consent_inputs as
               select coalesce(u.pseudonym, a.pseudonym) as identifier_pseudonym,
                      case when r.user_id is not null then 'user' else 'anonymous' end as identifier_kind,
                      -- a decision takes effect at its event time, but never after it reached us: a client clock ahead
                      -- (the collector accepts +24 h) made an earlier grant override a withdrawal made since
                      r.message_id, least(r.timestamp, r.received_at) as timestamp, r.consent_preferences,
                      coalesce(r.gpc, false) as gpc, r.is_consent_event,
                      coalesce(r.__jur_location, c.jurisdiction, '{unknown}') as jurisdiction,
                      case when r.__jur_location is not null then 'event_location'
                           when c.jurisdiction is not null then 'crm_country' else 'unknown' end as jurisdiction_source
               from __consent_raw r left join __cu u on u.value = r.user_id left join __ca a on a.value = r.anonymous_id
               left join __crm_jur c on c.user_id = r.user_id"""
        )
        pseudonymize_column(con, pseudonymizer, "__req", "user_id", "id", "__ru")
        pseudonymize_column(con, pseudonymizer, "__req", "email", "email", "__re")
        # a request's jurisdiction field names a policy jurisdiction (any case) or a country/subdivision code
        # (`DE`, `US-NY`: matched like a CRM country, `default` if listed nowhere); missing -> CRM country -> unknown
        by_name = " ".join(f"when '{j.upper()}' then '{j}'" for j in policy.jurisdictions)
        con.execute(
            f"""create or replace temp view request_inputs as
                with r as (
                    select r.*, nullif(trim(r.jurisdiction), '') as __j,
                           case upper(trim(r.jurisdiction)) {by_name} end as __named
                    from __req r
                )
                select coalesce(u.pseudonym, e.pseudonym) as identifier_pseudonym,
                       case when u.pseudonym is not null then 'user' else 'email' end as identifier_kind,
                       r.request_id, r.type, r.received_at,
                       case when r.__j is not null then coalesce(r.__named, {crm_country_jurisdiction_sql(jur, 'r.__j')})
                            else coalesce(c.jurisdiction, '{unknown}') end as jurisdiction,
                       case when r.__j is not null then 'request' when c.jurisdiction is not null then 'crm_country'
                            else 'unknown' end as jurisdiction_source
                from r left join __ru u on u.value = r.user_id left join __re e on e.value = r.email
                left join __crm_jur c on c.user_id = r.user_id
                where coalesce(u.pseudonym, e.pseudonym) is not null"""
        )
        candidates = consent_lib.candidate_decisions(con, policy, recorded_at=datetime.now(timezone.utc))
        from personalization_assets.privacy.ledger_lookup import recorded_for_candidates

        # compare under the current key version, with the stored rows sharing an id or identifier with a candidate only
        existing = recorded_for_candidates(con, log, pseudonymizer.chain(), "__candidates")
        # a GPC signal decides once, at an identifier's first signal: a signal no earlier than the one already recorded
        # (in an hour read now, or anywhere once the recorded signal's hour is gone) is not a new opt-out
        consent_lib.drop_recorded_gpc(con, existing, "__candidates")
        consent_lib.new_ledger_rows(con, existing, "__candidates", "__fresh")
        con.execute(f'drop table "{existing}"')
        by_decision = dict(con.execute("select decision, count(*) from __fresh group by 1 order by 1").fetchall())
        # appended in ledger order, one segment per LEDGER_SEGMENT_ROWS: memory bounded by a segment, not the history
        appended, checked = 0, head_seq
        for batch in con.sql(consent_lib.LEDGER_ORDER_SQL.format(table="__fresh")).to_arrow_reader(LEDGER_SEGMENT_ROWS):
            # refuses a decision id already stored (the safety net should the lock have been lost)
            n, _ = log.append(pa.Table.from_batches([batch]).cast(consent_lib.CANDIDATE_SCHEMA), checked_through=checked)
            appended, checked = appended + n, log.last_append_seq
    return appended, by_decision, candidates


class ConsentStateConfig(dg.Config):
    full_refresh: bool = False  # rebuild every subject (default: only subjects touched by new ledger rows or identity changes)


# held by every consent_state build, and by the erasure and key rotation rewriting the state in place
CONSENT_STATE_LOCK = {"layer": "privacy", "name": "consent_state_build"}


def consent_state_lock(lake: LakeStorage):
    """consent_state's writer lock (fcntl locally, an S3 lease in the lake)."""
    from personalization_assets.core.hash_chain import table_writer_lock

    return table_writer_lock(lake, CONSENT_STATE_LOCK)


@dg.asset(
    key=CONSENT_STATE,
    description="Effective consent per subject and purpose as validity intervals [valid_from, valid_to), including the "
    "jurisdiction's no-record default before the first decision (deny for personalization everywhere; deny for every "
    "purpose in the `unknown` jurisdiction: no event location and no CRM country). Each row records the subject's "
    "jurisdiction and its source. Used for as-of joins. Folded forward: a run recomputes only the subjects touched by "
    "ledger rows appended since, or whose identity resolution changed (privacy/consent_state_incremental.py); erased "
    "subjects (suppression list) are never in it.",
    group_name=GROUP, owners=OWNERS, kinds={"parquet", "duckdb"}, deps=[CONSENT_LEDGER, IDENTITY_LINKS, SUPPRESSION_LIST],
    metadata={"privacy/tier": "privacy", "dagster/column_schema": table_schema(ConsentState),
              "privacy/erasure": {"kind": "lake", "layer": "privacy", "table": "consent_state", "columns": ["consent_subject"],
                                  "writer_lock": CONSENT_STATE_LOCK,
                                  "also": [{"layer": "privacy", "table": "consent_state_inputs", "columns": ["identifier", "consent_subject"]}]}},
    check_specs=[
        model_check(CONSENT_STATE, ConsentState, blocking=True).spec,
        dg.AssetCheckSpec("intervals_do_not_overlap", asset=CONSENT_STATE, blocking=True,
                          description="Per subject and purpose, intervals are contiguous and never overlap."),
    ],
)
def consent_state(context: dg.AssetExecutionContext, config: ConsentStateConfig, lake: LakeStorage, duckdb: DuckDBResource,
                  pseudonymizer: Pseudonymizer, platform: PlatformConfig):
    from personalization_assets.privacy import consent_state_incremental as csi

    policy = get_policy()
    auditor(context, lake, platform, CONSENT_STATE).record([("privacy/consent_ledger", None, None), ("privacy/identity_links", None, None),
                                                            ("privacy/suppression_list", None, ["identifier"])])
    # the ledger is immutable: rows written before a key rotation are re-keyed on read
    chain = pseudonymizer.chain()
    # one build at a time: the state and its inputs table are read and rewritten as a pair (two runs interleaving
    # could pair an older state with newer inputs, and the next fold-forward would skip what lies between)
    with consent_state_lock(lake), duckdb.get_connection() as con:
        lake.register(con, "__identity_lake", "privacy", "identity_links", empty_schema=IDENTITY_SCHEMA)
        if "jurisdiction_source" not in {r[0] for r in con.execute("describe __identity_lake").fetchall()}:
            # written by a version that fell back to `default` without a location: its jurisdictions are not trusted
            raise dg.Failure(
                "privacy/identity_links was written before jurisdiction_source existed (its jurisdictions may be a "
                "`default` fallback, not fail-closed): materialize privacy/identity_links, then privacy/consent_state."
            )
        outcome = csi.build(con, lake, ledger_log(lake, platform), chain, policy, "__identity_lake", config.full_refresh)
        state = outcome.table  # a DuckDB temp table: tens of millions of rows at 100M events, never held in Python
        overlaps = con.execute(
            f"""select count(*) from (
                 select valid_from, lag(valid_to) over (partition by consent_subject, purpose order by valid_from) as prev_to
                 from {state}) where prev_to is null and valid_from > timestamptz '1970-01-01 00:00:00+00'
                 or prev_to is not null and prev_to <> valid_from"""
        ).fetchall()[0][0]
        granted = con.sql(f"select purpose, count(distinct consent_subject) from {state} where status = 'granted' and valid_to is null group by 1").fetchall()
        subjects = con.execute(f"select count(distinct consent_subject) from {state}").fetchall()[0][0]
        model_result = model_check(CONSENT_STATE, ConsentState, blocking=True).evaluate_duckdb(con, state, consent_lib.STATE_SCHEMA)
        # inputs removed before the state is replaced and written after it: a run that dies in between leaves no
        # inputs, and the next run rebuilds from scratch
        csi.invalidate_inputs(lake)
        written = lake.write_table("privacy", "consent_state",
                                   con.sql(f"select * from {state}").to_arrow_reader(ROW_GROUP_ROWS).cast(consent_lib.STATE_SCHEMA))
        csi.write_inputs(con, lake, outcome)
    yield dg.MaterializeResult(metadata=_write_metadata(written, {
        "subjects": int(subjects),
        "currently_granted_by_purpose": dg.MetadataValue.json(dict(granted)),
        "full_refresh": outcome.mode == "full", **outcome.metadata(),
    }))
    yield model_result
    yield dg.AssetCheckResult(check_name="intervals_do_not_overlap", passed=overlaps == 0, metadata={"violations": int(overlaps)})


@dg.asset(
    key=SUPPRESSION_LIST,
    description="Pseudonyms of erased subjects: the user, every identifier ever linked to them and the email. "
    "Accumulates (never forgets an erasure when raw requests expire). Ingestion drops them from then on; the erasure "
    "run removes them from every asset.",
    group_name=GROUP, owners=OWNERS, kinds={"parquet", "duckdb"}, deps=[RAW_REQUESTS, IDENTITY_LINKS],
    metadata={"privacy/tier": "privacy"}, tags={"privacy/sensitivity": "sensitive"},
)
def suppression_list(context: dg.AssetExecutionContext, lake: LakeStorage, duckdb: DuckDBResource, pseudonymizer: Pseudonymizer, platform: PlatformConfig):
    auditor(context, lake, platform, SUPPRESSION_LIST).record(
        [("raw/privacy_requests", None, ["request_id", "type", "user_id", "email", "received_at"]), ("privacy/identity_links", None, None)]
    )
    with duckdb.get_connection() as con:
        lake.register(con, "raw_requests", "raw", "privacy_requests", empty_schema=RAW_REQUEST_SCHEMA)
        lake.register(con, "identity", "privacy", "identity_links", empty_schema=IDENTITY_LINKS_SCHEMA)
        # the tracking plan quarantines requests with blank, too-short or malformed identifiers; a raw table
        # written before that rule existed may still hold some: they never reach the suppression list
        n = MIN_SUBJECT_IDENTIFIER_CHARS
        con.execute(
            f"""create or replace temp table __erase as select * from raw_requests where type = 'erasure'
                and (user_id is null or length(trim(user_id)) >= {n})
                and (email is null or (length(trim(email)) >= {n} and regexp_full_match(trim(email), ?)))""",
            [EMAIL_PATTERN],
        )
        pseudonymize_column(con, pseudonymizer, "__erase", "user_id", "id", "__eu")
        pseudonymize_column(con, pseudonymizer, "__erase", "email", "email", "__ee")
        table = con.sql(
            """
            with req as (
                select r.request_id, r.received_at, u.pseudonym as user_p, e.pseudonym as email_p
                from __erase r left join __eu u on u.value = r.user_id left join __ee e on e.value = r.email
            ),
            users as (  -- the user named, and users linked to the email named
                select request_id, received_at, user_p as user_pseudonym from req where user_p is not null
                union
                select r.request_id, r.received_at, unnest(i.linked_user_pseudonyms)
                from req r join identity i on i.identifier = r.email_p and i.identifier_kind = 'email'
            ),
            ids as (
                select request_id, received_at, user_pseudonym as identifier, 'user' as identifier_kind from users
                union
                select request_id, received_at, email_p, 'email' from req where email_p is not null
                union  -- every identifier ever linked to an erased user (inclusive on purpose)
                select u.request_id, u.received_at, i.identifier, i.identifier_kind
                from users u join identity i on list_contains(i.linked_user_pseudonyms, u.user_pseudonym)
            )
            select request_id, identifier, identifier_kind, received_at as requested_at from ids
            """
        ).arrow().read_all().cast(SUPPRESSION_SCHEMA)
        # accumulate: raw requests expire with raw retention, an erasure must not
        previous = lake.read_table("privacy", "suppression_list") if lake.exists("privacy", "suppression_list") else SUPPRESSION_SCHEMA.empty_table()
        con.register("__new", table)
        con.register("__old", previous.cast(SUPPRESSION_SCHEMA))
        table = con.sql(
            """select request_id, identifier, identifier_kind, min(requested_at) as requested_at
               from (select * from __old union all select * from __new) group by 1, 2, 3
               order by request_id, identifier_kind, identifier"""
        ).arrow().read_all().cast(SUPPRESSION_SCHEMA)
    written = lake.write_table("privacy", "suppression_list", table)
    return dg.MaterializeResult(metadata=_write_metadata(written, {"requests": len(set(table["request_id"].to_pylist()))}))


@dg.asset(
    key=ACCESS_AUDIT_LOG,
    description="Append-only, hash-chained log of every read of sensitive data (time, run, reader, asset, partition, "
    "columns, declared purpose). Written by the reading assets; materializing it verifies the chain and reports it.",
    group_name=GROUP, owners=OWNERS, kinds={"parquet"},
    metadata={"privacy/tier": "privacy"}, tags={"privacy/sensitivity": "sensitive"},
    check_specs=[dg.AssetCheckSpec("hash_chain_intact", asset=ACCESS_AUDIT_LOG, blocking=True,
                                   description="Recomputes the audit chain (segments appended since the last verified checkpoint; all of "
                                   "them when a checkpointed segment was rewritten): fails on any edited, removed, inserted or reordered row.")],
)
def access_audit_log(context: dg.AssetExecutionContext, config: AuditLogConfig, lake: LakeStorage, platform: PlatformConfig):
    # every run reads sensitive data, so this log grows with every run: verified from its checkpoint, a run checks what
    # was appended since the last one, not the whole history (privacy/ledger_checkpoint.py, as for the consent ledger)
    log = audit_log(lake, lock_dir(platform))
    with ledger_checkpoint.checkpoint_lock(lake, log):  # not the log's writer lock: appends go on meanwhile
        checked = ledger_checkpoint.verify(log, lake, full=config.full_refresh, recheck_segments=platform.log_recheck_segments)
        status = checked.status
        if status.ok:
            ledger_checkpoint.write_checkpoint(lake, log, checked)
    yield dg.MaterializeResult(metadata={"rows": status.rows, "segments": status.segments, "head_hash": status.head_hash, "rows_written": 0,
                                         **checked.metadata()})
    yield dg.AssetCheckResult(check_name="hash_chain_intact", passed=status.ok, metadata={"rows": status.rows, "problem": status.problem or "",
                                                                                        **checked.metadata()})


def build_privacy_assets() -> list:
    return [identity_links, consent_ledger, consent_state, suppression_list, access_audit_log]
