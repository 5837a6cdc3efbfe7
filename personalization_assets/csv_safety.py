"""Spreadsheet formula ("CSV injection") neutralisation, in one place.

A text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return is evaluated as a formula
by spreadsheet programs (``=HYPERLINK(...)``, ``+cmd|...``). Following OWASP, such a cell is made inert by
prefixing a single quote. Plain signed numbers (``-12``, ``+3.5``) are not formulas and are left alone.

Used by every CSV the platform writes (`write_csv`) and, as SQL, on the free text of the CRM and catalog
when it reaches the consented tier (`neutralize_columns`), so formula cells from those sources are never
carried along unmarked.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable

_TRIGGER = re.compile(r"^[=+\-@\t\r]")
_PLAIN_NUMBER = re.compile(r"^[+\-]?[0-9]+(\.[0-9]+)?$")

FORMULA_TRIGGER_SQL = r"'^[=+\-@\t\r]'"
PLAIN_NUMBER_SQL = r"'^[+\-]?[0-9]+(\.[0-9]+)?$'"


def is_formula(value: object) -> bool:
    return isinstance(value, str) and bool(_TRIGGER.match(value)) and not _PLAIN_NUMBER.match(value)


def neutralize_cell(value: object) -> object:
    """The value, made inert if a spreadsheet would evaluate it; non-strings unchanged."""
    return "'" + value if is_formula(value) else value


def write_csv(rows: Iterable[Iterable[object]], header: Iterable[str] | None = None, lineterminator: str = "\n") -> bytes:
    """CSV bytes (UTF-8) with every cell neutralised: the one CSV writer of the platform."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=lineterminator)
    if header is not None:
        w.writerow([neutralize_cell(h) for h in header])
    for row in rows:
        w.writerow([neutralize_cell(v) for v in row])
    return buf.getvalue().encode("utf-8")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def neutralize_formula_sql(expr: str) -> str:
    """SQL form of `neutralize_cell` for a text expression."""
    return (
        f"case when regexp_matches({expr}, {FORMULA_TRIGGER_SQL}) and not regexp_matches({expr}, {PLAIN_NUMBER_SQL}) "
        f"then '''' || {expr} else {expr} end"
    )


def neutralize_columns(con, table: str, columns: list[str]) -> dict[str, int]:
    """Neutralise formula cells in place in the text `columns` of DuckDB table `table`; count per column."""
    return neutralize_columns_by(con, table, columns, None)[0]


def neutralize_columns_by(con, table: str, columns: list[str], group_by: str | None) -> tuple[dict[str, int], dict[object, dict[str, int]]]:
    """`neutralize_columns`, plus the counts per value of column `group_by`: {group: {column: n}}."""
    report: dict[str, int] = {}
    groups: dict[object, dict[str, int]] = {}
    for col in columns:
        q = _quote(col)
        cond = f"{q} is not null and regexp_matches({q}, {FORMULA_TRIGGER_SQL}) and not regexp_matches({q}, {PLAIN_NUMBER_SQL})"
        g = _quote(group_by) if group_by else "null"
        per = con.execute(f"select {g}, count(*) from {_quote(table)} where {cond} group by 1").fetchall()
        n = sum(int(c) for _, c in per)
        if group_by:
            for key, c in per:
                groups.setdefault(key, dict.fromkeys(columns, 0))[col] = int(c)
        if n:
            con.execute(f"update {_quote(table)} set {q} = '''' || {q} where {cond}")
        report[col] = int(n)
    return report, groups
