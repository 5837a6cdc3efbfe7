"""Identity links for consent and erasure: which identifiers belong to which user.

An anonymous (device) id or an email is resolved to a user only when it is linked to EXACTLY ONE user
pseudonym. An identifier linked to several users (a shared or junk id, e.g. an SDK that sends a
constant anonymousId) is never merged: consent given on it stays with it and does not spread to the
users, which is the fail-closed choice. (The features layer stitches more permissively for analytics
of sessions; consent never follows those looser links.)

Erasure uses the links inclusively: erasing a user also erases every identifier ever linked to it.

A subject's jurisdiction (`jurisdiction_source` says which rule decided it):
1. `event_location`: the location of the subject's most recent event (over all its identifiers) that carries
   one — country or region; ties on the timestamp go to the larger (country, region) so reruns agree;
2. `crm_country`: else the `country` of the subject's current CRM row (when the subject is a user);
3. `unknown`: else the policy's `unknown` jurisdiction (fail-closed in the shipped policy).
A location or country that is known but matches no listed jurisdiction gives `default`.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from personalization_assets.core.policies import DEFAULT_JURISDICTION, UNKNOWN_JURISDICTION
from personalization_assets.core.pseudonymize import Pseudonymizer
from personalization_assets.core.schemas import arrow_schema
from personalization_assets.privacy.models import IdentityLink

IDENTITY_SCHEMA = arrow_schema(IdentityLink)  # generated from the pandera model (core/schemas.py)
LINK_SCHEMA = pa.schema([("identifier", pa.string()), ("identifier_kind", pa.string()), ("user_pseudonym", pa.string())])


def temp_table_from_arrow(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Copy an Arrow table into DuckDB temp table `name` (owned by DuckDB: it may spill, and outlives the Arrow object)."""
    con.register(f"__arrow_{name}", table)
    try:
        con.execute(f'create or replace temp table "{name}" as select * from "__arrow_{name}"')
    finally:
        con.unregister(f"__arrow_{name}")


def map_distinct(con: duckdb.DuckDBPyConnection, view: str, column: str, map_name: str, fn, out_column: str) -> None:
    """Create temp table `map_name(value, <out_column>)` with fn(value) for the DISTINCT values of
    view.column (Python work proportional to distinct values, not rows; join it back in SQL)."""
    distinct = con.sql(f'select distinct "{column}" as v from "{view}" where "{column}" is not null').arrow().read_all()
    values = distinct["v"].to_pylist()
    temp_table_from_arrow(con, map_name, pa.table({"value": pa.array(values, pa.string()), out_column: pa.array(fn(values), pa.string())}))


def pseudonymize_column(con: duckdb.DuckDBPyConnection, pz: Pseudonymizer, view: str, column: str, kind: str, map_name: str) -> None:
    """Create temp table `map_name(value, pseudonym)` for the distinct values of view.column."""
    map_distinct(con, view, column, map_name, lambda values: pz.pseudonymize_values(values, kind), "pseudonym")


def build_identity_links(con: duckdb.DuckDBPyConnection, pz: Pseudonymizer, jurisdiction_sql: str) -> tuple[pa.Table, pa.Table]:
    """From views `raw_events` and `raw_crm` build (identity table, link table).

    The from-scratch definition of privacy/identity_links. The asset builds the same table from per-raw-hour
    partials (privacy/identity_partials.py) so that a run reads only the hours that changed; the tests compare
    the two. A change here must be mirrored there.

    `jurisdiction_sql` maps (country, region) columns to a jurisdiction name, NULL when both are absent
    (`jurisdiction_case_sql`); see the module doc for the order event location, CRM country, unknown.
    """
    con.execute(
        """
        create or replace temp table __ids as
        select user_id, anonymous_id, previous_id, trait_email, context_country, context_region, timestamp
        from raw_events
        where user_id is not null or anonymous_id is not null
        """
    )
    pseudonymize_column(con, pz, "__ids", "user_id", "id", "__m_user")
    pseudonymize_column(con, pz, "__ids", "anonymous_id", "id", "__m_anon")
    pseudonymize_column(con, pz, "__ids", "previous_id", "id", "__m_prev")
    pseudonymize_column(con, pz, "__ids", "trait_email", "email", "__m_temail")
    pseudonymize_column(con, pz, "raw_crm", "user_id", "id", "__m_crm_user")
    pseudonymize_column(con, pz, "raw_crm", "email", "email", "__m_crm_email")
    links = con.sql(
        """
        with ev as (
            select u.pseudonym as user_p, a.pseudonym as anon_p, p.pseudonym as prev_p, e.pseudonym as email_p
            from __ids i
            left join __m_user u on u.value = i.user_id
            left join __m_anon a on a.value = i.anonymous_id
            left join __m_prev p on p.value = i.previous_id
            left join __m_temail e on e.value = i.trait_email
            where i.user_id is not null
        ),
        pairs as (
            select anon_p as identifier, 'anonymous' as identifier_kind, user_p as user_pseudonym from ev where anon_p is not null
            union
            select prev_p, 'anonymous', user_p from ev where prev_p is not null and prev_p <> user_p
            union
            select email_p, 'email', user_p from ev where email_p is not null
            union
            select e.pseudonym, 'email', u.pseudonym
            from raw_crm c join __m_crm_user u on u.value = c.user_id join __m_crm_email e on e.value = c.email
        )
        select distinct identifier, identifier_kind, user_pseudonym from pairs
        """
    ).arrow().read_all()
    con.register("__links", links)
    identity = con.sql(
        f"""
        with located as (
            select coalesce(u.pseudonym, a.pseudonym) as identifier,
                   case when u.pseudonym is not null then 'user' else 'anonymous' end as identifier_kind,
                   i.context_country, i.context_region, i.timestamp
            from __ids i
            left join __m_user u on u.value = i.user_id
            left join __m_anon a on a.value = i.anonymous_id
        ),
        anon_extra as (  -- anonymous ids also seen together with a user id
            select a.pseudonym as identifier, 'anonymous' as identifier_kind, i.context_country, i.context_region, i.timestamp
            from __ids i join __m_anon a on a.value = i.anonymous_id where i.user_id is not null
        ),
        seen as (select * from located union all select * from anon_extra),
        resolved as (
            select l.identifier, l.identifier_kind, count(distinct l.user_pseudonym) as linked_users,
                   case when count(distinct l.user_pseudonym) = 1 then min(l.user_pseudonym) end as only_user
            from __links l group by 1, 2
        ),
        identifiers as (
            select identifier, identifier_kind from seen group by 1, 2
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
        seen_loc as (
            select identifier, identifier_kind, timestamp,
                   nullif(trim(context_country), '') as country, nullif(trim(context_region), '') as region
            from seen
        ),
        subject_location as (  -- country and region of ONE event: the most recent that carries a location
            select s.consent_subject,
                   arg_max({{'country': se.country, 'region': se.region}}, (se.timestamp, se.country, se.region))
                       filter (where se.country is not null or se.region is not null) as loc,
                   max(se.timestamp) as last_seen_at
            from seen_loc se join subjects s using (identifier, identifier_kind)
            group by 1
        ),
        crm_country as (  -- the user's current CRM row: `DE` is a country, `US-CA` a subdivision of US
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
        order by identifier_kind, identifier
        """
    ).arrow().read_all()
    con.unregister("__links")
    return identity.cast(IDENTITY_SCHEMA), links.cast(LINK_SCHEMA)


def crm_country_jurisdiction_sql(jurisdiction_sql: str, column: str) -> str:
    """`jurisdiction_sql` applied to a CRM-style country column: `DE` is a country, `US-CA` a subdivision
    (region) of country US. NULL when the column is NULL or blank."""
    code = f"upper(trim({column}))"
    return jurisdiction_sql.format(country=f"split_part({code}, '-', 1)", region=f"case when contains({code}, '-') then {code} end")


def jurisdiction_case_sql(policy) -> str:
    """SQL CASE mapping {country}/{region} placeholders to the policy's jurisdiction names: region match first,
    then country, else `default`; NULL when both are absent or blank (the caller falls back to the next source
    and finally to `unknown`). `PrivacyPolicy.jurisdiction_for` states the same rule."""
    whens = ["when nullif(trim({country}), '') is null and nullif(trim({region}), '') is null then null"]
    for j in policy.jurisdictions.values():
        if j.regions:
            regions = ", ".join("'" + r.replace("'", "''") + "'" for r in sorted(j.regions))
            whens.append(f"when upper(trim({{region}})) in ({regions}) then '{j.name}'")
    for j in policy.jurisdictions.values():
        if j.countries:
            countries = ", ".join("'" + c.replace("'", "''") + "'" for c in sorted(j.countries))
            whens.append(f"when upper(trim({{country}})) in ({countries}) then '{j.name}'")
    return "case " + " ".join(whens) + f" else '{DEFAULT_JURISDICTION}' end"
