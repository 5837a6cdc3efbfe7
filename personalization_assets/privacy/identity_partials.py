"""privacy/identity_links folded forward from per-hour partial aggregates.

`build_identity_links` (privacy/identity.py) defines the table over every raw event. Everything it takes from
events is an associative aggregate per identifier, so it can be computed per raw hour and combined:

* links: the distinct (identifier, kind, user pseudonym) pairs an hour's events show (anonymous id, previous id
  and traits.email next to a user id);
* seen: per identifier (user pseudonym for events with a user id, else the anonymous pseudonym; plus anonymous ids
  seen together with a user id): the hour's latest event time (`last_seen_at`), and of the hour's events that carry
  a location the one with the largest (time, country, region) — the same key `build_identity_links` takes the
  arg_max over, so the maximum over hours' maxima is the maximum over all events.

A partial is stored per raw hour in `privacy/identity_partials/date=D/hour=H` (one row per identifier active in
the hour, one per link: far smaller than the events). A run recomputes the partials of the raw hours that changed
(only their distinct raw identifier values are pseudonymized), deletes the partials of raw hours that are gone
(retention, erasure of a whole hour), and aggregates all partials plus the CRM side into identity_links: exactly
the table `build_identity_links` gives from scratch (tests/privacy/test_incremental_privacy.py compares them).

Partials hold pseudonyms of one key version. The key rotation job re-keys them with the rest of the privacy tier;
should the active version change without it, the identity_links run re-keys them first (and rebuilds them all
if the recorded version is newer than the active one).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from personalization_assets.privacy.identity import (
    crm_country_jurisdiction_sql,
    pseudonymize_column,
)
from personalization_assets.core.policies import UNKNOWN_JURISDICTION
from personalization_assets.core.pseudonymize import Pseudonymizer

PARTIALS_TABLE = "identity_partials"
PARTIAL_SCHEMA = pa.schema(
    [
        ("row_kind", pa.string()),  # 'seen' | 'link'
        ("identifier", pa.string()),
        ("identifier_kind", pa.string()),
        ("user_pseudonym", pa.string()),  # link rows
        ("last_seen_at", pa.timestamp("us", tz="UTC")),  # seen rows: the hour's latest event of the identifier
        ("located_at", pa.timestamp("us", tz="UTC")),  # seen rows: the hour's max (time, country, region) event with a location
        ("country", pa.string()),
        ("region", pa.string()),
    ]
)
RAW_COLUMNS = ["user_id", "anonymous_id", "previous_id", "trait_email", "context_country", "context_region", "timestamp", "landing_hour"]


def hour_partials(con: duckdb.DuckDBPyConnection, pz: Pseudonymizer, raw_view: str) -> pa.Table:
    """Partials of the raw hours in view `raw_view` (RAW_COLUMNS), with a `partition` column ('date=D/hour=H',
    from landing_hour: a raw hour's rows all carry their hour's start)."""
    con.execute(
        f"""
        create or replace temp table __pids as
        select user_id, anonymous_id, previous_id, trait_email, context_country, context_region, timestamp, landing_hour as partition
        from "{raw_view}"
        where user_id is not null or anonymous_id is not null
        """
    )
    pseudonymize_column(con, pz, "__pids", "user_id", "id", "__pm_user")
    pseudonymize_column(con, pz, "__pids", "anonymous_id", "id", "__pm_anon")
    pseudonymize_column(con, pz, "__pids", "previous_id", "id", "__pm_prev")
    pseudonymize_column(con, pz, "__pids", "trait_email", "email", "__pm_temail")
    table = con.sql(
        """
        with ev as (
            select i.partition, u.pseudonym as user_p, a.pseudonym as anon_p, p.pseudonym as prev_p, e.pseudonym as email_p
            from __pids i
            left join __pm_user u on u.value = i.user_id
            left join __pm_anon a on a.value = i.anonymous_id
            left join __pm_prev p on p.value = i.previous_id
            left join __pm_temail e on e.value = i.trait_email
            where i.user_id is not null
        ),
        pairs as (
            select partition, anon_p as identifier, 'anonymous' as identifier_kind, user_p as user_pseudonym from ev where anon_p is not null
            union
            select partition, prev_p, 'anonymous', user_p from ev where prev_p is not null and prev_p <> user_p
            union
            select partition, email_p, 'email', user_p from ev where email_p is not null
        ),
        located as (
            select i.partition, coalesce(u.pseudonym, a.pseudonym) as identifier,
                   case when u.pseudonym is not null then 'user' else 'anonymous' end as identifier_kind,
                   i.context_country, i.context_region, i.timestamp
            from __pids i
            left join __pm_user u on u.value = i.user_id
            left join __pm_anon a on a.value = i.anonymous_id
        ),
        anon_extra as (
            select i.partition, a.pseudonym as identifier, 'anonymous' as identifier_kind, i.context_country, i.context_region, i.timestamp
            from __pids i join __pm_anon a on a.value = i.anonymous_id where i.user_id is not null
        ),
        seen_loc as (
            select partition, identifier, identifier_kind, timestamp,
                   nullif(trim(context_country), '') as country, nullif(trim(context_region), '') as region
            from (select * from located union all select * from anon_extra)
        ),
        seen as (
            select partition, identifier, identifier_kind, max(timestamp) as last_seen_at,
                   arg_max({'t': timestamp, 'c': country, 'r': region}, (timestamp, country, region))
                       filter (where country is not null or region is not null) as loc
            from seen_loc group by 1, 2, 3
        )
        select strftime(timezone('UTC', partition), 'date=%Y-%m-%d/hour=%H') as partition, 'seen' as row_kind, identifier, identifier_kind, cast(null as varchar) as user_pseudonym, last_seen_at,
               loc.t as located_at, loc.c as country, loc.r as region
        from seen
        union all
        select strftime(timezone('UTC', partition), 'date=%Y-%m-%d/hour=%H'), 'link', identifier, identifier_kind, user_pseudonym, null, null, null, null from pairs
        order by 1, 2, 4, 3, 5
        """
    ).arrow().read_all()
    for name in ("__pids", "__pm_user", "__pm_anon", "__pm_prev", "__pm_temail"):
        con.execute(f'drop table if exists "{name}"')
    return table.cast(pa.schema([("partition", pa.string()), *PARTIAL_SCHEMA]))


def identity_from_partials(con: duckdb.DuckDBPyConnection, pz: Pseudonymizer, jurisdiction_sql: str, partials_view: str) -> None:
    """Create DuckDB temp tables `__identity` (IDENTITY_SCHEMA columns) and `__links` (LINK_SCHEMA): the same as
    `build_identity_links` over the events the partials in view `partials_view` (PARTIAL_SCHEMA) were computed
    from, and view `raw_crm`. They stay in DuckDB (which spills under its memory limit): at 100M events the
    identity table has millions of rows, which must not be held in Python."""
    pseudonymize_column(con, pz, "raw_crm", "user_id", "id", "__m_crm_user")
    pseudonymize_column(con, pz, "raw_crm", "email", "email", "__m_crm_email")
    con.execute(
        f"""
        create or replace temp table __links as
        select distinct identifier, identifier_kind, user_pseudonym from (
            select identifier, identifier_kind, user_pseudonym from "{partials_view}" where row_kind = 'link'
            union all
            select e.pseudonym, 'email', u.pseudonym
            from raw_crm c join __m_crm_user u on u.value = c.user_id join __m_crm_email e on e.value = c.email
        )
        """
    )
    con.execute(
        f"""
        create or replace temp table __identity as
        with seen as (
            select identifier, identifier_kind, max(last_seen_at) as last_seen_at,
                   arg_max({{'t': located_at, 'c': country, 'r': region}}, (located_at, country, region))
                       filter (where country is not null or region is not null) as loc
            from "{partials_view}" where row_kind = 'seen'
            group by 1, 2
        ),
        resolved as (
            select l.identifier, l.identifier_kind, count(distinct l.user_pseudonym) as linked_users,
                   case when count(distinct l.user_pseudonym) = 1 then min(l.user_pseudonym) end as only_user
            from __links l group by 1, 2
        ),
        identifiers as (
            select identifier, identifier_kind from seen
            union
            select identifier, identifier_kind from __links
            union
            select user_pseudonym, 'user' from __links
        ),
        subjects as (
            select i.identifier, i.identifier_kind,
                   case when i.identifier_kind = 'user' then i.identifier
                        else coalesce(r.only_user, i.identifier) end as consent_subject,
                   coalesce(r.linked_users, 0) as linked_users
            from identifiers i left join resolved r using (identifier, identifier_kind)
        ),
        subject_location as (
            select s.consent_subject,
                   arg_max({{'country': se.loc.c, 'region': se.loc.r}}, (se.loc.t, se.loc.c, se.loc.r))
                       filter (where se.loc.c is not null or se.loc.r is not null) as loc,
                   max(se.last_seen_at) as last_seen_at
            from seen se join subjects s using (identifier, identifier_kind)
            group by 1
        ),
        crm_country as (
            select u.pseudonym as consent_subject,
                   arg_max(upper(nullif(trim(c.country), '')), c.updated_at) as crm
            from raw_crm c join __m_crm_user u on u.value = c.user_id
            where c.is_current
            group by 1
        ),
        decided as (
            select s.identifier, s.identifier_kind, s.consent_subject, s.linked_users, loc.last_seen_at,
                   {jurisdiction_sql.format(country="loc.loc.country", region="loc.loc.region")} as from_location,
                   {crm_country_jurisdiction_sql(jurisdiction_sql, "cc.crm")} as from_crm
            from subjects s
            left join subject_location loc using (consent_subject)
            left join crm_country cc using (consent_subject)
        )
        select identifier, identifier_kind, consent_subject, linked_users,
               coalesce(from_location, from_crm, '{UNKNOWN_JURISDICTION}') as jurisdiction,
               case when from_location is not null then 'event_location'
                    when from_crm is not null then 'crm_country' else 'unknown' end as jurisdiction_source,
               last_seen_at
        from decided
        """
    )
