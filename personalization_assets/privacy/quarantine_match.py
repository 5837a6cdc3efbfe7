"""Exact identifier matching in quarantined records (erasure and ingestion suppression).

A quarantined record is text that failed the tracking plan: valid JSON with a bad field, broken JSON, a
CSV row with the wrong column count, a whole unreadable file. Whatever it still holds, erasure must find
the subject in it by the SAME rule as everywhere else: an exact, normalized identifier whose pseudonym is
on the suppression list. Never a substring: `"a"` must not match every line containing the letter a.

How (vectorized in DuckDB, Python only over DISTINCT candidate tokens):

1. Every record is cut into candidate tokens, best effort:
   * valid JSON: every string or integer value, at any depth, whose key names an identifier
     (``userId``, ``anonymousId``, ``previousId``, ``user_id``, ``email``, ``phone``... — so
     ``traits.email`` and ``context.traits.email`` alike; ``json_tree``, escapes decoded);
   * broken JSON (truncated, invalid UTF-8...): the same keys' quoted values, found by a pattern (an
     unterminated last value included);
   * text that is not JSON at all (CSV rows, stray files): its comma/semicolon/tab-separated fields;
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

# JSON keys that hold a subject identifier, compared lower-cased without '_' and '-'
IDENTIFIER_KEYS = ("userid", "anonymousid", "previousid", "email", "emailaddress", "phone", "phonenumber", "mobile", "mobilephone")
_KEY_ALTERNATION = "userId|anonymousId|previousId|user_id|anonymous_id|previous_id|email|email_address|phone|phone_number|mobile"

# {view}, {keys}, {key_list} and {max_chars} are filled in by _tokens_sql; doubled braces are literal
_TOKENS_SQL = r"""
with q as (select pos, text, json_valid(text) as is_json from "{view}" where text is not null),
toks as (
    select pos, unnest(
        regexp_extract_all(text, '[^\s"''<>()\[\]{{}},;:\\]+@[^\s"''<>()\[\]{{}},;:\\]+')
        || case when is_json then []::varchar[]
                else regexp_extract_all(text, '"(?i:{keys})"\s*:\s*"((?:[^"\\]|\\.)*)', 1) end
        || case when is_json or regexp_matches(text, '^\s*[\[{{]') then []::varchar[]
                else string_split_regex(text, '[,;\t\r\n]') end
    ) as tok
    from q
    union all
    select v.pos, json_extract_string(j.value, '$')
    from (select pos, text from q where is_json) v, json_tree(v.text) j
    where j.type in ('VARCHAR', 'UBIGINT', 'BIGINT')
      and lower(replace(replace(j.key, '_', ''), '-', '')) in ({key_list})
)
select distinct pos, trim(tok, ' "''') as tok from toks
where length(trim(tok, ' "''')) between 1 and {max_chars}
"""


def _tokens_sql(view: str) -> str:
    return _TOKENS_SQL.format(view=view, keys=_KEY_ALTERNATION, key_list=", ".join(f"'{k}'" for k in IDENTIFIER_KEYS),
                              max_chars=MAX_TOKEN_CHARS)


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
