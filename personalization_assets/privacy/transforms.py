"""Apply the column policies of classification.yaml when data leaves the raw tier.

The list of columns, their fate and their output names come from the policy; this module only knows
how to perform each action. Pseudonymization and IP truncation work on DISTINCT values (computed in
Python, joined back in DuckDB); everything else is a SQL expression.
"""

from __future__ import annotations

import ipaddress

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.csv_safety import neutralize_columns_by
from personalization_assets.privacy.identity import map_distinct, pseudonymize_column
from personalization_assets.privacy.pii import KINDS as PII_KINDS
from personalization_assets.privacy.pii import redact_columns_by
from personalization_assets.core.policies import ColumnPolicy
from personalization_assets.core.pseudonymize import Pseudonymizer

AGE_BANDS = ((0, 17, "<18"), (18, 24, "18-24"), (25, 34, "25-34"), (35, 44, "35-44"), (45, 54, "45-54"), (55, 64, "55-64"), (65, 200, "65+"))


def truncate_ip(value: str | None) -> str | None:
    """IPv4 -> /24 network, IPv6 -> /48 network; unparseable -> None (never the raw value)."""
    if not value:
        return None
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
CANONICAL_IPV4 = rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}$"


def truncate_ips(values: list[str | None]) -> list[str | None]:
    """`truncate_ip` over many values: canonical dotted-quad IPv4 (nearly all traffic) is truncated by a
    vectorized regex; anything else (IPv6, mapped, padded, garbage) goes through `truncate_ip`."""
    arr = pa.array(values, pa.string())
    fast = pc.fill_null(pc.match_substring_regex(arr, CANONICAL_IPV4), False)
    out = pc.if_else(fast, pc.replace_substring_regex(arr, r"\.[0-9]+$", ".0/24"), pa.scalar(None, pa.string())).to_pylist()
    for i in pc.indices_nonzero(pc.invert(fast)).to_pylist():
        out[i] = truncate_ip(values[i])
    return out


# userinfo: between "scheme://" (or "//") and the last "@" before the path — user:pass@host
_URL_USERINFO = r"^((?:[A-Za-z][A-Za-z0-9+.\-]*:)?//)[^/?#]*@"


def strip_url_sql(column: str) -> str:
    """SQL: the URL without query string, fragment, matrix parameters (`;jsessionid=...` in any path segment)
    and user info (`user:pass@`); empty -> NULL. Runs per row, so each step is one RE2 pass."""
    no_query = f"regexp_replace({column}, '[?#].*$', '')"
    # user info first: a password may hold ';' and must not be mistaken for a matrix parameter
    no_userinfo = f"regexp_replace({no_query}, '{_URL_USERINFO}', '\\1')"
    no_matrix = f"regexp_replace({no_userinfo}, ';[^/]*', '', 'g')"
    # most URLs have neither ';' nor '@': they pay the query strip only
    return f"nullif(case when contains({column}, ';') or contains({column}, '@') then {no_matrix} else {no_query} end, '')"


def protect_text_columns(con: duckdb.DuckDBPyConnection, table: str, policies: dict[str, ColumnPolicy], group_by: str | None = None) -> dict:
    """Post-pass over DuckDB table `table` holding the policy OUTPUT columns: redact PII in the columns the
    policy scans (`detect_pii`, and every URL) and neutralise spreadsheet formulas where it says so.
    Returns metadata: per column, counts of redactions by kind and of neutralised formula cells. With
    `group_by` (a column of `table`, e.g. landing_hour) also `by_group`: the same counts per value, which add
    up to the totals (groups with nothing redacted or neutralised are absent)."""
    pii_cols = [cp.output for cp in policies.values() if cp.action != "drop" and cp.scans_pii]
    formula_cols = [cp.output for cp in policies.values() if cp.action != "drop" and cp.neutralize_formulas]
    pii_counts, pii_groups = redact_columns_by(con, table, pii_cols, group_by)
    formula_counts, formula_groups = neutralize_columns_by(con, table, formula_cols, group_by)
    out = {"pii_redacted": pii_counts, "formulas_neutralized": formula_counts}
    if group_by:
        out["by_group"] = {g: {"pii_redacted": pii_groups.get(g, _empty_pii(pii_cols)),
                               "formulas_neutralized": formula_groups.get(g, dict.fromkeys(formula_cols, 0))}
                           for g in set(pii_groups) | set(formula_groups)}
    return out


def _empty_pii(columns) -> dict:
    return {c: dict.fromkeys(PII_KINDS, 0) for c in columns}


def empty_text_stats(policies: dict[str, ColumnPolicy]) -> dict:
    """The counts of a part with nothing redacted or neutralised (same shape as `protect_text_columns`)."""
    return {"pii_redacted": _empty_pii([cp.output for cp in policies.values() if cp.action != "drop" and cp.scans_pii]),
            "formulas_neutralized": {cp.output: 0 for cp in policies.values() if cp.action != "drop" and cp.neutralize_formulas}}


def add_text_stats(total: dict, stats: dict) -> None:
    """Accumulate `protect_text_columns` counts of one batch into `total` (same shape)."""
    for col, kinds in stats.get("pii_redacted", {}).items():
        acc = total["pii_redacted"].setdefault(col, {})
        for kind, n in kinds.items():
            acc[kind] = acc.get(kind, 0) + n
    for col, n in stats.get("formulas_neutralized", {}).items():
        total["formulas_neutralized"][col] = total["formulas_neutralized"].get(col, 0) + n


def text_metadata(stats: dict) -> dict:
    """Dagster metadata for the counts (counts only, never values)."""
    import dagster as dg

    pii = stats.get("pii_redacted", {})
    return {
        "pii_redacted": dg.MetadataValue.json(pii),
        "pii_redacted_total": int(sum(n for kinds in pii.values() for n in kinds.values())),
        "formulas_neutralized": dg.MetadataValue.json(stats.get("formulas_neutralized", {})),
    }


def age_band_sql(column: str, as_of_sql: str) -> str:
    age = f"date_diff('year', {column}, cast({as_of_sql} as date)) - case when strftime(cast({as_of_sql} as date), '%m-%d') < strftime({column}, '%m-%d') then 1 else 0 end"
    whens = " ".join(f"when ({age}) between {lo} and {hi} then '{label}'" for lo, hi, label in AGE_BANDS)
    return f"case when {column} is null then null {whens} end"


def apply_column_policies(
    con: duckdb.DuckDBPyConnection,
    view: str,
    policies: dict[str, ColumnPolicy],
    pz: Pseudonymizer,
    as_of_sql: str = "now()",
) -> tuple[list[str], list[str]]:
    """Prepare lookups and return (select expressions, join clauses) turning raw `view` (alias r) into
    policy-compliant columns. Columns with action `drop` are omitted."""
    selects, joins = [], []
    for i, (col, cp) in enumerate(policies.items()):
        q = f'r."{col}"'
        out = f'"{cp.output}"'
        if cp.action == "drop":
            continue
        if cp.action == "keep":
            selects.append(f"{q} as {out}")
        elif cp.action == "pseudonymize":
            m = f"__pz_{view}_{i}"
            pseudonymize_column(con, pz, view, col, cp.normalize, m)
            joins.append(f'left join "{m}" on "{m}".value = {q}')
            selects.append(f'"{m}".pseudonym as {out}')
        elif cp.action == "truncate_ip":
            m = f"__ip_{view}_{i}"
            map_distinct(con, view, col, m, truncate_ips, "out")
            joins.append(f'left join "{m}" on "{m}".value = {q}')
            selects.append(f'"{m}".out as {out}')
        elif cp.action == "strip_url_query":
            selects.append(f"{strip_url_sql(q)} as {out}")
        elif cp.action == "generalize_birth_date":
            selects.append(f"{age_band_sql(q, as_of_sql)} as {out}")
        else:  # pragma: no cover - the policy loader rejects unknown actions
            raise ValueError(f"unknown action {cp.action}")
    return selects, joins


def output_column(policies: dict[str, ColumnPolicy], raw_column: str) -> str | None:
    cp = policies.get(raw_column)
    if cp is None or cp.action == "drop":
        return None
    return cp.output
