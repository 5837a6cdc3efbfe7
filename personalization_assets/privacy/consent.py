"""Consent decisions (ledger rows), effective consent state, and the as-of-event-time filter.

* Decisions come from `Segment Consent Preference Updated` events (categories -> purposes per
  purposes.yaml), GPC signals (deny the purposes with `gpc_denies`) and opt-out/opt-in privacy requests.
* State: per subject and purpose, validity intervals ordered by effective time. Before a subject's
  first decision the jurisdiction's no-record default applies (deny for personalization, everywhere).
  The subject's jurisdiction comes from privacy/identity_links (event location, else CRM country, else
  `unknown`); a subject known only from the ledger (no identity row) is `unknown`. Every ledger and state
  row records which source decided its jurisdiction (`jurisdiction_source`).
  A GPC denial is sticky: a later grant does not re-enable a `gpc_denies` purpose.
* Events are kept for a purpose iff the interval containing the event's time is `granted`
  (an as-of join, not "current consent"); a subject with no state at all gets nothing (fail-closed).
"""

from __future__ import annotations

from contextlib import contextmanager

import hashlib
import json
from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pyarrow.compute  # registers pa.compute

from personalization_assets.privacy.identity import temp_table_from_arrow
from personalization_assets.core.policies import UNKNOWN_JURISDICTION, PrivacyPolicy
from personalization_assets.core.schemas import arrow_schema
from personalization_assets.privacy.models import ConsentLedgerRow, ConsentState

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# the ledger's and the state's Parquet schemas: generated from their pandera models (core/schemas.py)
LEDGER_SCHEMA = arrow_schema(ConsentLedgerRow)
STATE_SCHEMA = arrow_schema(ConsentState)


def decision_id(source: str, source_ref: str, purpose: str, identifier_kind: str) -> str:
    """Idempotency key. Independent of the pseudonym (and so of the key version): re-running after a key
    rotation must not append the same decision again. (The ledger computes it in SQL, `candidate_decisions`;
    this statement of it is what the tests check the SQL against.)"""
    return hashlib.sha256(f"{source}|{source_ref}|{purpose}|{identifier_kind}".encode()).hexdigest()


def purposes_from_preferences(prefs_json: str | None, policy: PrivacyPolicy) -> dict[str, str]:
    """{purpose: granted|denied} decided by one categoryPreferences object: granted iff every present category
    of the purpose is true (one false denies); a purpose none of whose categories is present is not decided.
    (The ledger applies this rule in SQL, `candidate_decisions`; this statement of it is what the tests check
    the SQL against.)"""
    if not prefs_json:
        return {}
    try:
        prefs = json.loads(prefs_json)
    except (TypeError, ValueError):
        return {}
    if not isinstance(prefs, dict):
        return {}
    flags = {str(k).lower(): v for k, v in prefs.items() if isinstance(v, bool)}
    out = {}
    for p in policy.purposes.values():
        present = [flags[c] for c in p.categories if c in flags]
        if present:
            out[p.name] = "granted" if all(present) else "denied"
    return out


CANDIDATE_SCHEMA = pa.schema([f for f in LEDGER_SCHEMA if f.name not in ("seq", "prev_hash", "row_hash")])
_CANDIDATE_COLUMNS = ", ".join(CANDIDATE_SCHEMA.names)


def _policy_tables(con: duckdb.DuckDBPyConnection, policy: PrivacyPolicy) -> None:
    """The policy as small DuckDB tables: which category decides which purpose, which purposes a GPC signal
    denies, and what each privacy request type decides."""
    cats = [(p.name, c) for p in policy.purposes.values() for c in p.categories]
    tables = {
        "__policy_categories": pa.table({"purpose": [p for p, _ in cats], "category": [c for _, c in cats]}, schema=pa.schema([("purpose", pa.string()), ("category", pa.string())])),
        "__policy_gpc": pa.table({"purpose": pa.array([p.name for p in policy.purposes.values() if p.gpc_denies], pa.string())}),
        "__policy_requests": pa.Table.from_pylist(
            [{"type": t, "purpose": p.name, "decision": d} for p in policy.purposes.values() for t, d in p.privacy_request_types.items()],
            schema=pa.schema([("type", pa.string()), ("purpose", pa.string()), ("decision", pa.string())])),
    }
    for name, table in tables.items():
        temp_table_from_arrow(con, name, table)


def candidate_decisions(con: duckdb.DuckDBPyConnection, policy: PrivacyPolicy, recorded_at: datetime) -> int:
    """Decisions implied by the views `consent_inputs` (events) and `request_inputs` (privacy requests), into
    temp table `__candidates` (CANDIDATE_SCHEMA plus an ordering column). Returns their number.

    `consent_inputs`: identifier_pseudonym, identifier_kind, message_id, timestamp, consent_preferences,
    gpc, is_consent_event, jurisdiction, jurisdiction_source — one row per consent event or GPC-flagged event.
    `request_inputs`: identifier_pseudonym, identifier_kind, request_id, type, received_at, jurisdiction,
    jurisdiction_source.

    All in DuckDB (it spills): the number of decisions grows with the consent history. A CMP event decides
    a purpose iff one of the purpose's categories is present as a boolean (keys compared lower-cased): granted
    iff every present one is true (`purposes_from_preferences` states the same rule for one object).
    """
    _policy_tables(con, policy)
    con.execute(
        f"""
        create or replace temp table __candidates as
        with cmp_src as (
            select identifier_pseudonym, identifier_kind, message_id, timestamp, jurisdiction, jurisdiction_source, consent_preferences,
                   row_number() over () as __r
            from consent_inputs
            where consent_preferences is not null and is_consent_event
        ),
        flags as (
            select c.__r, lower(j.key) as category, j.value::varchar = 'true' as flag
            from cmp_src c,
                 json_each(case when json_valid(c.consent_preferences) and json_type(c.consent_preferences) = 'OBJECT'
                                then c.consent_preferences end) j
            where j.type = 'BOOLEAN'
        ),
        cmp as (
            select s.identifier_pseudonym, s.identifier_kind, pc.purpose,
                   case when bool_and(f.flag) then 'granted' else 'denied' end as decision,
                   s.timestamp as effective_at, 'cmp_event' as source, s.message_id as source_ref, s.jurisdiction,
                   s.jurisdiction_source, s.__r as __ord
            from flags f
            join __policy_categories pc on pc.category = f.category
            join cmp_src s on s.__r = f.__r
            group by s.__r, s.identifier_pseudonym, s.identifier_kind, pc.purpose, s.timestamp, s.message_id, s.jurisdiction,
                     s.jurisdiction_source
        ),
        first_gpc as (  -- the first GPC signal of each identifier is the opt-out (it is sticky, see module doc)
            select identifier_pseudonym, identifier_kind, arg_min(message_id, (timestamp, message_id)) as message_id,
                   min(timestamp) as timestamp, arg_min(jurisdiction, (timestamp, message_id)) as jurisdiction,
                   arg_min(jurisdiction_source, (timestamp, message_id)) as jurisdiction_source
            from consent_inputs where gpc group by 1, 2
        ),
        gpc as (
            select g.identifier_pseudonym, g.identifier_kind, p.purpose, 'denied' as decision, g.timestamp as effective_at,
                   'gpc_signal' as source, g.message_id as source_ref, g.jurisdiction, g.jurisdiction_source, 0 as __ord
            from first_gpc g cross join __policy_gpc p
        ),
        req as (
            select r.identifier_pseudonym, r.identifier_kind, m.purpose, m.decision, r.received_at as effective_at,
                   'privacy_request' as source, r.request_id as source_ref, r.jurisdiction, r.jurisdiction_source, 0 as __ord
            from request_inputs r join __policy_requests m on m.type = r.type
        ),
        decided as (select * from cmp union all select * from gpc union all select * from req)
        select identifier_pseudonym, identifier_kind, purpose, decision, effective_at,
               $recorded_at::timestamptz as recorded_at, source, source_ref, $policy_version as policy_version, jurisdiction,
               jurisdiction_source,
               sha256(source || '|' || coalesce(source_ref, 'None') || '|' || purpose || '|' || identifier_kind) as decision_id,
               __ord
        from decided
        """,
        {"recorded_at": recorded_at, "policy_version": policy.version},
    )
    return con.execute("select count(*) from __candidates").fetchall()[0][0]


def drop_recorded_gpc(con: duckdb.DuckDBPyConnection, existing: pa.Table | str, candidates: str = "__candidates") -> int:
    """Remove from `candidates` the GPC decisions of an identifier and purpose whose ledger (`existing`, with
    identifier_kind, source and source_ref) already holds a GPC decision at an earlier or the same (time, message
    id): the opt-out is the identifier's FIRST signal, and that one is recorded. A run that reads only the raw
    hours that changed therefore decides what a scan of every hour decides; and an identifier whose recorded first
    signal was removed by retention or erasure does not get a second "first" opt-out. Returns the rows removed."""
    gpc_columns = ["identifier_pseudonym", "identifier_kind", "purpose", "effective_at", "source_ref"]
    with _existing_view(con, existing, "__recorded_gpc", gpc_columns, gpc_only=True):
        if con.execute("select count(*) from __recorded_gpc").fetchall()[0][0] == 0:
            return 0
        before = con.execute(f'select count(*) from "{candidates}"').fetchall()[0][0]
        con.execute(
            f"""delete from "{candidates}" c
                where c.source = 'gpc_signal' and exists (
                    select 1 from __recorded_gpc e
                    where e.identifier_pseudonym = c.identifier_pseudonym and e.identifier_kind = c.identifier_kind
                      and e.purpose = c.purpose
                      and (e.effective_at < c.effective_at or (e.effective_at = c.effective_at and e.source_ref <= c.source_ref)))"""
        )
        return before - con.execute(f'select count(*) from "{candidates}"').fetchall()[0][0]


@contextmanager
def _existing_view(con, existing, name: str, columns: list[str], gpc_only: bool = False):
    """`existing` (the stored ledger rows to compare with: a DuckDB table's name, or an Arrow table) as view `name`
    with `columns`, for the duration of the block. A DuckDB table stays in DuckDB (memory-limited, spills): a full
    refresh compares every stored row, 13.4M at 100M events, which as one Arrow table held about 6 GB."""
    if isinstance(existing, str):
        where = " where source = 'gpc_signal'" if gpc_only else ""
        con.execute(f'create or replace temp view "{name}" as select {", ".join(columns)} from "{existing}"{where}')
        try:
            yield
        finally:
            con.execute(f'drop view if exists "{name}"')
        return
    table = existing.filter(pa.compute.equal(existing["source"], "gpc_signal")) if gpc_only else existing
    con.register(name, table.select(columns))
    try:
        yield
    finally:
        con.unregister(name)


def new_ledger_rows(con: duckdb.DuckDBPyConnection, existing: pa.Table | str, candidates: str = "__candidates", into: str = "__fresh") -> int:
    """Candidates (a DuckDB table, see `candidate_decisions`) not yet in the ledger (`existing`, compared by
    decision_id; a repeated candidate counts once), with `denied` after an earlier grant of the same
    identifier and purpose labelled `withdrawn`, into temp table `into` (CANDIDATE_SCHEMA). Returns their
    number; read them in ledger order with `LEDGER_ORDER_SQL`."""
    with _existing_view(con, existing, "__existing", ["decision_id", "identifier_pseudonym", "purpose", "decision", "effective_at"]):
        con.execute(
            f"""
            create or replace temp table "{into}" as
            with cand as (
                select *, row_number() over (partition by decision_id order by effective_at, source_ref, __ord) as __rn
                from "{candidates}"
            ),
            fresh as (
                select c.* from cand c
                where c.__rn = 1 and not exists (select 1 from __existing e where e.decision_id = c.decision_id)
            ),
            first_grant as (
                select identifier_pseudonym, purpose, min(effective_at) as granted_at
                from (select identifier_pseudonym, purpose, effective_at from __existing where decision = 'granted'
                      union all
                      select identifier_pseudonym, purpose, effective_at from fresh where decision = 'granted')
                group by 1, 2
            )
            select {", ".join(f"case when f.decision = 'denied' and g.granted_at < f.effective_at then 'withdrawn' else f.decision end as decision" if n == "decision" else f"f.{n}" for n in CANDIDATE_SCHEMA.names)}
            from fresh f left join first_grant g using (identifier_pseudonym, purpose)
            """
        )
    return con.execute(f'select count(*) from "{into}"').fetchall()[0][0]


LEDGER_ORDER_SQL = f"select {_CANDIDATE_COLUMNS} from \"{{table}}\" order by effective_at, source, source_ref, purpose"


def policy_defaults_table(policy: PrivacyPolicy) -> pa.Table:
    rows = [
        {"jurisdiction": j.name, "purpose": p, "default_status": "granted" if rule.no_record == "allow" else "denied",
         "gpc_denies": policy.purposes[p].gpc_denies}
        for j in policy.jurisdictions.values()
        for p, rule in j.rules.items()
    ]
    return pa.Table.from_pylist(rows)


def build_consent_state(con: duckdb.DuckDBPyConnection, policy: PrivacyPolicy) -> pa.Table:
    """From views `ledger` and `identity` build the interval table (STATE_SCHEMA), as an Arrow table.

    A subject's jurisdiction and its source come from `identity`; a subject with no identity row (known only
    from the ledger), or whose jurisdiction the policy no longer lists, gets the `unknown` jurisdiction."""
    create_consent_state(con, policy, "__consent_state_built")
    try:
        return con.sql("select * from __consent_state_built").arrow().read_all().cast(STATE_SCHEMA)
    finally:
        con.execute("drop table if exists __consent_state_built")


def create_consent_state(con: duckdb.DuckDBPyConnection, policy: PrivacyPolicy, name: str) -> None:
    """`build_consent_state` into DuckDB temp table `name` (the STATE_SCHEMA columns, in their order), ordered by
    subject, purpose and valid_from. It stays in DuckDB, which spills under its memory limit: the platform's
    state has tens of millions of rows at 100M events, and is streamed from there into its Parquet file."""
    con.register("__defaults", policy_defaults_table(policy))
    try:
        con.execute(
            f"""
            create or replace temp table "{name}" as
            with subjects as (
                select consent_subject,
                       any_value({{'j': jurisdiction, 's': jurisdiction_source}}) as js
                from identity group by 1
            ),
            all_decisions as (
                select coalesce(i.consent_subject, l.identifier_pseudonym) as consent_subject, l.purpose,
                       case when l.decision = 'granted' then 'granted' else 'denied' end as status,
                       l.effective_at, l.seq, l.source
                from ledger l
                left join identity i on i.identifier = l.identifier_pseudonym
            ),
            decisions as (
                -- a GPC denial is sticky: only a subject's FIRST GPC signal per purpose decides anything. Later ones are
                -- redundant re-assertions; the ledger holds some of them only when signals arrived out of order
                -- (append-only), so ignoring them makes the state independent of arrival order
                select * from all_decisions
                qualify source <> 'gpc_signal'
                     or effective_at = min(effective_at) filter (where source = 'gpc_signal') over (partition by consent_subject, purpose)
            ),
            all_subjects as (
                select s.consent_subject,
                       case when s.js.j in (select jurisdiction from __defaults) then s.js.j else '{UNKNOWN_JURISDICTION}' end as jurisdiction,
                       case when s.js.j in (select jurisdiction from __defaults) then coalesce(s.js.s, 'unknown') else 'unknown' end
                           as jurisdiction_source
                from subjects s
                union
                select d.consent_subject, '{UNKNOWN_JURISDICTION}', 'unknown' from decisions d
                where d.consent_subject not in (select consent_subject from subjects)
            ),
            sticky as (  -- first GPC denial per subject/purpose for purposes where GPC is sticky
                select d.consent_subject, d.purpose, min(d.effective_at) as gpc_at
                from decisions d join (select distinct purpose from __defaults where gpc_denies) g using (purpose)
                where d.source = 'gpc_signal' group by 1, 2
            ),
            instants as (
                -- decisions of one subject and purpose at the same instant (a user and their device, two sources in one
                -- millisecond) have no order in time: a denial among them wins (fail closed), whatever order they were
                -- received or appended in, so the state does not depend on arrival or on message ids
                select consent_subject, purpose, effective_at,
                       case when bool_or(status = 'denied') then 'denied' else 'granted' end as status,
                       coalesce(arg_max(source, seq) filter (where status = 'denied'), arg_max(source, seq)) as source
                from decisions group by 1, 2, 3
            ),
            ordered as (
                select d.*, lead(d.effective_at) over (partition by d.consent_subject, d.purpose order by d.effective_at) as next_at
                from instants d
            ),
            decided as (
                select o.consent_subject, o.purpose,
                       case when st.gpc_at is not null and o.effective_at >= st.gpc_at then 'denied' else o.status end as status,
                       o.effective_at as valid_from, o.next_at as valid_to, 'decision' as basis, o.source
                from ordered o left join sticky st using (consent_subject, purpose)
            ),
            firsts as (
                select consent_subject, purpose, min(effective_at) as first_at from decisions group by 1, 2
            ),
            defaults as (
                select a.consent_subject, df.purpose, df.default_status as status,
                       timestamptz '1970-01-01 00:00:00+00' as valid_from, f.first_at as valid_to,
                       'policy_default' as basis, cast(null as varchar) as source, a.jurisdiction, a.jurisdiction_source
                from all_subjects a
                join __defaults df on df.jurisdiction = a.jurisdiction
                left join firsts f on f.consent_subject = a.consent_subject and f.purpose = df.purpose
                where f.first_at is null or f.first_at > timestamptz '1970-01-01 00:00:00+00'
            )
            select {", ".join(STATE_SCHEMA.names)} from (
                select consent_subject, purpose, status, valid_from, valid_to, basis, jurisdiction, jurisdiction_source, source from defaults
                union all
                select d.consent_subject, d.purpose, d.status, d.valid_from, d.valid_to, d.basis, a.jurisdiction, a.jurisdiction_source, d.source
                from decided d join all_subjects a using (consent_subject)
            )
            order by consent_subject, purpose, valid_from
            """
        )
    finally:
        con.unregister("__defaults")


# The same as-of rule over a per-subject lookup (the consented step's batches): each subject's GRANTED intervals in
# one row, so a batch probes one row per subject instead of every interval row of consent_state (31M rows at 100M
# events, each batch re-reading them cost most of the step). Only rows with at least one granted purpose come out;
# a missing row means no purpose (tests/privacy/test_consent_asof.py compares it with ASOF_PURPOSES_SQL).
SUBJECT_GRANTED_SQL = """
    select consent_subject, list({'purpose': purpose, 'valid_from': valid_from, 'valid_to': valid_to}) as granted
    from consent_state where status = 'granted' group by 1
"""
ASOF_PURPOSES_LOOKUP_SQL = """
    select __row, list(g.purpose order by g.purpose) as purposes
    from (select e.__row, e.timestamp, unnest(s.granted) as g
          from {events} e join {lookup} s using (consent_subject))
    where timestamp >= g.valid_from and (g.valid_to is null or timestamp < g.valid_to)
    group by __row
"""

ASOF_PURPOSES_SQL = """
    select e.__row, list(s.purpose order by s.purpose) filter (where s.status = 'granted') as purposes
    from {events} e
    left join consent_state s
      on s.consent_subject = e.consent_subject
     and e.timestamp >= s.valid_from
     and (s.valid_to is null or e.timestamp < s.valid_to)
    group by e.__row
"""
