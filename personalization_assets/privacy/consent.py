"""Consent decisions (ledger rows), effective consent state, and the as-of-event-time filter.

* Decisions come from `Segment Consent Preference Updated` events (categories -> purposes per
  purposes.yaml), GPC signals (deny the purposes with `gpc_denies`) and opt-out/opt-in privacy requests.
* State: per subject and purpose, validity intervals ordered by effective time. Before a subject's
  first decision the jurisdiction's no-record default applies (deny for personalization, everywhere).
  A GPC denial is sticky: a later grant does not re-enable a `gpc_denies` purpose.
* Events are kept for a purpose iff the interval containing the event's time is `granted`
  (an as-of join, not "current consent"); a subject with no state at all gets nothing (fail-closed).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from personalization_assets.privacy.policies import PrivacyPolicy

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

LEDGER_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("decision_id", pa.string()),
        ("identifier_pseudonym", pa.string()),
        ("identifier_kind", pa.string()),
        ("purpose", pa.string()),
        ("decision", pa.string()),
        ("effective_at", pa.timestamp("us", tz="UTC")),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
        ("source_ref", pa.string()),
        ("policy_version", pa.string()),
        ("jurisdiction", pa.string()),
        ("prev_hash", pa.string()),
        ("row_hash", pa.string()),
    ]
)

STATE_SCHEMA = pa.schema(
    [
        ("consent_subject", pa.string()),
        ("purpose", pa.string()),
        ("status", pa.string()),
        ("valid_from", pa.timestamp("us", tz="UTC")),
        ("valid_to", pa.timestamp("us", tz="UTC")),
        ("basis", pa.string()),
        ("jurisdiction", pa.string()),
        ("source", pa.string()),
    ]
)


def decision_id(source: str, source_ref: str, purpose: str, identifier_kind: str) -> str:
    """Idempotency key. Independent of the pseudonym (and so of the key version): re-running after a key
    rotation must not append the same decision again."""
    return hashlib.sha256(f"{source}|{source_ref}|{purpose}|{identifier_kind}".encode()).hexdigest()


def purposes_from_preferences(prefs_json: str | None, policy: PrivacyPolicy) -> dict[str, str]:
    """{purpose: granted|denied} decided by one categoryPreferences object: granted iff every present category
    of the purpose is true (one false denies); a purpose none of whose categories is present is not decided."""
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


def candidate_decisions(con: duckdb.DuckDBPyConnection, policy: PrivacyPolicy, recorded_at: datetime) -> list[dict]:
    """Decisions implied by the views `consent_inputs` (events) and `request_inputs` (privacy requests).

    `consent_inputs`: identifier_pseudonym, identifier_kind, message_id, timestamp, consent_preferences,
    gpc, jurisdiction — one row per consent event or GPC-flagged event.
    `request_inputs`: identifier_pseudonym, identifier_kind, request_id, type, received_at, jurisdiction.
    """
    rows: list[dict] = []
    base = {"recorded_at": recorded_at, "policy_version": policy.version}
    cmp_events = con.sql(
        "select * from consent_inputs where consent_preferences is not null and is_consent_event order by timestamp, message_id"
    ).fetchall()
    cols = [d[0] for d in con.sql("select * from consent_inputs limit 0").description]
    for rec in cmp_events:
        r = dict(zip(cols, rec))
        for purpose, decision in purposes_from_preferences(r["consent_preferences"], policy).items():
            rows.append({**base, "identifier_pseudonym": r["identifier_pseudonym"], "identifier_kind": r["identifier_kind"],
                         "purpose": purpose, "decision": decision, "effective_at": r["timestamp"], "source": "cmp_event",
                         "source_ref": r["message_id"], "jurisdiction": r["jurisdiction"]})
    gpc_purposes = [p.name for p in policy.purposes.values() if p.gpc_denies]
    if gpc_purposes:
        # the first GPC signal of each identifier is the opt-out (it is sticky, see module doc)
        first_gpc = con.sql(
            """select identifier_pseudonym, identifier_kind, arg_min(message_id, (timestamp, message_id)) as message_id,
                      min(timestamp) as timestamp, arg_min(jurisdiction, (timestamp, message_id)) as jurisdiction
               from consent_inputs where gpc group by 1, 2 order by 1, 2"""
        ).fetchall()
        for ident, kind, mid, ts, jur in first_gpc:
            for purpose in gpc_purposes:
                rows.append({**base, "identifier_pseudonym": ident, "identifier_kind": kind, "purpose": purpose,
                             "decision": "denied", "effective_at": ts, "source": "gpc_signal", "source_ref": mid, "jurisdiction": jur})
    request_map = {(t, p.name): d for p in policy.purposes.values() for t, d in p.privacy_request_types.items()}
    for ident, kind, request_id, rtype, received_at, jur in con.sql(
        "select identifier_pseudonym, identifier_kind, request_id, type, received_at, jurisdiction from request_inputs order by received_at, request_id"
    ).fetchall():
        for (t, purpose), decision in request_map.items():
            if t == rtype:
                rows.append({**base, "identifier_pseudonym": ident, "identifier_kind": kind, "purpose": purpose, "decision": decision,
                             "effective_at": received_at, "source": "privacy_request", "source_ref": request_id, "jurisdiction": jur})
    for r in rows:
        r["decision_id"] = decision_id(r["source"], r["source_ref"], r["purpose"], r["identifier_kind"])
    return rows


def new_ledger_rows(existing: pa.Table, candidates: list[dict]) -> list[dict]:
    """Candidates not yet in the ledger, with `denied` after an earlier grant labelled `withdrawn`."""
    seen = set(existing["decision_id"].to_pylist()) if existing.num_rows else set()
    fresh = []
    for c in candidates:
        if c["decision_id"] in seen:
            continue
        seen.add(c["decision_id"])
        fresh.append(c)
    if not fresh:
        return []
    grants: dict[tuple, list[datetime]] = {}
    for r in existing.select(["identifier_pseudonym", "purpose", "decision", "effective_at"]).to_pylist() if existing.num_rows else []:
        if r["decision"] == "granted":
            grants.setdefault((r["identifier_pseudonym"], r["purpose"]), []).append(r["effective_at"])
    for r in fresh:
        if r["decision"] == "granted":
            grants.setdefault((r["identifier_pseudonym"], r["purpose"]), []).append(r["effective_at"])
    for r in fresh:
        if r["decision"] == "denied" and any(t < r["effective_at"] for t in grants.get((r["identifier_pseudonym"], r["purpose"]), [])):
            r["decision"] = "withdrawn"
    fresh.sort(key=lambda r: (r["effective_at"], r["source"], r["source_ref"], r["purpose"]))
    return fresh


def policy_defaults_table(policy: PrivacyPolicy) -> pa.Table:
    rows = [
        {"jurisdiction": j.name, "purpose": p, "default_status": "granted" if rule.no_record == "allow" else "denied",
         "gpc_denies": policy.purposes[p].gpc_denies}
        for j in policy.jurisdictions.values()
        for p, rule in j.rules.items()
    ]
    return pa.Table.from_pylist(rows)


def build_consent_state(con: duckdb.DuckDBPyConnection, policy: PrivacyPolicy) -> pa.Table:
    """From views `ledger` and `identity` build the interval table (STATE_SCHEMA)."""
    con.register("__defaults", policy_defaults_table(policy))
    try:
        state = con.sql(
            """
            with subjects as (
                select consent_subject, any_value(jurisdiction) as jurisdiction from identity group by 1
            ),
            decisions as (
                select coalesce(i.consent_subject, l.identifier_pseudonym) as consent_subject, l.purpose,
                       case when l.decision = 'granted' then 'granted' else 'denied' end as status,
                       l.effective_at, l.seq, l.source
                from ledger l
                left join identity i on i.identifier = l.identifier_pseudonym
            ),
            all_subjects as (
                select s.consent_subject, coalesce(s.jurisdiction, 'default') as jurisdiction from subjects s
                union
                select d.consent_subject, 'default' from decisions d
                where d.consent_subject not in (select consent_subject from subjects)
            ),
            sticky as (  -- first GPC denial per subject/purpose for purposes where GPC is sticky
                select d.consent_subject, d.purpose, min(d.effective_at) as gpc_at
                from decisions d join (select distinct purpose from __defaults where gpc_denies) g using (purpose)
                where d.source = 'gpc_signal' group by 1, 2
            ),
            ordered as (
                select d.*, lead(d.effective_at) over (partition by d.consent_subject, d.purpose order by d.effective_at, d.seq) as next_at,
                       row_number() over (partition by d.consent_subject, d.purpose order by d.effective_at, d.seq) as rn
                from decisions d
            ),
            decided as (
                select o.consent_subject, o.purpose,
                       case when st.gpc_at is not null and o.effective_at >= st.gpc_at then 'denied' else o.status end as status,
                       o.effective_at as valid_from, o.next_at as valid_to, 'decision' as basis, o.source
                from ordered o left join sticky st using (consent_subject, purpose)
                where o.next_at is null or o.next_at > o.effective_at  -- same-instant decisions: the later seq wins
            ),
            firsts as (
                select consent_subject, purpose, min(effective_at) as first_at from decisions group by 1, 2
            ),
            defaults as (
                select a.consent_subject, df.purpose, df.default_status as status,
                       timestamptz '1970-01-01 00:00:00+00' as valid_from, f.first_at as valid_to,
                       'policy_default' as basis, cast(null as varchar) as source, a.jurisdiction
                from all_subjects a
                join __defaults df on df.jurisdiction = a.jurisdiction
                left join firsts f on f.consent_subject = a.consent_subject and f.purpose = df.purpose
                where f.first_at is null or f.first_at > timestamptz '1970-01-01 00:00:00+00'
            )
            select consent_subject, purpose, status, valid_from, valid_to, basis, jurisdiction, source from defaults
            union all
            select d.consent_subject, d.purpose, d.status, d.valid_from, d.valid_to, d.basis, a.jurisdiction, d.source
            from decided d join all_subjects a using (consent_subject)
            order by consent_subject, purpose, valid_from
            """
        ).arrow().read_all()
    finally:
        con.unregister("__defaults")
    return state.select(STATE_SCHEMA.names).cast(STATE_SCHEMA)


ASOF_PURPOSES_SQL = """
    select e.__row, list(s.purpose order by s.purpose) filter (where s.status = 'granted') as purposes
    from {events} e
    left join consent_state s
      on s.consent_subject = e.consent_subject
     and e.timestamp >= s.valid_from
     and (s.valid_to is null or e.timestamp < s.valid_to)
    group by e.__row
"""
