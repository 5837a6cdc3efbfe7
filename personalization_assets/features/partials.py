"""Per-person state of the feature build, folded forward between runs (issue #12).

The derived per-person tables (sessions, user_rfm, engagement, purpose_eligibility) depend on a person's
events_clean rows and on `as_of`. The part that does not depend on `as_of` is kept in the lake as state:

* `features/state_sessions`   the person's sessions (the published columns without `as_of`);
* `features/state_cells`      events per (person, UTC date, UTC hour) — the per-day partials of engagement;
* `features/state_conversions` the person's conversion events (timestamp, price) — RFM's monetary/orders;
* `features/state_subjects`   the person's distinct consent subjects — purpose_eligibility;
* `features/state_persons`    per person: events and a fingerprint of the rows the state was computed from,
  plus `state_key` (the session parameters, the state format and a digest of the code that computes the state).
  Written LAST; deleted first.

Each state row of a person is a pure function of that person's events_clean rows (message_id, consent_subject,
type, event, timestamp, content_id, price, dwell_ms) and of `session_gap_minutes` / `max_session_hours`.
A run computes every person's fingerprint from the events_clean it just wrote (one column scan, a hash
aggregate, no sort). A person whose fingerprint and state_key equal the stored ones keeps its stored state;
every other person (new, changed, renamed by an identity merge, re-keyed by a key rotation, with events
removed by consent withdrawal, retention or erasure) is recomputed from its events_clean rows only, and a
person that disappeared is dropped. The as_of-dependent tables are then derived from the state with the
same expressions as the from-events SQL of features/sql.py, so the result equals a full rebuild exactly
(tests/features/test_features_incremental.py builds both and compares every table).

The fingerprint is `count(*)` and the 128-bit sum of a 64-bit hash of each row; a changed person keeping
both is a hash coincidence (about 2^-64 per changed person). A run that crashes between the writes leaves
no `state_persons` (it is deleted before the others are written), so the next run recomputes every person.
`full_refresh` ignores the stored state. content_affinity is not derived from state: its decay weight
2^(-(as_of - t)/half_life) cannot be factored out of stored sums bit-exactly, so it is still computed from
events_clean (a scan and hash aggregate, no sort).

The state tables hold person_id and consent_subject: they are declared to the erasure plan (the `also`
tables of features/sessions' `privacy/erasure` handler) and re-keyed by key rotation like every features table.
"""

from __future__ import annotations

import hashlib
import time
from functools import cache
from pathlib import Path

from personalization_assets.core.storage import ROW_GROUP_ROWS
from personalization_assets.features.params import FeatureParams
from personalization_assets.features.person_ranges import RANGE_ROWS, person_range_bounds, range_predicates
from personalization_assets.features.sql import (
    _create,
    _count,
    _is_conversion,
    _q,
    build_content_affinity_sql,
    build_purpose_eligibility_sql,
    build_sessions_sql,
    joins_as_written,
    temp_table,
    US_PER_DAY,
)

LAYER = "features"
STATE_FORMAT = 1
STATE_TABLES = ("state_sessions", "state_cells", "state_conversions", "state_subjects", "state_persons")
# pseudonym columns of each state table (the erasure plan deletes rows holding an erased pseudonym)
STATE_ERASURE_COLUMNS = {
    "state_sessions": ["person_id"],
    "state_cells": ["person_id"],
    "state_conversions": ["person_id"],
    "state_subjects": ["person_id", "consent_subject"],
    "state_persons": ["person_id"],
}
# the events_clean columns the state is computed from (the fingerprint covers exactly these)
FINGERPRINT_COLUMNS = ("message_id", "consent_subject", "type", "event", "timestamp", "content_id", "price", "dwell_ms")

OLD = "feat_old_{table}"  # views of the stored state
NEW = "feat_new_{table}"  # temp tables of this run's state
FINGERPRINTS = "feat_fingerprints"
KEEP = "feat_keep_persons"
TOUCHED = "feat_touched_persons"
TOUCHED_EVENTS = "feat_touched_events"
SESSION_COLUMNS = ("person_id", "session_id", "session_start", "session_end", "events", "pages", "dwell_ms",
                   "landing_content_id", "converted")


@cache
def _code_digest() -> str:
    """sha256 of the code a state row is computed by (this module, the feature SQL, the parameters): an upgrade that
    changes how sessions, cells, conversions or subjects are computed must not reuse states computed the old way.
    `STATE_FORMAT` alone relied on whoever changed the SQL to bump it."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in ("partials.py", "sql.py", "params.py"):
        h.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def state_key(p: FeatureParams) -> str:
    """What the stored state depends on besides the events: a change recomputes every person."""
    return (f"v{STATE_FORMAT};code={_code_digest()};gap_minutes={p.session_gap_minutes};"
            f"max_session_hours={p.max_session_hours}")


def erasure_also() -> list[dict]:
    """The state tables as `also` entries of a `privacy/erasure` lake handler."""
    return [{"layer": LAYER, "table": t, "partitioned": False, "columns": STATE_ERASURE_COLUMNS[t]} for t in STATE_TABLES]


# --- SQL ------------------------------------------------------------------------------------------------


def build_fingerprints_sql(events_clean: str) -> str:
    cols = ", ".join(FINGERPRINT_COLUMNS)
    return f"""
        select person_id, count(*)::bigint as events, sum(hash({cols}))::hugeint::varchar as fingerprint
        from {_q(events_clean)}
        group by person_id
    """


def build_state_cells_sql(events: str) -> str:
    return f"""
        select person_id, timestamp::date as day, hour(timestamp)::bigint as h, count(*)::bigint as n
        from {_q(events)}
        group by person_id, day, h
    """


def build_state_conversions_sql(events: str) -> str:
    return f"""
        select person_id, message_id, timestamp, price
        from {_q(events)}
        where {_is_conversion()}
    """


def build_state_subjects_sql(events: str) -> str:
    return f"select distinct person_id, consent_subject from {_q(events)}"


def build_user_rfm_from_state_sql(p: FeatureParams, sessions: str, conversions: str, identity_map: str) -> str:
    """features/sql.py build_user_rfm_sql, from the state: first/last event = first session start / last
    session end; monetary and orders from the stored conversions."""
    window_start_us = p.as_of_us - p.rfm_window_days * US_PER_DAY
    return f"""
        with se as (
            select person_id, min(session_start) as first_seen_at, max(session_end) as last_seen_at,
                   count(*) filter (where epoch_us(session_start) > {window_start_us}) as frequency
            from {sessions}
            group by person_id
        ),
        cv as (
            select person_id,
                   sum(price) filter (where epoch_us(timestamp) > {window_start_us}) as monetary,
                   count(*) filter (where epoch_us(timestamp) > {window_start_us}) as orders
            from {conversions}
            group by person_id
        ),
        known as (
            select distinct person_id from {identity_map} where identifier_kind = 'user'
        )
        select
            se.person_id,
            (({p.as_of_us} - epoch_us(se.last_seen_at)) // {US_PER_DAY})::bigint as recency_days,
            coalesce(se.frequency, 0)::bigint as frequency,
            round(coalesce(cv.monetary, 0), 6)::double as monetary,
            coalesce(cv.orders, 0)::bigint as orders,
            se.first_seen_at,
            se.last_seen_at,
            known.person_id is not null as is_known_user,
            {p.as_of_sql} as as_of
        from se
        left join cv using (person_id)
        left join known using (person_id)
        order by se.person_id
    """


def build_engagement_from_state_sql(p: FeatureParams, sessions: str, cells: str) -> str:
    """features/sql.py's engagement with its `cells` read from the stored per-hour partials."""
    from personalization_assets.features.sql import engagement_from_cells_sql

    return engagement_from_cells_sql(p, f"select person_id, day, h, n from {cells}", sessions)


# --- the incremental derived stage ----------------------------------------------------------------------


def _load_old_state(con, lake, key: str) -> str | None:
    """Register the stored state as views; None (with the reason) when it cannot be reused."""
    if not lake.exists(LAYER, "state_persons"):
        return "no stored state"
    for table in STATE_TABLES:
        if not lake.exists(LAYER, table):
            return f"state table {LAYER}/{table} missing"
        lake.register(con, OLD.format(table=table), LAYER, table)
    keys = [r[0] for r in con.execute(f"select distinct state_key from {OLD.format(table='state_persons')}").fetchall()]
    if keys and keys != [key]:
        return "session parameters, state format or state code changed"
    return None


def build_derived_incremental(con, lake, p: FeatureParams, events_clean: str, consent_view: str,
                              identity_map: str = "feat_identity_map", full_refresh: bool = False,
                              range_rows: int = RANGE_ROWS) -> dict:
    """Stage 3 of the build with the per-person state: the derived tables as temp tables (`feat_<table>`, like
    features/sql.py build_derived) and the new state written to the lake. Returns stats for the metadata."""
    t0 = time.monotonic()
    key = state_key(p)
    _create(con, FINGERPRINTS, build_fingerprints_sql(events_clean))
    reason = "full_refresh" if full_refresh else _load_old_state(con, lake, key)
    if reason is None:
        # persons whose stored state was computed from exactly the rows they have now
        _create(con, KEEP, f"""
            select f.person_id from {FINGERPRINTS} as f
            join {OLD.format(table='state_persons')} as o
              on o.person_id = f.person_id and o.events = f.events and o.fingerprint = f.fingerprint
             and o.state_key = '{key}'
        """)
    else:
        _create(con, KEEP, f"select person_id from {FINGERPRINTS} where false")
    _create(con, TOUCHED, f"select person_id from {FINGERPRINTS} anti join {KEEP} using (person_id)")
    ranges = person_range_bounds(
        con, f"select person_id, events from {FINGERPRINTS} semi join {TOUCHED} using (person_id)", range_rows)
    fingerprint_s = round(time.monotonic() - t0, 2)

    t1 = time.monotonic()
    fresh = {
        "state_sessions": f"select {', '.join(SESSION_COLUMNS)} from ({build_sessions_sql(p, TOUCHED_EVENTS)})",
        "state_cells": build_state_cells_sql(TOUCHED_EVENTS),
        "state_conversions": build_state_conversions_sql(TOUCHED_EVENTS),
        "state_subjects": build_state_subjects_sql(TOUCHED_EVENTS),
    }
    order = {"state_sessions": "person_id, session_start", "state_cells": "person_id, day, h",
             "state_conversions": "person_id, timestamp, message_id", "state_subjects": "person_id, consent_subject"}
    # a range of persons at a time (one range unless the recomputed persons have more than range_rows events):
    # events_clean is sorted by person, so a range reads only its row groups, and each range's windows and sorts
    # hold 1/k of the history. Ranges follow person_id order and each is inserted in order: the tables are the same.
    with joins_as_written(con):
        for i, where in enumerate(range_predicates(ranges)):
            con.execute(f"""
                create or replace temp view {TOUCHED_EVENTS} as
                select * from {_q(events_clean)} semi join {TOUCHED} using (person_id) where {where}
            """)
            for table, sql in fresh.items():
                if reason is None:
                    kept = f"select * from {OLD.format(table=table)} semi join {KEEP} using (person_id) where {where}"
                    sql = f"select * from ({kept}) union all by name select * from ({sql})"
                ordered = f"select * from ({sql}) order by {order[table]}"
                if i == 0:
                    _create(con, NEW.format(table=table), ordered)
                else:
                    con.execute(f"insert into {NEW.format(table=table)} {ordered}")
    _create(con, NEW.format(table="state_persons"),
            f"select person_id, events, fingerprint, '{key}' as state_key from {FINGERPRINTS} order by person_id")
    recompute_s = round(time.monotonic() - t1, 2)

    stats = {
        "person_ranges": len(ranges) + 1,
        "persons": _count(con, FINGERPRINTS),
        "persons_touched": _count(con, TOUCHED),
        "persons_reused": _count(con, KEEP),
        "events_recomputed": int(con.execute(f"select coalesce(sum(events), 0) from {FINGERPRINTS} semi join {TOUCHED} using (person_id)").fetchall()[0][0]),
        "state": "rebuilt: " + reason if reason is not None else "reused",
    }
    if reason is None:
        stats["persons_dropped"] = int(con.execute(
            f"select count(*) from {OLD.format(table='state_persons')} anti join {FINGERPRINTS} using (person_id)").fetchall()[0][0])

    # the derived tables, from the state (same names as features/sql.py build_derived)
    t2 = time.monotonic()
    sessions, cells, conversions, subjects = (NEW.format(table=t) for t in ("state_sessions", "state_cells", "state_conversions", "state_subjects"))
    _create(con, temp_table("sessions"), f"select *, {p.as_of_sql} as as_of from {sessions} order by person_id, session_start")
    _create(con, temp_table("user_rfm"), build_user_rfm_from_state_sql(p, sessions, conversions, identity_map))
    _create(con, temp_table("content_affinity"), build_content_affinity_sql(p, events_clean))
    _create(con, temp_table("engagement"), build_engagement_from_state_sql(p, sessions, cells))
    _create(con, temp_table("purpose_eligibility"), build_purpose_eligibility_sql(p, consent_view, subjects))
    derive_s = round(time.monotonic() - t2, 2)

    # write the state: state_persons is removed first and written last (a crash in between -> full recompute)
    t3 = time.monotonic()
    lake.delete_partition(LAYER, "state_persons")
    for table in STATE_TABLES:
        con.execute(f"drop view if exists {OLD.format(table=table)}")
    for table in STATE_TABLES:
        lake.write_table(LAYER, table, con.sql(f"select * from {NEW.format(table=table)}").to_arrow_reader(ROW_GROUP_ROWS))
    write_s = round(time.monotonic() - t3, 2)
    for name in (FINGERPRINTS, KEEP, TOUCHED, *(NEW.format(table=t) for t in STATE_TABLES)):
        con.execute(f"drop table if exists {name}")
    con.execute(f"drop view if exists {TOUCHED_EVENTS}")

    from personalization_assets.features.sql import DERIVED
    stats.update({f"{t}_rows": _count(con, temp_table(t)) for t in DERIVED})
    stats["partials_seconds"] = {"fingerprint": fingerprint_s, "recompute_touched": recompute_s, "derive": derive_s, "write_state": write_s}
    return stats
