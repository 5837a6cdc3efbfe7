"""Hand-built consented events and consent state for the feature tests (types from the pandera models)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.features.inputs import consent_state_schema, consented_events_schema
from personalization_assets.features.params import FeatureParams
from personalization_assets.features.sql import compute_features

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ALL_PURPOSES = ["personalization", "analytics", "advertising", "sale_share"]


def pseudo(name: str) -> str:
    """A well-formed pseudonym for a readable test name (v1:<sha256 hex>)."""
    return "v1:" + hashlib.sha256(name.encode()).hexdigest()


def ts(text: str) -> datetime:
    """'2026-01-05 10:00' or '2026-01-05 10:00:30' as an aware UTC datetime."""
    fmt = "%Y-%m-%d %H:%M:%S" if text.count(":") == 2 else "%Y-%m-%d %H:%M"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


_counter = [0]


def event(
    *,
    at: str | datetime,
    anon: str | None = None,
    user: str | None = None,
    previous: str | None = None,
    subject: str | None = None,
    type: str = "track",
    name: str | None = "Content Viewed",
    message_id: str | None = None,
    received: str | datetime | None = None,
    landing: str | datetime | None = None,
    content_id: str | None = None,
    category: str | None = None,
    price: float | None = None,
    currency: str | None = None,
    dwell_ms: int | None = None,
    page_url: str | None = None,
    purposes: list[str] | None = None,
) -> dict:
    """One consented event. Identifiers are readable names turned into pseudonyms; the consent subject
    defaults to the user, else the anonymous id; receive time defaults to the event time and the
    landing hour to the receive hour."""
    t = ts(at) if isinstance(at, str) else at
    r = (ts(received) if isinstance(received, str) else received) if received is not None else t
    land = (ts(landing) if isinstance(landing, str) else landing) if landing is not None else r.replace(minute=0, second=0, microsecond=0)
    if message_id is None:
        _counter[0] += 1
        message_id = f"m{_counter[0]:06d}"
    if type != "track":
        name = None
    subject = subject or user or anon or previous
    return {
        "message_id": message_id,
        "type": type,
        "event": name,
        "anonymous_pseudonym": pseudo(anon) if anon else None,
        "user_pseudonym": pseudo(user) if user else None,
        "previous_pseudonym": pseudo(previous) if previous else None,
        "consent_subject": pseudo(subject),
        "timestamp": t,
        "timestamp_source": "timestamp",
        "received_at": r,
        "landing_hour": land,
        "ip_prefix": None,
        "context_locale": "en-US",
        "context_country": "US",
        "context_region": "US-CA",
        "jurisdiction": "US-CA",
        "page_url": page_url,
        "page_referrer": None,
        "content_id": content_id,
        "category": category,
        "price": price,
        "currency": currency,
        "dwell_ms": dwell_ms,
        "email_pseudonym": None,
        "phone_pseudonym": None,
        "purposes": list(purposes) if purposes is not None else ["personalization", "analytics"],
    }


def events_table(rows: list[dict]) -> pa.Table:
    schema = consented_events_schema()
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()


def consent(subject: str, purpose: str, status: str, start: str | datetime | None = None, end: str | datetime | None = None) -> dict:
    s = (ts(start) if isinstance(start, str) else start) if start is not None else EPOCH
    e = (ts(end) if isinstance(end, str) else end) if end is not None else None
    return {
        "consent_subject": pseudo(subject),
        "purpose": purpose,
        "status": status,
        "valid_from": s,
        "valid_to": e,
        "basis": "policy_default" if start is None else "decision",
        "jurisdiction": "US-CA",
        "jurisdiction_source": "event_location",
        "source": None if start is None else "cmp_event",
    }


def granted_all(*subjects: str, purposes: list[str] = ALL_PURPOSES) -> list[dict]:
    """Consent granted for every purpose for all time."""
    return [consent(s, p, "granted") for s in subjects for p in purposes]


def consent_table(rows: list[dict]) -> pa.Table:
    schema = consent_state_schema()
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config={"threads": 2})
    con.execute("SET TimeZone = 'UTC'")
    return con


def build(events: list[dict], consent_rows: list[dict], as_of: str | datetime = "2026-01-10 00:00", **params) -> dict[str, pa.Table]:
    """Run the whole feature build on in-memory inputs; every feature table as an Arrow table."""
    con = connect()
    try:
        con.register("consented_events", events_table(events))
        con.register("consent_state", consent_table(consent_rows))
        p = FeatureParams(as_of=ts(as_of) if isinstance(as_of, str) else as_of, **params)
        result = compute_features(con, p)
        out = {t: result.arrow(con, t) for t in result.tables}
        out["_stats"] = result.stats
        return out
    finally:
        con.close()


def rows(table: pa.Table, *columns: str) -> list[dict]:
    data = table.to_pylist()
    return [{c: r[c] for c in columns} for r in data] if columns else data


def write_lake(lake, events: list[dict], consent_rows: list[dict]) -> None:
    """Write consented/events as hourly partitions (by landing hour) and privacy/consent_state."""
    table = events_table(events)
    hours = sorted(set(table["landing_hour"].to_pylist()))
    for hour in hours:
        part = table.filter(pc.equal(table["landing_hour"], pa.scalar(hour, type=table.schema.field("landing_hour").type)))
        lake.write_table("consented", "events", part, partition={"date": hour.strftime("%Y-%m-%d"), "hour": hour.strftime("%H")})
    lake.write_table("privacy", "consent_state", consent_table(consent_rows))
