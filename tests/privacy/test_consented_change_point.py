"""The consented step's change point (`consented/state.py` CHANGED_HOURS_SQL) on hand-built states: which hours a
changed signature reaches. The pipeline-level scenarios are in test_consented_incremental.py."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from personalization_assets.consented.state import CHANGED_HOURS_SQL, STATE_SCHEMA

pytestmark = pytest.mark.unit

IV = STATE_SCHEMA.field("intervals").type


def iv(*triples):
    return [{"purpose": p, "valid_from": a, "valid_to": b} for p, a, b in triples]


SIG_SCHEMA = pa.schema([("key", pa.string()), ("resolved_subject", pa.string()), ("digest", pa.string()),
                        ("base_digest", pa.string()), ("intervals", IV)])


def reached(old_sig: dict, new_sig: dict, index: list[tuple[str, str, int | None]], digests: tuple[str, str] | None = None) -> list[str]:
    """old_sig / new_sig: key -> (resolved_subject, base_digest, intervals); index: (hour, key, max_ts). The digest
    (which covers everything) is the repr of the values, or `digests` (old, new) when given."""
    def sig_rows(sig, digest):
        return [{"key": k, "resolved_subject": v[0], "digest": digest or repr(v), "base_digest": v[1], "intervals": v[2]} for k, v in sig.items()]

    old_digest, new_digest = digests or (None, None)
    rows = [{"record": "sig", **r} for r in sig_rows(old_sig, old_digest)]
    rows += [{"record": "key", "hour": h, "key": k, "max_ts": m} for h, k, m in index]
    con = duckdb.connect()
    con.register("__state", pa.Table.from_pylist(rows, schema=STATE_SCHEMA))
    con.register("__sig_new", pa.Table.from_pylist(sig_rows(new_sig, new_digest), schema=SIG_SCHEMA))
    return sorted(h for (h,) in con.execute(CHANGED_HOURS_SQL).fetchall())


INDEX = [("h1", "s", 100), ("h2", "s", 499), ("h3", "s", 500), ("h4", "s", 900), ("h2", "other", 499)]


def test_an_open_grant_closed_at_500_reaches_rows_from_500_on():
    assert reached({"s": (None, "b", iv(("p", 0, None)))}, {"s": (None, "b", iv(("p", 0, 500)))}, INDEX) == ["h3", "h4"]


def test_a_new_purpose_reaches_rows_from_its_start():
    old = {"s": (None, "b", iv(("p", 0, None)))}
    assert reached(old, {"s": (None, "b", iv(("p", 0, None), ("q", 450, None)))}, INDEX) == ["h2", "h3", "h4"]


def test_a_grant_moved_earlier_reaches_rows_from_the_earlier_start():
    assert reached({"s": (None, "b", iv(("p", 600, None)))}, {"s": (None, "b", iv(("p", 200, None)))}, INDEX) == ["h2", "h3", "h4"]


def test_a_resolution_jurisdiction_or_suppression_change_reaches_every_hour():
    base = {"s": (None, "b", iv(("p", 0, None)))}
    assert reached(base, {"s": ("u", "b", iv(("p", 0, None)))}, INDEX) == ["h1", "h2", "h3", "h4"]
    assert reached(base, {"s": (None, "b2", iv(("p", 0, 500)))}, INDEX) == ["h1", "h2", "h3", "h4"]


def test_unknown_event_times_or_intervals_reach_every_hour():
    old, new = {"s": (None, "b", iv(("p", 0, None)))}, {"s": (None, "b", iv(("p", 0, 500)))}
    assert reached(old, new, [(h, k, None) for h, k, _ in INDEX]) == ["h1", "h2", "h3", "h4"]
    assert reached({"s": (None, None, None)}, new, INDEX) == ["h1", "h2", "h3", "h4"]


def test_a_changed_signature_without_a_differing_interval_fails_closed():
    """Equal intervals under a different digest (the digest covers more than this test models): no change point
    can be found, so every hour holding the key is rebuilt rather than none."""
    same = {"s": (None, "b", iv(("p", 0, None)))}
    assert reached(same, same, INDEX, digests=("x", "y")) == ["h1", "h2", "h3", "h4"]


def test_signatures_in_key_buckets_equal_one_pass():
    """`current_signatures` splits the keys into hash buckets when consent_state is large (its ordered per-subject
    aggregates cannot spill). Every source is filtered on the key it contributes, so an anonymous visitor who is her
    own consent subject (a key both in the identity graph as `anonymous` and in consent_state) is whole in one
    bucket; a bucketing that hashed the sources differently would give such a key two rows."""
    from datetime import datetime, timezone

    from personalization_assets.consented.state import current_signatures
    from personalization_assets.privacy.consent import STATE_SCHEMA as CONSENT_STATE_SCHEMA
    from personalization_assets.privacy.identity import IDENTITY_SCHEMA
    from personalization_assets.privacy.suppression import SUPPRESSION_SCHEMA

    def t(us):
        return None if us is None else datetime.fromtimestamp(us, timezone.utc)

    identity, state, suppression = [], [], []
    for i in range(60):
        anon, user = f"a{i}", f"u{i}"
        subject = anon if i % 3 == 0 else user  # every third visitor never logs in: her anonymous id is the subject
        identity.append({"identifier": anon, "identifier_kind": "anonymous", "consent_subject": subject, "jurisdiction": "eu" if i % 2 else "us"})
        if subject == user:
            identity.append({"identifier": user, "identifier_kind": "user", "consent_subject": user, "jurisdiction": "eu" if i % 2 else "us"})
        for start, end, status in ((0, 100, "granted"), (100, 200 + i, "granted"), (200 + i, None, "denied" if i % 4 else "granted")):
            state.append({"consent_subject": subject, "purpose": "personalization", "status": status, "valid_from": t(start), "valid_to": t(end)})
        if i % 7 == 0:
            suppression.append({"identifier": anon if i % 2 else user, "identifier_kind": "anonymous" if i % 2 else "user"})
    con = duckdb.connect()
    for name, rows, schema in (("identity", identity, IDENTITY_SCHEMA), ("consent_state", state, CONSENT_STATE_SCHEMA),
                               ("suppression", suppression, SUPPRESSION_SCHEMA)):
        con.register(f"__{name}", pa.Table.from_pylist(rows, schema=schema))
        con.execute(f"create temp table {name} as select * from __{name}")

    def signatures(bucket_rows):
        current_signatures(con, bucket_rows=bucket_rows)
        return sorted(con.sql("select * from __sig_new").arrow().read_all().to_pylist(), key=lambda r: r["key"])

    one = signatures(10**9)
    keys = {r["identifier"] for r in identity} | {r["consent_subject"] for r in state} | {r["identifier"] for r in suppression}
    assert len(one) == len({r["key"] for r in one}) and {r["key"] for r in one} == keys  # one row per key, every key
    assert signatures(7) == one  # 26 buckets
