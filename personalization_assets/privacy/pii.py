"""PII detector for kept free-text columns (URL paths and referrers, event names, content ids, catalog text).

In the spirit of Segment's Privacy Portal matchers: emails, phone numbers, IP addresses (v4 and v6) and
payment card numbers (Luhn-verified) inside a value are replaced by ``[redacted:<kind>]``; the rest of the
value is kept (``/users/[redacted:email]/profile``). Names cannot be detected in general and are not tried.

Cost model (the detector runs on every event): one vectorized RE2 prefilter per column in DuckDB
(`PREFILTER`, a necessary condition for every matcher) selects the few DISTINCT values that could hold
PII; only those go through the exact Python matchers (Luhn, IPv6 validity, phone shapes), and the
changed values are written back with one join. Clean data pays one regex scan per column.

What is deliberately NOT redacted (tested): content ids such as ``article-12345``, dates and times
(``2026-11-28``, ``13:05:00``), epoch milliseconds, SKUs (``SKU-1234-5678``), prices, version strings
(``v1.2.3``), digit runs that fail Luhn or have no card-issuer prefix.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

import duckdb
import pyarrow as pa

from personalization_assets.privacy.identity import temp_table_from_arrow

KINDS = ("email", "card", "ip", "phone")


def token(kind: str) -> str:
    return f"[redacted:{kind}]"


# A necessary condition for any matcher below, as one RE2 pattern (DuckDB regexp_matches):
# '@' or '%40' (email), a dotted quad (IPv4), two colons within hex groups (IPv6), or 8+ digits with at
# most 3 separator characters between consecutive digits (phone, card).
PREFILTER = (
    r"@|%40"
    r"|[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"
    r"|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:"
    r"|[0-9](?:[ .\-()/]{0,3}[0-9]){7,}"
)

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+(?:@|%40)[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}", re.ASCII)
# 13-19 digits, optionally grouped by single spaces or dashes; verified by issuer prefix and Luhn.
_CARD = re.compile(r"(?<![0-9A-Za-z+])[0-9](?:[ \-]?[0-9]){12,18}(?![0-9])", re.ASCII)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![0-9.]){_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?![0-9]|\.[0-9])", re.ASCII)
_IPV6 = re.compile(r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Za-z:])", re.ASCII)
_SEP = r"[ .\-/]?"
_PHONE = re.compile(
    "|".join(
        [
            # international: +CC or 00CC, 8-15 digits in all, optional single separators / (0) / (area)
            rf"(?<![0-9A-Za-z+])(?:\+|00)[1-9](?:{_SEP}\(?[0-9]\)?){{7,14}}(?![0-9])",
            # North American with separators: (555) 123-4567, 555-123-4567, 555.123.4567
            r"(?<![0-9A-Za-z])\(?[2-9][0-9]{2}\)?[ .\-][0-9]{3}[ .\-][0-9]{4}(?![0-9])",
            # national with trunk prefix 0 and a separator after the area code: 030 12345678, 0171-1234567
            r"(?<![0-9A-Za-z])\(?0[1-9][0-9]{1,4}\)?[ \-/][0-9]{3,8}(?:[ \-][0-9]{2,5})?(?![0-9])",
        ]
    ),
    re.ASCII,
)


def luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


def _issuer_ok(d: str) -> bool:
    """Known card-issuer prefixes (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro)."""
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)
    two, four = int(d[:2]), int(d[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if d.startswith("6011") or two == 65 or 644 <= int(d[:3]) <= 649 or two == 62:
        return 16 <= n <= 19
    if two == 35:
        return 16 <= n <= 19
    if two in (36, 38) or 300 <= int(d[:3]) <= 305:
        return 14 <= n <= 19
    if two in (50, 56, 57, 58, 67):
        return 12 <= n <= 19
    return False


def _card(m: re.Match) -> str:
    d = re.sub(r"[ \-]", "", m.group(0))
    return token("card") if 13 <= len(d) <= 19 and _issuer_ok(d) and luhn_ok(d) else m.group(0)


def _ipv6(m: re.Match) -> str:
    s = m.group(0)
    if sum(1 for g in s.split(":") if g) < 3:
        return s
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return s
    return token("ip")


def _phone(m: re.Match) -> str:
    digits = sum(c.isdigit() for c in m.group(0))
    return token("phone") if 8 <= digits <= 15 else m.group(0)


_STEPS = (
    ("email", lambda s: _EMAIL.sub(token("email"), s)),
    ("card", lambda s: _CARD.sub(_card, s)),
    ("ip", lambda s: _IPV6.sub(_ipv6, _IPV4.sub(token("ip"), s))),
    ("phone", lambda s: _PHONE.sub(_phone, s)),
)


def redact(value: str | None) -> tuple[str | None, Counter]:
    """The value with every detected identifier replaced by its token, and how many of each kind."""
    counts: Counter = Counter()
    if value is None:
        return None, counts
    out = value
    for kind, step in _STEPS:
        before = out.count(token(kind))
        out = step(out)
        n = out.count(token(kind)) - before
        if n:
            counts[kind] += n
    return out, counts


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def redact_columns(con: duckdb.DuckDBPyConnection, table: str, columns: list[str]) -> dict[str, dict[str, int]]:
    """Redact PII in place in the string `columns` of DuckDB table `table`.

    Returns per column the number of identifiers redacted per kind, counted over the table's rows
    (a value seen on n rows counts n times). Counts only, never values.
    """
    return redact_columns_by(con, table, columns, None)[0]


def redact_columns_by(con: duckdb.DuckDBPyConnection, table: str, columns: list[str],
                      group_by: str | None) -> tuple[dict[str, dict[str, int]], dict[object, dict[str, dict[str, int]]]]:
    """`redact_columns`, plus the same counts per value of column `group_by` (e.g. each landing hour of a
    batch): {group: {column: {kind: n}}}, every column and kind present. The groups add up to the totals."""
    report: dict[str, dict[str, int]] = {}
    groups: dict[object, dict[str, Counter]] = {}
    prefilter = "'" + PREFILTER.replace("'", "''") + "'"
    g_sel = f", {_quote(group_by)} as g" if group_by else ", null as g"
    for i, col in enumerate(columns):
        q = _quote(col)
        cands = con.sql(
            f"select {q} as v{g_sel}, count(*) as n from {_quote(table)} where {q} is not null and regexp_matches({q}, {prefilter}) group by all"
        ).arrow().read_all()
        counts: Counter = Counter()
        values, outs = [], []
        redacted: dict[str, tuple] = {}  # one redaction per distinct value (a value may sit in several groups)
        for v, g, n in zip(cands["v"].to_pylist(), cands["g"].to_pylist(), cands["n"].to_pylist()):
            if v not in redacted:
                redacted[v] = redact(v)
                if redacted[v][0] != v:
                    values.append(v)
                    outs.append(redacted[v][0])
            out, c = redacted[v]
            if out != v:
                for kind, k in c.items():
                    counts[kind] += k * n
                    if group_by:
                        groups.setdefault(g, {}).setdefault(col, Counter())[kind] += k * n
        if values:
            m = f"__pii_map_{i}"
            temp_table_from_arrow(con, m, pa.table({"value": pa.array(values, pa.string()), "out": pa.array(outs, pa.string())}))
            con.execute(f"update {_quote(table)} set {q} = m.out from {m} m where {_quote(table)}.{q} = m.value")
            con.execute(f"drop table {m}")
        report[col] = {k: int(counts.get(k, 0)) for k in KINDS}
    by_group = {g: {col: {k: int(per.get(col, Counter()).get(k, 0)) for k in KINDS} for col in columns} for g, per in groups.items()}
    return report, by_group
