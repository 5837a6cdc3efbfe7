"""The feature tables as DuckDB SQL: pure functions of a connection, two input views and the parameters.

No Dagster here (features/assets.py wires lake I/O). The build runs in three stages:

1. `build_identity` (small temp tables): subjects granted personalization at as_of; the pseudonym
   tuples of the eligible, deduplicated messages; identity links, junk guard, connected components
   -> `feat_identity_map`.
2. `build_events_clean_sql`: the eligible events, one copy per message_id, late ones dropped, with
   their person_id. This is the only table as long as the event history: the asset streams it straight
   into the lake (a large build a range of persons at a time: features/person_ranges.py), tests
   materialize it as a temp table.
3. `build_derived` reads events_clean (a lake view or the temp table) column-wise and builds the
   per-session and per-person tables: sessions -> user_rfm, engagement; content_affinity;
   purpose_eligibility (+ consent state).

Everything is set-based SQL (DuckDB spills to its temp directory above its memory limit); nothing loads
the event history into Python. Each `build_*_sql` returns a SELECT so tests and analysts can run one
step on its own. The exact definitions are written up in docs/ARCHITECTURE.md, section "Features".
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa

from personalization_assets.features.components import label_components
from personalization_assets.features.models import FEATURE_MODELS
from personalization_assets.features.params import PURPOSE, FeatureParams

TABLES = ("identity_map", "events_clean", "sessions", "user_rfm", "content_affinity", "engagement", "purpose_eligibility")
DERIVED = ("sessions", "user_rfm", "content_affinity", "engagement", "purpose_eligibility")

PAGE_TYPES = ("page", "screen")
CONVERSION_EVENTS = ("Order Completed", "Subscription Started")
# track events that express interest in a piece of content (all carry properties.category)
ENGAGEMENT_EVENTS = ("Content Viewed", "Content Shared", "Product Added", "Order Completed", "Subscription Started")

US_PER_MINUTE = 60_000_000
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 86_400_000_000
US_PER_WEEK = 7 * US_PER_DAY

# intermediate temp tables
GRANTED = "feat_granted_subjects"
DUPLICATED = "feat_duplicated_messages"
PERSON_INDEX = "feat_person_index"
IDENTITY_HASH = "feat_identity_hash"
# the identifier's hash in build_identity_hash_sql and build_events_clean_keyed_sql (one template: a test narrows it
# to force collisions)
KEY_HASH = "hash({})"
ID_TUPLES = "feat_id_tuples"
ID_NODES = "feat_id_nodes"
ID_EDGES = "feat_id_edges"
ID_KEPT_EDGES = "feat_id_kept_edges"
ID_JUNK = "feat_id_junk"
ID_LABELS = "feat_id_labels"
# the identity stage's own tables (dropped when the identity map is built: they would hold DuckDB memory while
# events_clean streams) and those events_clean still reads (dropped after it)
IDENTITY_INTERMEDIATE = (ID_TUPLES, ID_NODES, ID_EDGES, ID_KEPT_EDGES, ID_JUNK, ID_LABELS)
INTERMEDIATE = (GRANTED, DUPLICATED, *IDENTITY_INTERMEDIATE)


@contextmanager
def joins_as_written(con):
    """Run the enclosed queries with their joins in the written order: the event history is always the left
    (probe) side and the small tables (granted subjects, duplicated ids, the identity map) the right (build) side.

    DuckDB estimates a filtered Parquet view of the event history far too low (~800k rows for 100M: default
    selectivities per predicate), and its join-order and build-side optimizers then build the hash table on the
    event stream. At 100M events that spilled the whole history to disk (5 GB of spill for a count that needs
    none, 20-46 GB in events_clean) before failing with "failed to pin block"."""
    previous = con.execute("select current_setting('disabled_optimizers')").fetchall()[0][0] or ""
    names = sorted({*filter(None, (n.strip() for n in previous.split(","))), "join_order", "build_side_probe_side"})
    con.execute(f"set disabled_optimizers = '{','.join(names)}'")
    try:
        yield
    finally:
        con.execute(f"set disabled_optimizers = '{previous}'")


def temp_table(table: str) -> str:
    """Name of the temp table that holds feature table `table` during a build."""
    return f"feat_{table}"


def _list(values) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _in_force(p: FeatureParams) -> str:
    """Predicate: a consent_state interval [valid_from, valid_to) contains as_of."""
    return f"valid_from <= {p.as_of_sql} and (valid_to is null or valid_to > {p.as_of_sql})"


# --- consent at as_of -------------------------------------------------------------------------------


def build_subject_status_sql(p: FeatureParams, consent_view: str) -> str:
    """Per consent_subject x purpose: granted at as_of (fail closed: any denied interval in force wins)."""
    return f"""
        select consent_subject, purpose, bool_and(status = 'granted') as granted
        from {_q(consent_view)}
        where {_in_force(p)}
        group by consent_subject, purpose
    """


def build_granted_subjects_sql(p: FeatureParams, consent_view: str) -> str:
    """Subjects whose consent for personalization is granted at as_of (no interval => not granted)."""
    return f"""
        select consent_subject
        from ({build_subject_status_sql(p, consent_view)}) as s
        where purpose = '{PURPOSE}' and granted
    """


# --- events that may be processed ---------------------------------------------------------------------


def _visible(p: FeatureParams) -> str:
    """Known at as_of: happened and was received by then (point-in-time correctness)."""
    return f"timestamp <= {p.as_of_sql} and received_at <= {p.as_of_sql}"


def build_input_counts_sql(p: FeatureParams, events_view: str, granted_table: str = GRANTED) -> str:
    """One row of counts explaining which consented events the build may use."""
    return f"""
        select
            count(*) as events_in_lake,
            count(*) filter (where not ({_visible(p)})) as after_as_of,
            count(*) filter (where {_visible(p)} and not list_contains(e.purposes, '{PURPOSE}')) as without_personalization_purpose,
            count(*) filter (where {_visible(p)} and list_contains(e.purposes, '{PURPOSE}') and g.consent_subject is null) as subject_not_granted_at_as_of,
            count(*) filter (where {_visible(p)} and list_contains(e.purposes, '{PURPOSE}') and g.consent_subject is not null) as eligible_copies
        from {_q(events_view)} as e
        left join {granted_table} as g using (consent_subject)
    """


WIDE_COLUMNS = (
    "message_id", "type", "event", "anonymous_pseudonym", "user_pseudonym", "previous_pseudonym", "consent_subject",
    "timestamp", "received_at", "landing_hour", "content_id", "category", "price::double as price", "currency",
    "dwell_ms::bigint as dwell_ms", "page_url",
)
IDENTITY_COLUMNS = ("anonymous_pseudonym", "user_pseudonym", "previous_pseudonym", "consent_subject")


def build_duplicated_sql(p: FeatureParams, events_view: str, granted_table: str = GRANTED) -> str:
    """The message ids with more than one eligible copy (a few percent of the messages, none in most runs)."""
    return f"""
        select message_id
        from {_q(events_view)} as e
        semi join {granted_table} as g using (consent_subject)
        where {_visible(p)} and list_contains(e.purposes, '{PURPOSE}')
        group by message_id having count(*) > 1
    """


def build_candidates_sql(p: FeatureParams, events_view: str, granted_table: str = GRANTED,
                         columns: tuple[str, ...] = WIDE_COLUMNS, duplicated: str = DUPLICATED) -> str:
    """Eligible events, one copy per message_id, plus `within_late_bound`.

    Kept copy: earliest received_at; ties: earliest landing_hour, then the rest of the row.
    within_late_bound: timestamp >= landing_hour - late_bound_days (of the kept copy).
    Only messages that occur more than once (`duplicated`, a temp table of build_duplicated_sql) go through the
    ranking window; the rest pass straight through, so the wide rows are never sorted by message_id. The event
    history is read as a stream: no part of this query holds it (at 100M events, a common table expression
    referenced three times was materialized and spilled 46 GB).
    """
    late_us = p.late_bound_days * US_PER_DAY
    select = ", ".join(columns) + f", epoch_us(timestamp) >= epoch_us(landing_hour) - {late_us} as within_late_bound"
    eligible = f"""(
            select e.*
            from {_q(events_view)} as e
            semi join {granted_table} as g using (consent_subject)
            where {_visible(p)} and list_contains(e.purposes, '{PURPOSE}')
        )"""
    return f"""
        select {select}
        from {eligible} as single_copy
        anti join {duplicated} using (message_id)
        union all
        select {select}
        from {eligible} as copies
        semi join {duplicated} using (message_id)
        qualify row_number() over (
            partition by message_id
            order by received_at, landing_hour, timestamp, type, event, consent_subject,
                     user_pseudonym, anonymous_pseudonym, previous_pseudonym
        ) = 1
    """


# --- identity -----------------------------------------------------------------------------------------


def build_identity_tuples_sql(p: FeatureParams, events_view: str, granted_table: str = GRANTED) -> str:
    """The distinct pseudonym tuples of the kept messages, with message counts (small: ~ one row per device/user pair)."""
    candidates = build_candidates_sql(p, events_view, granted_table, columns=("message_id", *IDENTITY_COLUMNS, "timestamp", "landing_hour"))
    return f"""
        select {", ".join(IDENTITY_COLUMNS)}, within_late_bound, count(*) as messages
        from ({candidates})
        group by all
    """


def build_identity_nodes_sql(tuples: str = ID_TUPLES) -> str:
    """Every identifier of an accepted event, integer-coded in identifier order; kind 'user' if ever
    seen as a user pseudonym, else 'anonymous'."""
    return f"""
        with accepted as (select * from {tuples} where within_late_bound),
        ids as (
            select user_pseudonym as identifier, 1 as is_user from accepted where user_pseudonym is not null
            union all
            select anonymous_pseudonym, 0 from accepted where anonymous_pseudonym is not null
            union all
            select previous_pseudonym, 0 from accepted where previous_pseudonym is not null
            union all
            select consent_subject, 0 from accepted
            where user_pseudonym is null and anonymous_pseudonym is null and previous_pseudonym is null
        )
        select
            identifier,
            case when max(is_user) = 1 then 'user' else 'anonymous' end as identifier_kind,
            row_number() over (order by identifier) as node
        from ids
        group by identifier
    """


def build_identity_edges_sql(tuples: str = ID_TUPLES, nodes: str = ID_NODES) -> str:
    """Distinct undirected links (u < v): anonymous <-> user on one event, alias previous -> user."""
    return f"""
        with accepted as (select * from {tuples} where within_late_bound),
        pairs as (
            select anonymous_pseudonym as a, user_pseudonym as b from accepted
            where anonymous_pseudonym is not null and user_pseudonym is not null
            union all
            select previous_pseudonym, user_pseudonym from accepted
            where previous_pseudonym is not null and user_pseudonym is not null
        ),
        coded as (
            select na.node as x, nb.node as y
            from pairs
            join {nodes} as na on na.identifier = pairs.a
            join {nodes} as nb on nb.identifier = pairs.b
            where na.node <> nb.node
        )
        select distinct least(x, y) as u, greatest(x, y) as v from coded
    """


def build_junk_sql(p: FeatureParams, edges: str = ID_EDGES, nodes: str = ID_NODES) -> str:
    """Identifiers linked to more than max_links distinct identifiers of the other kind."""
    return f"""
        with both_directions as (
            select u as node, v as other from {edges}
            union all
            select v, u from {edges}
        )
        select b.node, count(*) as other_kind_links
        from both_directions as b
        join {nodes} as n on n.node = b.node
        join {nodes} as o on o.node = b.other
        where n.identifier_kind <> o.identifier_kind
        group by b.node
        having count(*) > {p.max_links}
    """


def build_identity_map_sql(p: FeatureParams, nodes: str = ID_NODES, labels: str = ID_LABELS, junk: str = ID_JUNK) -> str:
    return f"""
        with comp as (
            select n.identifier, n.identifier_kind, coalesce(l.label, n.node) as component, j.node is not null as is_junk
            from {nodes} as n
            left join {labels} as l using (node)
            left join {junk} as j using (node)
        ),
        persons as (
            select
                component,
                count(*) as component_size,
                coalesce(min(identifier) filter (where identifier_kind = 'user'), min(identifier)) as person_id
            from comp
            group by component
        )
        select
            c.identifier, c.identifier_kind, ps.person_id, ps.component_size::bigint as component_size, c.is_junk,
            {p.as_of_sql} as as_of
        from comp as c
        join persons as ps using (component)
        order by ps.person_id, c.identifier
    """


# --- events_clean -------------------------------------------------------------------------------------


def build_events_clean_sql(p: FeatureParams, events_view: str, identity_map: str = "feat_identity_map",
                           granted_table: str = GRANTED, ordered: bool = True) -> str:
    """Kept, in-bound messages with their person (identity of user, else anonymous pseudonym)."""
    order = "order by person_id, a.timestamp, a.message_id" if ordered else ""
    return f"""
        {_accepted_sql(p, events_view, granted_table)}
        select {_events_clean_columns("m.person_id")}, {p.as_of_sql} as as_of
        from accepted as a
        join {identity_map} as m on m.identifier = a.identity_key
        {order}
    """


def build_events_clean_keyed_sql(p: FeatureParams, events_view: str, identity_hash: str = IDENTITY_HASH,
                                 granted_table: str = GRANTED) -> str:
    """build_events_clean_sql's rows, unordered, with the person's number (`person_idx`, build_person_index_sql)
    instead of its id, found through the 64-bit hash of the identifier (`identity_hash`): the join holds a number
    pair per identifier instead of two 67-character pseudonyms. Exact only when no two identifiers of the map share
    a hash (`identity_hashes_unique`); every accepted event's identity key is an identifier of the map."""
    return f"""
        {_accepted_sql(p, events_view, granted_table)}
        select {_events_clean_columns("m.person_idx")}, {p.as_of_sql} as as_of
        from accepted as a
        join {identity_hash} as m on m.identifier_hash = {KEY_HASH.format("a.identity_key")}
    """


def _accepted_sql(p: FeatureParams, events_view: str, granted_table: str) -> str:
    return f"""
        with accepted as (
            select *, coalesce(user_pseudonym, anonymous_pseudonym, previous_pseudonym, consent_subject) as identity_key
            from ({build_candidates_sql(p, events_view, granted_table)})
            where within_late_bound
        )"""


def _events_clean_columns(person: str) -> str:
    return f"""a.message_id, {person}, a.consent_subject, a.type, a.event,
            a.timestamp, a.received_at, a.landing_hour, a.content_id, a.category, a.price, a.currency, a.dwell_ms,
            a.page_url"""


def build_person_index_sql(identity_map: str = "feat_identity_map") -> str:
    """Every person of the identity map numbered 0.. in person_id order (NULL last, as ORDER BY puts it)."""
    return f"""
        select person_id, (row_number() over (order by person_id) - 1)::bigint as person_idx
        from (select distinct person_id from {identity_map})
    """


def build_identity_hash_sql(identity_map: str = "feat_identity_map", person_index: str = PERSON_INDEX) -> str:
    """identifier -> person as two numbers: the identifier's 64-bit hash and its person's person_idx."""
    return f"""
        select {KEY_HASH.format("m.identifier")} as identifier_hash, x.person_idx
        from {identity_map} as m join {person_index} as x on x.person_id is not distinct from m.person_id
    """


def identity_hashes_unique(con, identity_hash: str = IDENTITY_HASH) -> bool:
    total, distinct = con.execute(f"select count(*), count(distinct identifier_hash) from {identity_hash}").fetchall()[0]
    return int(total) == int(distinct)


# --- sessions -----------------------------------------------------------------------------------------


def _is_conversion() -> str:
    return f"(type = 'track' and event in ({_list(CONVERSION_EVENTS)}))"


def build_sessions_sql(p: FeatureParams, events_clean: str = "feat_events_clean") -> str:
    """Gap >= session_gap_minutes starts a new session; a run is cut every max_session_hours from its start."""
    gap_us = p.session_gap_minutes * US_PER_MINUTE
    cap_us = p.max_session_hours * US_PER_HOUR
    return f"""
        with ev as (
            select
                person_id, message_id, timestamp, epoch_us(timestamp) as ts_us,
                type in ({_list(PAGE_TYPES)}) as is_page, {_is_conversion()} as is_conversion, content_id, dwell_ms
            from {_q(events_clean)}
        ),
        gaps as (
            select *, ts_us - lag(ts_us) over (partition by person_id order by ts_us, message_id) as gap_us
            from ev
        ),
        runs as (
            select
                *,
                max(case when gap_us is null or gap_us >= {gap_us} then ts_us end) over (
                    partition by person_id order by ts_us, message_id
                    rows between unbounded preceding and current row
                ) as run_start_us
            from gaps
        )
        select
            person_id,
            md5(person_id || '|' || min(ts_us)::varchar) as session_id,
            min(timestamp) as session_start,
            max(timestamp) as session_end,
            count(*)::bigint as events,
            count(*) filter (where is_page)::bigint as pages,
            coalesce(sum(dwell_ms), 0)::bigint as dwell_ms,
            arg_min(content_id, struct_pack(t := ts_us, m := message_id)) filter (where content_id is not null) as landing_content_id,
            coalesce(bool_or(is_conversion), false) as converted,
            {p.as_of_sql} as as_of
        from runs
        group by person_id, run_start_us, (ts_us - run_start_us) // {cap_us}
        order by person_id, session_start
    """


# --- per-person features ------------------------------------------------------------------------------


def build_user_rfm_sql(p: FeatureParams, events_clean: str = "feat_events_clean", sessions: str = "feat_sessions",
                       identity_map: str = "feat_identity_map") -> str:
    window_start_us = p.as_of_us - p.rfm_window_days * US_PER_DAY
    in_window = f"epoch_us(timestamp) > {window_start_us}"
    return f"""
        with ev as (
            select
                person_id,
                min(timestamp) as first_seen_at,
                max(timestamp) as last_seen_at,
                round(coalesce(sum(price) filter (where {_is_conversion()} and {in_window}), 0), 6) as monetary,
                count(*) filter (where {_is_conversion()} and {in_window}) as orders
            from {_q(events_clean)}
            group by person_id
        ),
        se as (
            select person_id, count(*) filter (where epoch_us(session_start) > {window_start_us}) as frequency
            from {sessions}
            group by person_id
        ),
        known as (
            select distinct person_id from {identity_map} where identifier_kind = 'user'
        )
        select
            ev.person_id,
            (({p.as_of_us} - epoch_us(ev.last_seen_at)) // {US_PER_DAY})::bigint as recency_days,
            coalesce(se.frequency, 0)::bigint as frequency,
            ev.monetary::double as monetary,
            ev.orders::bigint as orders,
            ev.first_seen_at,
            ev.last_seen_at,
            known.person_id is not null as is_known_user,
            {p.as_of_sql} as as_of
        from ev
        left join se using (person_id)
        left join known using (person_id)
        order by ev.person_id
    """


def build_content_affinity_sql(p: FeatureParams, events_clean: str = "feat_events_clean") -> str:
    """Weight of an engagement event = 2^(-(as_of - timestamp) / half_life); affinity = the category's
    share of the person's total weight."""
    half_life_us = p.half_life_days * US_PER_DAY
    return f"""
        with engagement as (
            select person_id, category, epoch_us(timestamp) as ts_us
            from {_q(events_clean)}
            where category is not null
              and (type in ({_list(PAGE_TYPES)}) or (type = 'track' and event in ({_list(ENGAGEMENT_EVENTS)})))
        ),
        per_category as (
            select person_id, category, count(*) as events,
                   fsum(pow(2.0, -({p.as_of_us} - ts_us) / {half_life_us!r})) as decayed_weight
            from engagement
            group by person_id, category
        ),
        shares as (
            select *, sum(decayed_weight) over (partition by person_id) as person_weight
            from per_category
        ),
        ranked as (
            select *,
                   round(decayed_weight / person_weight, 12) as affinity
            from shares
            where person_weight > 0  -- all weights underflow only for engagement ~1000 half-lives old
        ),
        topped as (
            select *,
                   row_number() over (partition by person_id order by affinity desc, category) as rank,
                   first_value(category) over (partition by person_id order by affinity desc, category) as top_category
            from ranked
        )
        select person_id, category, affinity::double as affinity, decayed_weight::double as decayed_weight,
               events::bigint as events, rank = 1 as is_top, top_category, {p.as_of_sql} as as_of
        from topped
        order by person_id, category
    """


def build_engagement_sql(p: FeatureParams, events_clean: str = "feat_events_clean", sessions: str = "feat_sessions") -> str:
    cells = f"""select person_id, timestamp::date as day, hour(timestamp) as h, count(*) as n
            from {_q(events_clean)}
            group by person_id, day, h"""
    return engagement_from_cells_sql(p, cells, sessions)


def engagement_from_cells_sql(p: FeatureParams, cells: str, sessions: str) -> str:
    """Engagement from per person × UTC date × hour event counts (`cells`: a query with person_id, day, h, n):
    computed from events_clean here, from the stored per-hour partials by features/partials.py."""
    return f"""
        with cells as ({cells}),
        days as (
            select person_id, count(distinct day) as active_days from cells group by person_id
        ),
        hours as (
            select person_id, h, sum(n) as n from cells group by person_id, h
        ),
        weekdays as (
            select person_id, isodow(day) - 1 as d, sum(n) as n from cells group by person_id, d
        ),
        preferred_hour as (
            select person_id, first(h order by n desc, h) as preferred_hour from hours group by person_id
        ),
        preferred_dow as (
            select person_id, first(d order by n desc, d) as preferred_dow from weekdays group by person_id
        ),
        se as (
            select person_id, count(*) as sessions, avg(dwell_ms) as avg_session_dwell_ms,
                   min(epoch_us(session_start)) as first_us
            from {sessions}
            group by person_id
        )
        select
            se.person_id,
            days.active_days::bigint as active_days,
            se.sessions::bigint as sessions,
            round(se.sessions / greatest(1.0, ({p.as_of_us} - se.first_us) / {float(US_PER_WEEK)!r}), 6)::double as sessions_per_week,
            round(se.avg_session_dwell_ms, 3)::double as avg_session_dwell_ms,
            ph.preferred_hour::bigint as preferred_hour,
            pd.preferred_dow::bigint as preferred_dow,
            {p.as_of_sql} as as_of
        from se
        join days using (person_id)
        join preferred_hour as ph using (person_id)
        join preferred_dow as pd using (person_id)
        order by se.person_id
    """


def build_purpose_eligibility_sql(p: FeatureParams, consent_view: str, events_clean: str = "feat_events_clean") -> str:
    """Per person x purpose: eligible iff every consent subject of the person is granted at as_of."""
    return f"""
        with subjects as (
            select distinct person_id, consent_subject from {_q(events_clean)}
        ),
        purposes as (
            select distinct purpose from {_q(consent_view)}
        ),
        status as ({build_subject_status_sql(p, consent_view)})
        select
            s.person_id,
            pu.purpose,
            bool_and(coalesce(st.granted, false)) as eligible,
            count(*)::bigint as consent_subjects,
            {p.as_of_sql} as as_of
        from subjects as s
        cross join purposes as pu
        left join status as st on st.consent_subject = s.consent_subject and st.purpose = pu.purpose
        group by s.person_id, pu.purpose
        order by s.person_id, pu.purpose
    """


# --- the build ----------------------------------------------------------------------------------------


def output_columns(table: str) -> list[str]:
    """The published columns of a feature table: its pandera model's, in order."""
    return list(FEATURE_MODELS[table].to_schema().columns)


def select_output_sql(table: str, source: str) -> str:
    return f"select {', '.join(_q(c) for c in output_columns(table))} from {source}"


def _create(con, name: str, select_sql: str) -> None:
    con.execute(f"create or replace temp table {name} as {select_sql}")


def _count(con, table: str, where: str = "true") -> int:
    return int(con.execute(f"select count(*) from {table} where {where}").fetchall()[0][0])


def build_identity(con, p: FeatureParams, events_view: str = "consented_events", consent_view: str = "consent_state") -> dict[str, int]:
    """Stage 1: granted subjects and the identity map (temp tables); returns the input and identity counts."""
    con.execute("SET TimeZone = 'UTC'")  # date/hour/weekday features are UTC
    stats: dict[str, int] = {}
    _create(con, GRANTED, build_granted_subjects_sql(p, consent_view))
    with joins_as_written(con):  # the three scans of the event history
        counts = con.execute(build_input_counts_sql(p, events_view)).fetchall()[0]
        _create(con, DUPLICATED, build_duplicated_sql(p, events_view))
        _create(con, ID_TUPLES, build_identity_tuples_sql(p, events_view))
    names = ("events_in_lake", "after_as_of", "without_personalization_purpose", "subject_not_granted_at_as_of", "eligible_copies")
    stats.update({n: int(v or 0) for n, v in zip(names, counts, strict=True)})
    stats["granted_subjects"] = _count(con, GRANTED)
    messages, late = con.execute(
        f"select coalesce(sum(messages), 0), coalesce(sum(messages) filter (where not within_late_bound), 0) from {ID_TUPLES}"
    ).fetchall()[0]
    stats["duplicates_dropped"] = stats["eligible_copies"] - int(messages)
    stats["late_rejected"] = int(late)

    _create(con, ID_NODES, build_identity_nodes_sql())
    _create(con, ID_EDGES, build_identity_edges_sql())
    _create(con, ID_JUNK, build_junk_sql(p))
    _create(con, ID_KEPT_EDGES, f"select * from {ID_EDGES} where u not in (select node from {ID_JUNK}) and v not in (select node from {ID_JUNK})")
    stats["identity_links"] = _count(con, ID_EDGES)
    stats["identity_links_dropped_junk"] = stats["identity_links"] - _count(con, ID_KEPT_EDGES)
    stats["component_rounds"] = label_components(con, ID_KEPT_EDGES, ID_LABELS)
    _create(con, temp_table("identity_map"), build_identity_map_sql(p))
    junk = dict(con.execute(f"select identifier_kind, count(*) from {temp_table('identity_map')} where is_junk group by 1").fetchall())
    stats["junk_identifiers"] = int(sum(junk.values()))
    stats["junk_anonymous"] = int(junk.get("anonymous", 0))
    stats["junk_user"] = int(junk.get("user", 0))
    stats["identifiers"] = _count(con, temp_table("identity_map"))
    stats["persons"] = int(con.execute(f"select count(distinct person_id) from {temp_table('identity_map')}").fetchall()[0][0])
    for name in IDENTITY_INTERMEDIATE:
        con.execute(f"drop table if exists {name}")
    return stats


def build_derived(con, p: FeatureParams, events_clean: str, consent_view: str = "consent_state") -> dict[str, int]:
    """Stage 3: sessions and the per-person tables from an events_clean view (temp tables)."""
    _create(con, temp_table("sessions"), build_sessions_sql(p, events_clean))
    _create(con, temp_table("user_rfm"), build_user_rfm_sql(p, events_clean))
    _create(con, temp_table("content_affinity"), build_content_affinity_sql(p, events_clean))
    _create(con, temp_table("engagement"), build_engagement_sql(p, events_clean))
    _create(con, temp_table("purpose_eligibility"), build_purpose_eligibility_sql(p, consent_view, events_clean))
    return {f"{t}_rows": _count(con, temp_table(t)) for t in DERIVED}


def drop_intermediates(con) -> None:
    for name in INTERMEDIATE:
        con.execute(f"drop table if exists {name}")


@dataclass
class FeatureBuild:
    params: FeatureParams
    stats: dict[str, int] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=lambda: {t: temp_table(t) for t in TABLES})

    def arrow(self, con, table: str) -> pa.Table:
        return con.sql(select_output_sql(table, self.tables[table])).to_arrow_table()


def compute_features(con, params: FeatureParams, events_view: str = "consented_events",
                     consent_view: str = "consent_state") -> FeatureBuild:
    """The whole build with every table as a temp table of `con` (tests, notebooks, small data).

    The asset runs the same three stages but streams events_clean into the lake instead.
    """
    build = FeatureBuild(params=params)
    build.stats.update(build_identity(con, params, events_view, consent_view))
    with joins_as_written(con):
        _create(con, temp_table("events_clean"), build_events_clean_sql(params, events_view))
    build.stats["events_clean_rows"] = _count(con, temp_table("events_clean"))
    build.stats["identity_map_rows"] = _count(con, temp_table("identity_map"))
    build.stats.update(build_derived(con, params, temp_table("events_clean"), consent_view))
    drop_intermediates(con)
    return build
