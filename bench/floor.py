"""The floor: a bare DuckDB script doing only the unavoidable work — parse the NDJSON, dedup, resolve
persons, sessionize, RFM, affinity — with no validation, privacy or orchestration.

    python -m bench.floor LANDING_DIR OUT_DIR END_DATE
"""

from __future__ import annotations

import sys

import duckdb

from bench.common import (
    CONVERSIONS, ENGAGEMENT_EVENTS, LATE_BOUND_DAYS, MAX_SESSION_HOURS, RFM_WINDOW_DAYS, SESSION_GAP_MINUTES, Timer, as_of_for, emit,
)

COLUMNS = ("{messageId: 'VARCHAR', type: 'VARCHAR', event: 'VARCHAR', anonymousId: 'VARCHAR', userId: 'VARCHAR', "
           "previousId: 'VARCHAR', timestamp: 'VARCHAR', receivedAt: 'VARCHAR', "
           "properties: 'STRUCT(category VARCHAR, price DOUBLE, content_id VARCHAR, dwell_ms BIGINT)'}")


def run(landing: str, out: str, end: str, memory_limit: str = "2GB") -> dict:
    as_of = as_of_for(end).isoformat()
    timer = Timer()
    con = duckdb.connect()
    con.execute(f"set memory_limit='{memory_limit}'; set preserve_insertion_order=false; set TimeZone='UTC'")
    with timer.stage("parse"):
        con.execute(f"""
            create table ev as
            select messageId as mid, type, event, anonymousId as a, userId as u, previousId as p,
                   timestamp::timestamptz as ts, receivedAt::timestamptz as rts,
                   properties.category as cat, properties.price as price,
                   strptime(regexp_extract(filename, 'date=([0-9-]+)/hour=([0-9]+)', 1) || ' ' ||
                            regexp_extract(filename, 'date=([0-9-]+)/hour=([0-9]+)', 2), '%Y-%m-%d %H')::timestamptz as landing_hour
            from read_json('{landing}/events/*/*/*.jsonl*', format='newline_delimited', columns={COLUMNS}, filename=true)
        """)
        n_events = con.execute("select count(*) from ev").fetchall()[0][0]
    with timer.stage("persons"):
        # an anonymous id linked to exactly one user belongs to that user (the platform's junk guard drops
        # ids linked to more than 5; with the benchmark data there are none)
        con.execute("""
            create table amap as
            select a, min(u) as u from (select a, u from ev where a is not null and u is not null
                                        union select p, u from ev where p is not null and u is not null)
            group by a having count(distinct u) <= 5 and count(distinct u) = 1
        """)
    with timer.stage("dedup_sessionize"):
        con.execute(f"""
            create table clean as
            with known as (
                select e.*, coalesce(e.u, m.u, e.a) as person
                from ev e left join amap m on m.a = e.a
                where e.ts <= '{as_of}'::timestamptz and e.rts <= '{as_of}'::timestamptz
            ), ordered as (  -- one sort: copies of a message sit next to each other
                select *, row_number() over (partition by mid order by rts, landing_hour) as copy from known
            )
            select * exclude (copy) from ordered
            where copy = 1 and ts >= landing_hour - interval {LATE_BOUND_DAYS} day
        """)
        con.execute(f"""
            create table sessions as
            with g as (
                select person, ts, event, type,
                       case when lag(ts) over w is null or ts - lag(ts) over w >= interval {SESSION_GAP_MINUTES} minute then 1 else 0 end as new_run
                from clean window w as (partition by person order by ts, mid)
            ), r as (select *, sum(new_run) over (partition by person order by ts rows unbounded preceding) as run from g),
            p as (select *, min(ts) over (partition by person, run) as run_start from r)
            select person, run, floor(epoch(ts - run_start) / ({MAX_SESSION_HOURS} * 3600))::bigint as piece,
                   min(ts) as session_start, count(*) as events
            from p group by all
        """)
    conv = ", ".join(f"'{c}'" for c in CONVERSIONS)
    eng = ", ".join(f"'{e}'" for e in ENGAGEMENT_EVENTS)
    with timer.stage("rfm_affinity"):
        con.execute(f"""
            create table rfm as
            with s as (
                select person, count(*) filter (where session_start > '{as_of}'::timestamptz - interval {RFM_WINDOW_DAYS} day) as frequency
                from sessions group by person
            ), c as (
                select person,
                       coalesce(sum(price) filter (where type = 'track' and event in ({conv}) and ts > '{as_of}'::timestamptz - interval {RFM_WINDOW_DAYS} day), 0) as monetary,
                       count(*) filter (where type = 'track' and event in ({conv}) and ts > '{as_of}'::timestamptz - interval {RFM_WINDOW_DAYS} day) as orders
                from clean group by person
            )
            select c.person, coalesce(s.frequency, 0) as frequency, c.monetary, c.orders from c left join s using (person)
        """)
        con.execute(f"""
            create table affinity as
            select person, cat as category, count(*) as events
            from clean where cat is not null and (type in ('page', 'screen') or (type = 'track' and event in ({eng})))
            group by all
        """)
    with timer.stage("write"):
        for t in ("clean", "sessions", "rfm", "affinity"):
            con.execute(f"copy {t} to '{out}/{t}.parquet' (format parquet)")
    totals = con.execute("""
        select (select count(*) from sessions), (select count(*) from rfm), (select sum(frequency) from rfm),
               (select round(sum(monetary), 2) from rfm), (select sum(orders) from rfm), (select count(*) from affinity),
               (select count(*) from clean)
    """).fetchall()[0]
    return {"path": "floor", "events": n_events, "stages": timer.stages, "totals": _totals(totals)}


def _totals(row) -> dict:
    keys = ("sessions", "persons", "frequency", "monetary", "orders", "affinity_rows", "clean_events")
    return {k: (float(v) if k == "monetary" else int(v)) for k, v in zip(keys, row)}


if __name__ == "__main__":
    emit(run(*sys.argv[1:4]))
