"""Checks of the written feature tables: sampled read-back, session coverage, direct identifiers.

Pure functions over a LakeStorage and a DuckDB connection; features/assets.py turns their results into
AssetCheckResults. Every check reads what was written to the lake, not the in-memory intermediates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from personalization_assets.core.policies import PrivacyPolicy, get_policy
from personalization_assets.core.storage import LakeStorage
from personalization_assets.privacy.models import PSEUDONYM

SAMPLE_ROWS = 200_000
SAMPLE_ROW_GROUPS = 4
# columns of the feature layer that hold pseudonyms (besides the classification's pseudonymized outputs)
FEATURE_PSEUDONYM_COLUMNS = frozenset({"person_id", "consent_subject", "identifier"})


def read_sample(lake: LakeStorage, layer: str, table: str, max_rows: int = SAMPLE_ROWS,
                row_groups: int = SAMPLE_ROW_GROUPS) -> pa.Table:
    """Up to max_rows rows of a written table without reading all of it (row groups spread over the file)."""
    return lake.read_sample(layer, table, max_rows, row_groups)


# --- sessions cover every event exactly once --------------------------------------------------------


def session_coverage(con, events_view: str, sessions_view: str, ranges: list[str] | None = None) -> dict[str, int]:
    """Counts proving each event lies in exactly one session of its person.

    An ASOF join finds, per event, the person's last session starting at or before it; the event is
    covered when it is not after that session's end. With no two sessions of a person overlapping, a
    covered event is in exactly one session. Also compares the sessions' event counts with the events.
    `ranges`: person_id predicates that together take every row once (features/person_ranges.py
    range_predicates); the counts are summed over them, so each join holds one range of persons.
    """
    totals = [0, 0, 0, 0]
    for where in ranges or ["true"]:
        row = con.sql(
            f"""
            with ev as (select person_id, timestamp from "{events_view}" where {where}),
            se as (select person_id, session_start, session_end, events from "{sessions_view}" where {where}),
            matched as (
                select e.timestamp, s.session_start, s.session_end
                from ev as e
                asof left join se as s
                  on e.person_id = s.person_id and e.timestamp >= s.session_start
            ),
            ordered as (
                select session_start, lag(session_end) over (partition by person_id order by session_start) as previous_end
                from se
            )
            select
                m.events, m.events_outside_sessions,
                (select count(*) from ordered where previous_end >= session_start) as overlapping_sessions,
                (select coalesce(sum(events), 0) from se) as events_counted_in_sessions
            from (  -- `matched` read once: a common table expression read twice is materialized (the whole history)
                select count(*) as events,
                       count(*) filter (where session_start is null or timestamp > session_end) as events_outside_sessions
                from matched
            ) as m
            """
        ).fetchall()[0]
        totals = [t + int(v) for t, v in zip(totals, row, strict=True)]
    events, outside, overlapping, counted = totals
    return {
        "events": events,
        "events_outside_sessions": outside,
        "overlapping_sessions": overlapping,
        "events_counted_in_sessions": counted,
        "violations": outside + overlapping + abs(events - counted),
    }


# --- no direct identifiers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentifierPolicy:
    forbidden: frozenset[str]  # column names that would hold a direct identifier in clear
    pseudonym_columns: frozenset[str]  # column names that must hold pseudonyms only
    pattern: str = PSEUDONYM


def load_identifier_policy(policy: PrivacyPolicy | None = None) -> IdentifierPolicy:
    """From the classification of the validated privacy policy (`get_policy()`: classification.yaml of
    PERSONALIZATION_POLICY_DIR, default privacy_policies/).

    Forbidden in the features layer: every raw column classified `direct_identifier` whose action is not
    `pseudonymize` (dropped identifiers such as names), and the raw name of every pseudonymized
    identifier whose pseudonym goes by another name (`user_id` -> `user_pseudonym`): under its raw
    name the column could only be the clear value. The pseudonymized outputs (and person_id,
    consent_subject, identifier) must match the pseudonym pattern.
    """
    policy = policy or get_policy()
    forbidden: set[str] = set()
    pseudonyms: set[str] = set(FEATURE_PSEUDONYM_COLUMNS)
    for columns in policy.columns.values():
        for column, spec in columns.items():
            if spec.classification != "direct_identifier":
                continue
            if spec.action == "pseudonymize":
                pseudonyms.add(spec.output)
                if spec.output != column:
                    forbidden.add(column)
            else:
                forbidden.add(column)
    return IdentifierPolicy(frozenset(forbidden), frozenset(pseudonyms - forbidden))


def direct_identifier_findings(con, view: str, columns: list[str], policy: IdentifierPolicy) -> dict:
    """Forbidden columns present, and values of pseudonym columns that are null or not pseudonyms."""
    forbidden = sorted(set(columns) & policy.forbidden)
    checked = sorted(set(columns) & policy.pseudonym_columns)
    bad_values: dict[str, int] = {}
    pattern = policy.pattern.replace("'", "''")
    for c in checked:
        # distinct values first: a pseudonym repeats on many rows, the regex then runs once per value
        bad_values[c] = int(con.sql(
            f"""
            with v as (select "{c}" as value, count(*) as n from "{view}" group by "{c}")
            select coalesce(sum(n) filter (where value is null or not regexp_full_match(value, '{pattern}')), 0) from v
            """
        ).fetchall()[0][0])
    return {
        "forbidden_columns": forbidden,
        "pseudonym_columns_checked": checked,
        "non_pseudonym_values": bad_values,
        "violations": len(forbidden) + sum(bad_values.values()),
    }


def is_pseudonym(value: str | None) -> bool:
    return value is not None and re.fullmatch(PSEUDONYM, value) is not None
