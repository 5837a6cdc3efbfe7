"""The ledger rows a consent-ledger run compares its candidate decisions with, without reading the whole ledger.

A run decides which candidate decisions are new (`consent.drop_recorded_gpc`, `consent.new_ledger_rows`). Both compare
a candidate only with stored rows that share its decision id or its identifier (the anti-join is by decision id; the
recorded-GPC rule and the `withdrawn` label look at rows of the same identifier and purpose), so the rows needed are
exactly: decision_id in the candidates' ids, or identifier (re-keyed to the active version) in the candidates'
identifiers. DuckDB scans the segment files with those filters pushed down and only the columns compared: the cost
is a scan of two columns, not a materialization and re-keying of the whole history.

Rows written before a key rotation hold pseudonyms of an older version: their distinct values (only those of another
version, none in the steady state) are re-keyed first, as `operations.rekey_table` would.
"""

from __future__ import annotations

import pyarrow as pa

from personalization_assets.core.hash_chain import HashChainedLog
from personalization_assets.core.pseudonymize import PSEUDONYM_RE
from personalization_assets.privacy.consent import LEDGER_SCHEMA

COLUMNS = ["decision_id", "identifier_pseudonym", "identifier_kind", "purpose", "decision", "effective_at", "source", "source_ref"]


def register_ledger(con, hlog: HashChainedLog, name: str = "__ledger_all") -> None:
    """View `name` over every segment of the log (DuckDB scans them natively locally: projection and filter pushdown)."""
    hlog.lake.register(con, name, hlog.layer, hlog.name, empty_schema=LEDGER_SCHEMA)


def rekey_map(con, chain, view: str, column: str = "identifier_pseudonym", into: str = "__ledger_rekey") -> int:
    """Temp table `into(old, new)`: the distinct pseudonyms of `view.column` of an older key version, re-keyed to the
    active one. Returns their number (0 in the steady state: the scan is one column)."""
    active = str(chain.active)
    olds = [v for (v,) in con.execute(
        f'select distinct "{column}" from "{view}" where "{column}" is not null and not starts_with("{column}", ?)',
        [f"v{active}:"]).fetchall()]
    mapping = {}
    for v in olds:
        m = PSEUDONYM_RE.match(v)
        if m and int(m.group(1)) < int(active):
            mapping[v] = chain.rekey(v, active)
    table = pa.table({"old": pa.array(list(mapping), pa.string()), "new": pa.array(list(mapping.values()), pa.string())})
    con.register(f"{into}_arrow", table)
    con.execute(f'create or replace temp table "{into}" as select * from "{into}_arrow"')
    con.unregister(f"{into}_arrow")
    return len(mapping)


def recorded_for_candidates(con, hlog: HashChainedLog, chain, candidates: str = "__candidates", into: str = "__recorded") -> str:
    """Temp table `into`: the stored ledger rows (COLUMNS, identifiers re-keyed to the active version) sharing a
    decision id or an identifier with the DuckDB table `candidates`: all that `drop_recorded_gpc` and
    `new_ledger_rows` compare. It stays in DuckDB (within its memory limit, spilling beyond): on a full refresh every
    stored row qualifies. Returns its name."""
    register_ledger(con, hlog)
    n = rekey_map(con, chain, "__ledger_all")
    ident = "coalesce(m.new, l.identifier_pseudonym)" if n else "l.identifier_pseudonym"
    join = 'left join "__ledger_rekey" m on m.old = l.identifier_pseudonym' if n else ""
    cols = ", ".join(f"{ident} as identifier_pseudonym" if c == "identifier_pseudonym" else f"l.{c}" for c in COLUMNS)
    con.execute(
        f"""create or replace temp table "{into}" as
            select {cols} from __ledger_all l {join}
            where l.decision_id in (select decision_id from "{candidates}")
               or {ident} in (select identifier_pseudonym from "{candidates}")"""
    )
    return into
