"""raw -> consented: pseudonymize by policy, resolve the consent subject, keep what consent allows.

Pure functions over a DuckDB connection. Expected views: `identity` (privacy/identity_links),
`consent_state` (privacy/consent_state), `suppression` (privacy/suppression_list, column `identifier`), and
the per-subject lookups `prepare_lookups` derives from them once per run (every batch joins those instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.core.policies import UNKNOWN_JURISDICTION, PrivacyPolicy
from personalization_assets.core.pseudonymize import Pseudonymizer
from personalization_assets.core.schemas import arrow_schema
from personalization_assets.privacy.consent import (
    ASOF_PURPOSES_LOOKUP_SQL,
    SUBJECT_GRANTED_SQL,
)
from personalization_assets.privacy.models import ConsentedEvent
from personalization_assets.privacy.transforms import (
    apply_column_policies,
    empty_text_stats,
    output_column,
    protect_text_columns,
)

CONSENTED_EVENT_SCHEMA = arrow_schema(ConsentedEvent)


class PolicyContractError(ValueError):
    pass


def _required_output(policy: PrivacyPolicy, source: str, column: str) -> str:
    out = output_column(policy.columns[source], column)
    if out is None or policy.columns[source][column].action != "pseudonymize":
        raise PolicyContractError(
            f"privacy_policies/classification.yaml: sources.{source}.{column} must be pseudonymized: "
            "consent resolution and erasure need it."
        )
    return out


LOOKUPS = ("__subject_granted", "__subject_jurisdiction", "__anon_subject")


def prepare_lookups(con: duckdb.DuckDBPyConnection) -> None:
    """From the views `identity` and `consent_state`, the compact tables `consent_events` joins, built once per run:
    per subject its granted intervals (SUBJECT_GRANTED_SQL) and its jurisdiction; per anonymous identifier linked to
    a user its consent subject (an unlinked one is its own subject, which is the fallback anyway). At 100M events
    joining the full tables in every batch (millions of interval and identity rows, aggregated again each time) was
    most of the consented step."""
    con.execute(f"create or replace temp table __subject_granted as {SUBJECT_GRANTED_SQL}")
    con.execute("create or replace temp table __subject_jurisdiction as "
                "select consent_subject, any_value(jurisdiction) as jurisdiction from identity group by 1")
    con.execute("create or replace temp table __anon_subject as select identifier, consent_subject from identity "
                "where identifier_kind = 'anonymous' and consent_subject <> identifier")


def consent_time_sql(alias: str, cols) -> str:
    """The instant consent is looked up at for an event: its `timestamp`, but never later than its `receivedAt`, as the
    consent ledger decides a consent event's effective time (privacy/assets.py consent_inputs). A client clock running
    ahead (the collector accepts +24 h) otherwise looked events up hours after the decisions made around them."""
    received = output_column(cols, "received_at")
    prefix = f"{alias}." if alias else ""
    return f'least({prefix}"timestamp", {prefix}"{received}")' if received else f'{prefix}"timestamp"'


def consent_events(con: duckdb.DuckDBPyConnection, raw: pa.Table, policy: PrivacyPolicy, pz: Pseudonymizer,
                   keep_in: str | None = None) -> tuple[pa.Table | None, dict]:
    """One raw partition (or several hours) -> consented rows (ConsentedEvent) and counts for metadata.

    `keep_in`: leave the kept rows in DuckDB, as temp view `keep_in` (with `__row`, the raw row's index), instead of
    returning them (None is returned): `kept_rows_by_hour` then hands them out one hour at a time, so a batch of hours never
    sits in Arrow whole next to its per-hour copies (at 100M events, 400k rows were about 1 GB). A view over this call's
    temp tables, not a copy of the kept rows (a second wide materialization of the batch): it is read before the next
    call replaces them, and dropped with `drop view`.

    `pii_redacted` / `formulas_neutralized` count over every row of the partition that went through the
    policy (before the consent filter): what would have leaked, per column and kind."""
    stats = {"raw_rows": raw.num_rows}
    present = {r[0] for r in con.execute("select table_name from duckdb_tables() where temporary").fetchall()}
    if not set(LOOKUPS) <= present:
        raise RuntimeError("consent_events: call prepare_lookups(con) once the identity, consent_state and suppression views are registered")
    if raw.num_rows == 0:
        nothing = {**stats, "kept": 0, "no_consent": 0, "suppressed": 0, "pii_redacted": {}, "formulas_neutralized": {}}
        if not keep_in:
            return CONSENTED_EVENT_SCHEMA.empty_table(), nothing
        con.register("__empty_consented", CONSENTED_EVENT_SCHEMA.empty_table())
        con.execute("create or replace temp table __kept_none as select *, 0::bigint as __row from __empty_consented")
        con.unregister("__empty_consented")
        con.execute(f"create or replace temp view {keep_in} as select * from __kept_none")
        return None, nothing
    raw = raw.append_column("__row", pa.array(np.arange(raw.num_rows, dtype=np.int64)))
    con.register("raw_part", raw)
    try:
        cols = policy.columns["events"]
        selects, joins = apply_column_policies(con, "raw_part", cols, pz)
        user_out = _required_output(policy, "events", "user_id")
        anon_out = _required_output(policy, "events", "anonymous_id")
        con.execute(f"create or replace temp table __cev as select r.__row, {', '.join(selects)} from raw_part r {' '.join(joins)}")
        # free text the policy keeps (URLs, event names, content ids): PII redacted, formulas neutralised
        # counted per landing hour too: each hour's materialization records its own counts
        text_stats = protect_text_columns(con, "__cev", cols, group_by="landing_hour")
        con.execute(
            f"""
            create or replace temp table __cev_subject as
            select c.__row, {consent_time_sql("c", cols)} as timestamp,
                   coalesce(c."{user_out}", i.consent_subject, c."{anon_out}") as consent_subject
            from __cev c
            left join __anon_subject i on i.identifier = c."{anon_out}"
            """
        )
        con.execute(f"create or replace temp table __purposes as {ASOF_PURPOSES_LOOKUP_SQL.format(events='__cev_subject', lookup='__subject_granted')}")
        email_out = output_column(cols, "trait_email")
        # every identifier column the erasure looks at (consented/assets.py EVENTS_ERASURE), the previous id of an alias
        # included: a row the erasure would remove is never written
        suppress_cols = [c for c in (user_out, anon_out, email_out, output_column(cols, "previous_id")) if c]
        # coalesce: `NULL in (...)` is NULL, and a NULL flag would silently drop the row from both branches
        suppressed_expr = " or ".join(f'coalesce(c."{c}" in (select identifier from suppression), false)' for c in suppress_cols)
        produced = [c for c in con.sql("select * from __cev limit 0").columns if c != "__row"]
        expected = set(CONSENTED_EVENT_SCHEMA.names) - {"consent_subject", "jurisdiction", "purposes"}
        extra = sorted(set(produced) - expected)
        missing = sorted(expected - set(produced))
        if extra or missing:
            raise PolicyContractError(
                "classification.yaml (events) and the consented/events contract (privacy/models.py ConsentedEvent) disagree: "
                + (f"policy keeps {extra} which the contract lacks; " if extra else "")
                + (f"contract needs {missing} which the policy drops" if missing else "")
            )
        # the decision per row, narrow (the wide policy columns stay in __cev and are read once, for the kept rows)
        con.execute(
            f"""
            create or replace temp table __decision as
            select c.__row, c.landing_hour, s.consent_subject,
                   coalesce(j.jurisdiction, '{UNKNOWN_JURISDICTION}') as jurisdiction, coalesce(p.purposes, []) as purposes,
                   ({suppressed_expr} or coalesce(s.consent_subject in (select identifier from suppression), false)) as __suppressed
            from __cev c
            join __cev_subject s using (__row)
            left join __purposes p using (__row)
            left join __subject_jurisdiction j on j.consent_subject = s.consent_subject
            """
        )
        # the same split overall and per landing hour (a batch may hold several hourly partitions)
        by_hour = con.execute(
            "select landing_hour, count(*) filter (where __suppressed), count(*) filter (where not __suppressed and len(purposes) = 0), "
            "count(*) filter (where not __suppressed and len(purposes) > 0) from __decision group by 1"
        ).fetchall()
        counts = [sum(row[i] for row in by_hour) for i in (1, 2, 3)]
        decided = ("consent_subject", "jurisdiction", "purposes")
        select_final = ", ".join(f'd."{n}"' if n in decided else f'c."{n}"' for n in CONSENTED_EVENT_SCHEMA.names)
        kept = "from __cev c join __decision d using (__row) where not d.__suppressed and len(d.purposes) > 0"
        if keep_in:
            con.execute(f"create or replace temp view {keep_in} as select {select_final}, c.__row {kept}")
            out = None
        else:
            out = con.sql(f"select {select_final} {kept}").arrow().read_all()
    finally:
        con.unregister("raw_part")
    text_by_hour = text_stats.pop("by_group", {})
    stats.update({"suppressed": int(counts[0]), "no_consent": int(counts[1]), "kept": int(counts[2]), **text_stats})
    empty = empty_text_stats(policy.columns["events"])
    stats["by_hour"] = {h: {"suppressed": int(a), "no_consent": int(b), "kept": int(c), **text_by_hour.get(h, empty)} for h, a, b, c in by_hour}
    if stats["suppressed"] + stats["no_consent"] + stats["kept"] != raw.num_rows:
        raise AssertionError(f"consented/events lost rows: {stats} (every raw row must be kept, excluded for consent, or suppressed)")
    return (out.cast(CONSENTED_EVENT_SCHEMA) if out is not None else None), stats


ID_COLUMNS = ("user_id", "anonymous_id", "trait_email")  # what consent resolution and suppression read of a raw row


def _id_policies(policy: PrivacyPolicy) -> dict:
    """The column policies of the pseudonymized identifier columns (raw column -> policy; output: `.output`)."""
    cols = policy.columns["events"]
    return {c: cols[c] for c in ID_COLUMNS if c in cols and cols[c].action == "pseudonymize"}


def rows_carrying(con: duckdb.DuckDBPyConnection, raw: pa.Table, policy: PrivacyPolicy, pz: Pseudonymizer, keys: str) -> pa.Array:
    """Indices (ascending) of the rows of `raw` that carry one of the keys of DuckDB table `keys` (column `key`): as
    their user, anonymous or email pseudonym, or as the consent subject the lookups resolve them to now — every row
    whose decision may depend on one of those keys' signatures (`consent_events` reads nothing else of a row's
    identity). Pseudonymizes the identifier columns only. Needs `prepare_lookups`."""
    ids = {c: cp for c, cp in _id_policies(policy).items() if c in raw.column_names}
    user_out, anon_out = _required_output(policy, "events", "user_id"), _required_output(policy, "events", "anonymous_id")
    narrow = raw.select(list(ids)).append_column("__row", pa.array(np.arange(raw.num_rows, dtype=np.int64)))
    con.register("__raw_ids", narrow)
    try:
        selects, joins = apply_column_policies(con, "__raw_ids", ids, pz)
        carried = " or ".join(f'p."{ids[c].output}" in (select key from {keys})' for c in ids)
        rows = con.sql(
            f"""with p as (select r.__row, {', '.join(selects)} from __raw_ids r {' '.join(joins)})
                select p.__row from p left join __anon_subject i on i.identifier = p."{anon_out}"
                where {carried}
                   or coalesce(p."{user_out}", i.consent_subject, p."{anon_out}") in (select key from {keys})
                order by p.__row""").arrow().read_all()
    finally:
        con.unregister("__raw_ids")
    return rows.column(0).combine_chunks() if rows.num_rows else pa.array([], pa.int64())


def rows_not_carrying(table: pa.Table, policy: PrivacyPolicy, keys: pa.Array) -> pa.Table:
    """The rows of a stored consented hour that carry none of `keys` (user, anonymous or email pseudonym, consent
    subject): the rows `rows_carrying` does not select in its raw hour, kept as they are."""
    names = [cp.output for cp in _id_policies(policy).values()] + ["consent_subject"]
    hit = None
    for name in dict.fromkeys(names):
        if name in table.column_names:
            m = pc.fill_null(pc.is_in(table.column(name), value_set=keys), False)
            hit = m if hit is None else pc.or_(hit, m)
    return table if hit is None else table.filter(pc.invert(hit))


def kept_rows_by_hour(con: duckdb.DuckDBPyConnection, name: str, hours: list[datetime], batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """For each of `hours` (ascending), the rows `consent_events(..., keep_in=name)` kept in that landing hour, in raw
    order (an hour without kept rows: an empty table). One ordered query over the batch, streamed and cut where the
    hour changes (a query per hour scanned the whole batch once per hour); one hour is held at a time. Rows of an hour
    not in `hours` are skipped (the consented step refuses them through its index of keys). The connection must not
    run anything else until the iterator is exhausted."""
    if any(a >= b for a, b in zip(hours, hours[1:])):
        raise ValueError("kept_rows_by_hour: the hours must be given in ascending order, each once")
    cols = ", ".join(f'"{n}"' for n in CONSENTED_EVENT_SCHEMA.names)
    reader = con.sql(f"select {cols} from {name} order by landing_hour, __row").to_arrow_reader(batch_rows)

    def runs() -> Iterator[tuple[int | None, pa.RecordBatch]]:
        for batch in reader:
            if not batch.num_rows:
                continue
            ends = pc.run_end_encode(pc.cast(batch.column("landing_hour"), pa.int64()))
            start = 0
            for hour_us, end in zip(ends.values.to_pylist(), ends.run_ends.to_pylist()):
                yield hour_us, batch.slice(start, end - start)
                start = end

    stream = runs()
    current = next(stream, None)
    for hour in hours:
        target = int(hour.timestamp()) * 1_000_000
        while current is not None and current[0] is not None and current[0] < target:
            current = next(stream, None)
        parts = []
        while current is not None and current[0] == target:
            parts.append(current[1])
            current = next(stream, None)
        yield pa.Table.from_batches(parts, schema=reader.schema).cast(CONSENTED_EVENT_SCHEMA)
    for _ in stream:  # drain: the connection is free again when the last hour was handed out
        pass
