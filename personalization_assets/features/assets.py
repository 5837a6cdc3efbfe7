"""The features layer (group `features`): consented events -> person-level feature tables in the lake.

One multi-asset computes all seven tables in one DuckDB session (they share the deduplicated,
consent-filtered event history, so splitting them would repeat the expensive part). The SQL lives in
features/sql.py; this module only wires lake I/O, metadata and checks. Definitions: docs/ARCHITECTURE.md, section "Features".
"""


import time
from contextlib import contextmanager
from datetime import datetime

import dagster as dg
from pydantic import Field

from personalization_assets.checks.pandera_checks import model_check, table_schema
from personalization_assets.features import checks as feature_checks
from personalization_assets.core.schemas import arrow_schema
from personalization_assets.features.inputs import consent_state_schema, consented_events_schema
from personalization_assets.features.models import FEATURE_MODELS, EventsClean
from personalization_assets.features.params import PURPOSE, FeatureParams, parse_as_of, resolve_as_of
from personalization_assets.features import partials, person_ranges
from personalization_assets.features.sql import (
    DERIVED,
    TABLES,
    build_identity,
    drop_intermediates,
    select_output_sql,
    temp_table,
)
from personalization_assets.checks import anomalies
from personalization_assets.resources import DuckDBEngine
from personalization_assets.core.storage import ROW_GROUP_ROWS, LakeStorage, WriteResult
from personalization_assets.core.asset_keys import CONSENT_STATE, CONSENTED_EVENTS, CONSENTED_EVENTS_STATE

GROUP = "features"
OWNERS = ["team:personalization"]
LAYER = "features"
# CONSENTED_EVENTS_STATE is the step that rewrites consented/events' stale hours: a run that updates the consented
# tier incrementally selects this state (its hours are logged at runtime), and the features must come after it
FEATURE_KEYS = {table: dg.AssetKey([LAYER, table]) for table in TABLES}

# tables that feed the warehouse: a failed schema check there stops downstream assets
BLOCKING_SCHEMA = {"identity_map", "user_rfm", "content_affinity", "engagement", "purpose_eligibility"}
SESSION_CHECK = "every_consented_event_in_one_session"
IDENTIFIER_CHECK = "no_direct_identifier_columns"

EVENTS_VIEW = "consented_events"
# rows per person range of the events_clean sort (a module setting, so a test can force several ranges on small data)
SORT_RANGE_ROWS = person_ranges.RANGE_ROWS
CONSENT_VIEW = "consent_state"
WRITTEN_VIEW = "features_{table}_written"
# one feature build at a time, and the privacy operations that rewrite features/* in place (erasure, key rotation)
# wait for it: the published tables and the per-person state are one set
BUILD_LOCK = {"layer": LAYER, "name": "feature_build"}
STORAGE_RETRY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)

DESCRIPTIONS = {
    "events_clean": "Consented events usable for personalization at as_of: one row per messageId (earliest received copy), "
                    "late arrivals beyond late_bound_days dropped, with the stitched person_id.",
    "identity_map": "Every anonymous/user pseudonym of events_clean with its person (connected component of the identity "
                    "graph; identifiers linked to more than max_links of the other kind are not merged).",
    "sessions": "Sessions per person: a gap of session_gap_minutes or more starts a new one; runs are cut every max_session_hours.",
    "user_rfm": "Recency (days), frequency (sessions) and monetary value (conversions) per person in the last rfm_window_days.",
    "content_affinity": "Time-decayed share of each person's content engagement per category (half-life half_life_days).",
    "engagement": "Activity pattern per person: active days, sessions per week, mean session dwell, preferred hour and weekday.",
    "purpose_eligibility": "Per person and purpose: every consent subject of the person has consent granted at as_of (fail closed).",
}
# pseudonym columns an erased subject can appear in (the next rebuild recomputes everything without them)
ERASURE_COLUMNS = {
    "identity_map": ["identifier", "person_id"],
    "events_clean": ["person_id", "consent_subject"],
    "sessions": ["person_id"],
    "user_rfm": ["person_id"],
    "content_affinity": ["person_id"],
    "engagement": ["person_id"],
    "purpose_eligibility": ["person_id"],
}
DEPENDENCIES = {
    "identity_map": [CONSENTED_EVENTS, CONSENTED_EVENTS_STATE, CONSENT_STATE],
    "events_clean": [CONSENTED_EVENTS, CONSENTED_EVENTS_STATE, CONSENT_STATE, FEATURE_KEYS["identity_map"]],
    "sessions": [FEATURE_KEYS["events_clean"]],
    "user_rfm": [FEATURE_KEYS["events_clean"], FEATURE_KEYS["sessions"], FEATURE_KEYS["identity_map"]],
    "content_affinity": [FEATURE_KEYS["events_clean"]],
    "engagement": [FEATURE_KEYS["events_clean"], FEATURE_KEYS["sessions"]],
    "purpose_eligibility": [FEATURE_KEYS["events_clean"], CONSENT_STATE],
}


class FeatureConfig(dg.Config):
    """Run config of the feature build (op `feature_tables`)."""

    as_of: str | None = Field(
        default=None,
        description="Cutoff, ISO 8601 (no offset = UTC). Default: the end of the last complete landing hour, i.e. the "
        "start of the latest hour partition present in raw/events (two runs over the same landing give the same features). "
        "Events with timestamp or received_at after it are not used; consent is evaluated at it.",
    )
    late_bound_days: int = Field(default=3, description="Events with timestamp < landing_hour - this many days are rejected.")
    max_links: int = Field(default=5, description="An identifier linked to more identifiers of the other kind than this is not merged.")
    session_gap_minutes: int = Field(default=30, description="A gap of at least this many minutes starts a new session.")
    max_session_hours: int = Field(default=24, description="A session is cut every this many hours from its start.")
    rfm_window_days: int = Field(default=90, description="Window of frequency and monetary: (as_of - days, as_of].")
    half_life_days: float = Field(default=14.0, description="Half-life of an engagement event's weight in content_affinity.")
    full_refresh: bool = Field(default=False, description="Ignore the stored per-person state (features/state_*) and recompute "
                               "it for every person (`personalization materialize --full-refresh`).")

    def to_params(self, default_as_of: datetime | None = None) -> FeatureParams:
        """`default_as_of` applies when no as_of is configured (the build passes `resolve_as_of`'s value)."""
        return FeatureParams(
            as_of=parse_as_of(self.as_of, now=default_as_of),
            late_bound_days=self.late_bound_days,
            max_links=self.max_links,
            session_gap_minutes=self.session_gap_minutes,
            max_session_hours=self.max_session_hours,
            rfm_window_days=self.rfm_window_days,
            half_life_days=self.half_life_days,
        )


def _spec(table: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        FEATURE_KEYS[table],
        description=DESCRIPTIONS[table],
        deps=DEPENDENCIES[table],
        group_name=GROUP,
        owners=OWNERS,
        kinds={"duckdb", "parquet"},
        metadata={
            "dagster/column_schema": table_schema(FEATURE_MODELS[table]),
            "lake_table": f"{LAYER}/{table}",
            "privacy/tier": "features",
            "privacy/purpose": PURPOSE,
            # how the lineage-driven erasure (privacy/erasure.py) removes a subject before the next rebuild
            "privacy/erasure": {"kind": "lake", "layer": LAYER, "table": table, "partitioned": False,
                                "columns": ERASURE_COLUMNS[table], "writer_lock": BUILD_LOCK,
                                # the per-person state the build folds forward (features/partials.py)
                                **({"also": partials.erasure_also()} if table == "sessions" else {})},
        },
        tags={"privacy/sensitivity": "pseudonymous"},
    )


def _check_specs() -> list[dg.AssetCheckSpec]:
    specs = []
    for table in TABLES:
        key = FEATURE_KEYS[table]
        specs.append(model_check(key, FEATURE_MODELS[table], blocking=table in BLOCKING_SCHEMA).spec)
        specs.append(dg.AssetCheckSpec(
            IDENTIFIER_CHECK, asset=key, blocking=True,
            description="No column is a direct identifier that privacy_policies/classification.yaml does not pseudonymize "
                        "(or its raw name), and every pseudonym column holds only ^v\\d+:[0-9a-f]{64}$ values.",
        ))
    specs.append(dg.AssetCheckSpec(
        SESSION_CHECK, asset=FEATURE_KEYS["sessions"], blocking=True,
        additional_deps=[FEATURE_KEYS["events_clean"]],
        description="Every events_clean event (all are consented for personalization) lies in exactly one session of its "
                    "person (ASOF join on person_id, session_start <= timestamp <= session_end; sessions do not overlap).",
    ))
    # data anomalies: each build vs the previous builds (row count, null rates; checks/anomalies.yaml)
    specs.extend(anomalies.feature_check_specs(FEATURE_KEYS.values()))
    return specs


def _build_lock(lake: LakeStorage):
    from personalization_assets.core.hash_chain import table_writer_lock

    return table_writer_lock(lake, BUILD_LOCK)


def _write(con, lake: LakeStorage, table: str, source: str) -> WriteResult:
    reader = con.sql(select_output_sql(table, source)).to_arrow_reader(ROW_GROUP_ROWS)
    return lake.write_table(LAYER, table, reader)


def _write_events_clean(con, lake: LakeStorage, params: FeatureParams, rows_estimate: int) -> tuple[WriteResult, int]:
    """events_clean into the lake in (person_id, timestamp, message_id) order; returns the write and the number of
    person ranges it was sorted in (1 = one query)."""
    return person_ranges.write_events_clean(
        con, params, EVENTS_VIEW, rows_estimate, lambda reader: lake.write_table(LAYER, "events_clean", reader),
        batch_rows=ROW_GROUP_ROWS, range_rows=SORT_RANGE_ROWS)


def _result(table: str, written: WriteResult, params: FeatureParams, extra: dict) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        asset_key=FEATURE_KEYS[table],
        metadata={
            "rows_written": written.rows,
            "dagster/row_count": written.rows,
            "as_of": params.as_of_iso,
            "path": written.path,
            "bytes_written": written.bytes,
            "config": dg.MetadataValue.json(params.metadata()),
            **extra,
        },
    )


def _severity(blocking: bool) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN


def build_feature_assets() -> list:
    @dg.multi_asset(
        name="feature_tables",
        specs=[_spec(table) for table in TABLES],
        check_specs=_check_specs(),
        retry_policy=STORAGE_RETRY,
    )
    def feature_tables(context: dg.AssetExecutionContext, config: FeatureConfig, lake: LakeStorage, duckdb: DuckDBEngine):
        as_of, as_of_source = resolve_as_of(config.as_of, lake, context.log)
        params = config.to_params(default_as_of=as_of)
        context.log.info(f"building features as of {params.as_of_iso} ({as_of_source})")
        policy = feature_checks.load_identifier_policy()
        written: dict[str, WriteResult] = {}
        timer = _StageTimer()
        # one feature build at a time (two CLI runs, a retry racing the original): the published tables and the
        # per-person state are read and rewritten as one set (fcntl locally, an S3 lease in the lake)
        with _build_lock(lake), duckdb.get_connection() as con:
            # range files of a build killed mid-write (a large one) hold events_clean rows: never left to wait for the
            # next large build
            swept = person_ranges.sweep_dead_range_folders(con)
            if swept:
                context.log.warning(f"removed {len(swept)} range folder(s) left by a killed feature build")
            lake.register(con, EVENTS_VIEW, "consented", "events", empty_schema=consented_events_schema())
            lake.register(con, CONSENT_VIEW, "privacy", "consent_state", empty_schema=consent_state_schema())

            with timer("identity"):
                stats = build_identity(con, params, EVENTS_VIEW, CONSENT_VIEW)
                written["identity_map"] = _write(con, lake, "identity_map", temp_table("identity_map"))
            with timer("events_clean"):
                # the only history-sized table: streamed from the query into the lake, never held in memory, and
                # sorted a range of persons at a time when it is large (features/person_ranges.py)
                written["events_clean"], stats["events_clean_ranges"] = _write_events_clean(con, lake, params, stats["eligible_copies"])
                drop_intermediates(con)

            events_view = WRITTEN_VIEW.format(table="events_clean")
            lake.register(con, events_view, LAYER, "events_clean", empty_schema=arrow_schema(EventsClean, nullable="model"))
            with timer("derived"):
                # per-person state: only persons whose events_clean rows changed are recomputed (features/partials.py)
                stats.update(partials.build_derived_incremental(con, lake, params, events_view, CONSENT_VIEW,
                                                                full_refresh=config.full_refresh, range_rows=SORT_RANGE_ROWS))
                for table in DERIVED:
                    written[table] = _write(con, lake, table, temp_table(table))
            context.log.info(f"feature build: {stats}")

            # checks read what was written
            with timer("checks"):
                for table in TABLES:
                    if table != "events_clean":
                        lake.register(con, WRITTEN_VIEW.format(table=table), LAYER, table, empty_schema=arrow_schema(FEATURE_MODELS[table], nullable="model"))
                sessions_view = WRITTEN_VIEW.format(table="sessions")
                # a range of persons at a time on a large history (both files are sorted by person)
                ranges = person_ranges.range_predicates(person_ranges.person_range_bounds(
                    con, f'select person_id, sum(events) as events from "{sessions_view}" group by person_id', SORT_RANGE_ROWS))
                coverage = feature_checks.session_coverage(con, events_view, sessions_view, ranges)
                findings = {
                    table: feature_checks.direct_identifier_findings(
                        con, WRITTEN_VIEW.format(table=table), _written_columns(lake, table), policy)
                    for table in TABLES
                }
                for table in TABLES:
                    con.execute(f'drop view if exists "{WRITTEN_VIEW.format(table=table)}"')
                for table in DERIVED:
                    con.execute(f"drop table if exists {temp_table(table)}")
                con.execute(f"drop table if exists {temp_table('identity_map')}")
            with timer("schema_checks"):
                schema_results = [
                    model_check(FEATURE_KEYS[table], FEATURE_MODELS[table], blocking=table in BLOCKING_SCHEMA).evaluate(
                        feature_checks.read_sample(lake, LAYER, table))
                    for table in TABLES
                ]
        context.log.info(f"feature build stage seconds: {timer.seconds}")

        input_counts = {k: stats[k] for k in ("events_in_lake", "after_as_of", "without_personalization_purpose",
                                               "subject_not_granted_at_as_of", "eligible_copies")}
        extra = {
            "events_clean": {"duplicates_dropped": stats["duplicates_dropped"], "late_rejected": stats["late_rejected"],
                             "granted_subjects": stats["granted_subjects"], "sort_ranges": stats["events_clean_ranges"],
                             **input_counts},
            "identity_map": {"junk_identifiers": stats["junk_identifiers"],
                             "junk_identifiers_by_kind": dg.MetadataValue.json({"anonymous": stats["junk_anonymous"], "user": stats["junk_user"]}),
                             "identity_links": stats["identity_links"],
                             "identity_links_dropped_junk": stats["identity_links_dropped_junk"],
                             "component_rounds": stats["component_rounds"], "persons": stats["persons"]},
        }
        extra["events_clean"]["stage_seconds"] = dg.MetadataValue.json(timer.seconds)
        extra["sessions"] = {"partials": dg.MetadataValue.json(
            {k: stats[k] for k in ("state", "person_ranges", "persons", "persons_touched", "persons_reused", "persons_dropped",
                                   "events_recomputed", "partials_seconds") if k in stats})}
        # row count and null rates from each written file's footer, scored against the previous builds
        anomaly_md, anomaly_results = anomalies.evaluate_feature_tables(context, lake, LAYER, FEATURE_KEYS)
        for table in TABLES:
            yield _result(table, written[table], params, {"as_of_source": as_of_source, **extra.get(table, {}), **anomaly_md[table]})

        yield from schema_results
        for table in TABLES:
            key = FEATURE_KEYS[table]
            f = findings[table]
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=IDENTIFIER_CHECK,
                passed=f["violations"] == 0,
                severity=_severity(True),
                metadata={
                    "violations": f["violations"],
                    "forbidden_columns": dg.MetadataValue.json(f["forbidden_columns"]),
                    "pseudonym_columns_checked": dg.MetadataValue.json(f["pseudonym_columns_checked"]),
                    "non_pseudonym_values": dg.MetadataValue.json(f["non_pseudonym_values"]),
                },
            )
        yield dg.AssetCheckResult(
            asset_key=FEATURE_KEYS["sessions"],
            check_name=SESSION_CHECK,
            passed=coverage["violations"] == 0,
            severity=_severity(True),
            metadata=coverage,
        )
        yield from anomaly_results

    return [feature_tables]


class _StageTimer:
    """Wall-clock seconds per stage of the build (recorded on events_clean's materialization)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.monotonic() - start, 2)


def _written_columns(lake: LakeStorage, table: str) -> list[str]:
    """Column names of the written Parquet file (its footer only)."""
    return lake.schema(LAYER, table).names
