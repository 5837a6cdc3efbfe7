"""Exact identifier matching in quarantined records (erasure and ingestion suppression).

A quarantined record is text that failed the tracking plan: valid JSON with a bad field, broken JSON, a
CSV row with the wrong column count, a whole unreadable file. Whatever it still holds, erasure must find
the subject in it by the SAME rule as everywhere else: an exact, normalized identifier whose pseudonym is
on the suppression list. Never a substring: `"a"` must not match every line containing the letter a.

How (vectorized in DuckDB, Python only over DISTINCT candidate tokens):

1. Every record is cut into candidate tokens, best effort:
   * the string or integer value of every identifier key (``userId``, ``anonymousId``, ``previousId``,
     ``user_id``, ``email``, ``phone``... at any depth, so ``traits.email`` and ``context.traits.email``
     alike), in valid and broken JSON (a value cut off by truncation included); JSON escapes decoded;
   * text that is not JSON (CSV rows, stray files): its comma/semicolon/tab-separated fields;
   * any record: every email-shaped token, wherever it appears.
   Tokens are trimmed of blanks and quotes; tokens longer than MAX_TOKEN_CHARS are not identifiers.
   Values of other keys and words of free text are NOT tokens: a category or a note that happens to
   equal a short id must not make a bystander's record match.
2. Each distinct token is normalized as each identifier kind it can be — an id as given, an email
   (contains ``@``) trimmed and case-folded, a phone (digits, ``+``, separators) to its E.164-style
   form — and pseudonymized with the active key, exactly like the raw columns are.
3. A record matches when one of its tokens' pseudonyms is in the target set.

The raw values of the erased subjects are therefore never needed (the suppression list holds only
pseudonyms), so a quarantined line holding only an erased subject's anonymousId is found even after the
raw rows that revealed that id are gone.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_TOKEN_CHARS = 320  # emails are at most 254 characters, ids 256 (tracking plan); longer tokens are payload
_PHONE_SHAPE = re.compile(r"^\+?[0-9][0-9 ()./-]{5,}$")

# JSON keys that hold a subject identifier, at any depth (matched case-insensitively)
IDENTIFIER_KEYS = ("userId", "anonymousId", "previousId", "user_id", "anonymous_id", "previous_id", "email", "email_address",
                   "emailAddress", "phone", "phone_number", "phoneNumber", "mobile")

# {view}, {keys} and {max_chars} are filled in by _tokens_sql; doubled braces are literal braces.
# Patterns rather than a JSON parser: they read valid and broken JSON alike, at any depth, and are several
# times faster than DuckDB's json_tree or recursive JSONPath ($..key) on quarantine-sized tables.
_TOKENS_SQL = r"""
with q as (select pos, text from "{view}" where text is not null),
toks as (
    select pos, unnest(
        -- "key": "value" (also a value cut off at the end of a truncated line); escapes decoded below
        regexp_extract_all(text, '"(?i:{keys})"\s*:\s*"((?:[^"\\]|\\.)*)', 1)
        -- "key": 12345 (numeric ids are quarantined as wrong_type, and still identify their holder)
        || regexp_extract_all(text, '"(?i:{keys})"\s*:\s*(-?[0-9]+)', 1)
        -- email-shaped tokens anywhere (free text, CSV, values of other keys)
        || regexp_extract_all(text, '[^\s"''<>()\[\]{{}},;:\\]+@[^\s"''<>()\[\]{{}},;:\\]+')
        -- text that is not JSON (CSV rows, stray files): its fields
        || case when regexp_matches(text, '^\s*[\[{{]') then []::varchar[] else string_split_regex(text, '[,;\t\r\n]') end
    ) as tok
    from q
),
decoded as (  -- JSON string escapes (\u0040, \") decoded where the literal is valid JSON
    select pos, case when contains(tok, '\') and json_valid('"' || tok || '"') then json_extract_string('"' || tok || '"', '$')
                     else tok end as tok
    from toks
)
select distinct pos, trim(tok, ' "''') as tok from decoded
where length(trim(tok, ' "''')) between 1 and {max_chars}
"""


def _tokens_sql(view: str) -> str:
    return _TOKENS_SQL.format(view=view, keys="|".join(IDENTIFIER_KEYS), max_chars=MAX_TOKEN_CHARS)


def candidate_kinds(token: str) -> list[str]:
    """The identifier kinds a token can be read as (each is normalized and pseudonymized separately)."""
    kinds = ["id"]
    if "@" in token:
        kinds.append("email")
    if _PHONE_SHAPE.match(token) and sum(ch.isdigit() for ch in token) >= 6:
        kinds.append("phone")
    return kinds


def matching_tokens(tokens: list[str], targets: set[str], pseudonymize) -> set[str]:
    """Tokens whose normalized form, as any identifier kind, pseudonymizes into `targets`."""
    by_kind: dict[str, list[str]] = {"id": [], "email": [], "phone": []}
    for t in tokens:
        for k in candidate_kinds(t):
            by_kind[k].append(t)
    hits: set[str] = set()
    for kind, values in by_kind.items():
        if values:
            hits |= {v for v, p in zip(values, pseudonymize(values, kind)) if p is not None and p in targets}
    return hits


def quarantine_match_mask(con, table: pa.Table, targets: set[str], pseudonymize, column: str = "original_text") -> pa.Array:
    """Boolean mask of the quarantine rows holding an identifier whose pseudonym is in `targets`.

    `con` is a DuckDB connection, `pseudonymize(values, kind)` a Pseudonymizer's method."""
    n = table.num_rows
    if not targets or n == 0 or column not in table.column_names:
        return pa.array(np.zeros(n, dtype=bool))
    text = table[column]
    if not pa.types.is_string(text.type):
        text = pc.cast(text, pa.string())
    view = "__quarantine_text"
    con.register(view, pa.table({"pos": pa.array(np.arange(n, dtype=np.int64)), "text": text}))
    try:
        con.execute(f"create or replace temp table __quarantine_tokens as {_tokens_sql(view)}")
    finally:
        con.unregister(view)
    try:
        distinct = con.sql("select distinct tok from __quarantine_tokens").arrow().read_all()["tok"].to_pylist()
        hits = matching_tokens(distinct, targets, pseudonymize)
        if not hits:
            return pa.array(np.zeros(n, dtype=bool))
        con.register("__quarantine_hits", pa.table({"tok": pa.array(sorted(hits), pa.string())}))
        try:
            positions = con.sql(
                "select distinct pos from __quarantine_tokens where tok in (select tok from __quarantine_hits)"
            ).arrow().read_all()["pos"]
        finally:
            con.unregister("__quarantine_hits")
    finally:
        con.execute("drop table if exists __quarantine_tokens")
    return pc.is_in(pa.array(np.arange(n, dtype=np.int64)), value_set=positions)


def suppress_quarantine(con, quarantine: pa.Table, suppressed: set[str] | None, pseudonymizer) -> tuple[pa.Table, int]:
    """Drop the quarantine rows of erased subjects (exact identifiers the rejected record still holds, see
    above); they are counted as suppressed, so read = raw + quarantined + suppressed
    still holds. Without this an erased subject's rejected line would come back on every run."""
    if not suppressed or pseudonymizer is None or quarantine.num_rows == 0:
        return quarantine, 0
    mask = quarantine_match_mask(con, quarantine, suppressed, pseudonymizer.pseudonymize_values)
    n = pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
    return (quarantine.filter(pc.invert(mask)) if n else quarantine), n
