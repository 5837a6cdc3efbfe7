"""The cross-layer checks as functions: identifier policy, session coverage, sampled read-back."""

from functools import partial

import pyarrow as pa
import pytest

from personalization_assets.features.checks import (
    direct_identifier_findings,
    is_pseudonym,
    load_identifier_policy,
    read_sample,
    session_coverage as coverage,
)
from personalization_assets.features.person_ranges import range_predicates
from personalization_assets.core.storage import LakeStorage
from tests.features.feature_fixtures import build, connect, event, granted_all, pseudo


def test_identifier_policy_from_classification_yaml():
    policy = load_identifier_policy()
    # dropped direct identifiers and the raw names of pseudonymized ones are forbidden
    assert {"trait_name", "first_name", "last_name", "user_id", "anonymous_id", "email", "phone", "trait_email"} <= policy.forbidden
    assert {"user_pseudonym", "anonymous_pseudonym", "email_pseudonym", "person_id", "consent_subject", "identifier"} <= policy.pseudonym_columns
    assert not policy.forbidden & policy.pseudonym_columns


def test_direct_identifier_findings():
    policy = load_identifier_policy()
    con = connect()
    good = pa.table({"person_id": [pseudo("u1"), pseudo("u2")], "category": ["news", "tech"]})
    con.register("good", good)
    assert direct_identifier_findings(con, "good", good.column_names, policy)["violations"] == 0

    bad = pa.table({"person_id": [pseudo("u1"), "alice@example.com", None], "email": ["a@example.com", None, None]})
    con.register("bad", bad)
    findings = direct_identifier_findings(con, "bad", bad.column_names, policy)
    assert findings["forbidden_columns"] == ["email"]
    assert findings["non_pseudonym_values"] == {"person_id": 2}
    assert findings["violations"] == 3
    assert is_pseudonym(pseudo("x")) and not is_pseudonym("v1:abc") and not is_pseudonym(None)


@pytest.mark.parametrize("split", [False, True], ids=["one_range", "person_ranges"])
def test_session_coverage_detects_gaps_and_overlaps(split):
    ev = [event(at=f"2026-01-05 {h:02d}:00", user="u1") for h in (8, 9, 10)] + [event(at="2026-01-05 08:10", user="u2")]
    out = build(ev, granted_all("u1", "u2"))
    con = connect()
    # the two persons in two ranges (whichever sorts first): the counts are summed over the ranges
    ranges = range_predicates([max(pseudo("u1"), pseudo("u2"))]) if split else None
    session_coverage = partial(coverage, ranges=ranges)
    con.register("events", out["events_clean"])
    sessions = out["sessions"]
    con.register("sessions", sessions)
    ok = session_coverage(con, "events", "sessions")
    assert ok == {"events": 4, "events_outside_sessions": 0, "overlapping_sessions": 0, "events_counted_in_sessions": 4, "violations": 0}

    con.register("missing", sessions.slice(1))  # drop one session
    missing = session_coverage(con, "events", "missing")
    assert missing["events_outside_sessions"] == 1 and missing["violations"] == 2  # + the count mismatch

    rows = sessions.to_pylist()
    first, second = [i for i, r in enumerate(rows) if r["person_id"] == pseudo("u1")][:2]
    rows[first]["session_end"] = rows[second]["session_start"]  # u1's first session now reaches into its second
    con.register("overlap", pa.Table.from_pylist(rows, schema=sessions.schema))
    result = session_coverage(con, "events", "overlap")
    assert result["overlapping_sessions"] == 1 and result["violations"] >= 1


def test_read_sample_is_bounded(tmp_path):
    lake = LakeStorage(url=str(tmp_path))
    lake.write_table("features", "t", pa.table({"x": list(range(1000))}))
    assert read_sample(lake, "features", "t").num_rows == 1000
    assert read_sample(lake, "features", "t", max_rows=100).num_rows == 100
