"""Which jurisdiction's consent rules apply to a subject, and what decided it.

A subject's jurisdiction comes from its most recent event that carries a location, else its current CRM
country, else the policy's `unknown` jurisdiction, which the shipped policy makes fail-closed for every
purpose. Known locations that no listed jurisdiction matches fall under `default`. Ledger and state rows
record `jurisdiction_source`. Materialized end to end on a hand-written landing zone (real assets, real lake).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import yaml

from personalization_assets.core.policies import PolicyError, load_policy
from tests.helpers import check_results, defs_for_env, materialize

ROOT = Path(__file__).resolve().parents[2]
PARTITION = "2026-11-28-13:00"
SELECTION = " or ".join(f"key:{k}" for k in (
    "raw/events", "raw/crm_profiles", "raw/privacy_requests", "privacy/identity_links", "privacy/consent_ledger",
    "privacy/consent_state", "privacy/suppression_list", "consented/events", "consented/crm_profiles"))
PURPOSES = {"personalization", "analytics", "advertising", "sale_share"}

# user -> list of (minute, location or None); CRM countries below
USERS = {
    "u-de-crm": [(1, None), (2, None), (3, None)],                          # the reproduction: CRM DE, no location
    "u-nowhere": [(1, None), (2, None)],                                    # no location, no CRM row
    "u-ca": [(1, {"country": "US", "region": "US-CA"}), (2, {"country": "US", "region": "US-CA"})],
    "u-loc-wins": [(1, {"country": "US", "region": "US-CA"}), (2, None)],   # located in California, CRM says DE
    "u-latest-loc": [(1, {"country": "US", "region": "US-CA"}), (5, {"country": "DE"}), (6, None)],  # moved to DE
    "u-ny": [(1, {"country": "US", "region": "US-NY"})],                    # known, listed nowhere -> default
    "u-crm-region": [(1, None)],                                            # CRM country US-CA (a subdivision)
    "u-de-consent": [(1, None), (3, None)],                                 # CRM DE, grants analytics at minute 2
}
CRM = {"u-de-crm": "DE", "u-loc-wins": "DE", "u-crm-region": "US-CA", "u-de-consent": "DE", "u-ny": "GB"}


def _msg(mid: str, user: str | None, minute: int, location: dict | None, event="Content Viewed", anon=None, prefs=None) -> dict:
    ts = f"2026-11-28T13:{minute:02d}:00.000Z"
    context = {"locale": "en-US"}
    if location:
        context["location"] = location
    if prefs is not None:
        context["consent"] = {"categoryPreferences": prefs}
    m = {"messageId": mid, "type": "track", "event": event, "anonymousId": anon or f"anon-{user}", "timestamp": ts,
         "sentAt": ts, "receivedAt": ts, "context": context, "properties": {"content_id": "c-1", "category": "news"}}
    if user:
        m["userId"] = user
    return m


def write_landing(landing: Path) -> None:
    msgs = [_msg(f"m-{u}-{minute}", u, minute, loc) for u, evs in USERS.items() for minute, loc in evs]
    msgs.append(_msg("m-u-de-consent-grant", "u-de-consent", 2, None, event="Segment Consent Preference Updated",
                     prefs={"analytics": True, "performance": True}))
    # an anonymous visitor (never logged in, no location) who grants analytics: the decision's jurisdiction is unknown
    msgs.append(_msg("m-anon-grant", None, 2, None, event="Segment Consent Preference Updated", anon="anon-lonely",
                     prefs={"analytics": True, "performance": True}))
    msgs.append(_msg("m-anon-after", None, 3, None, anon="anon-lonely"))
    folder = landing / "events" / "date=2026-11-28" / "hour=13"
    folder.mkdir(parents=True)
    (folder / "batch.jsonl").write_text("".join(json.dumps(m) + "\n" for m in msgs))
    (landing / "crm").mkdir()
    (landing / "crm" / "export.csv").write_text(
        "user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n"
        + "".join(f"{u},{u}@x.example,,A,B,{c},1990-01-02,2025-01-01T00:00:00Z,free,2025-01-01T00:00:00Z\n" for u, c in CRM.items())
    )
    (landing / "privacy_requests").mkdir()
    reqs = [
        {"request_id": "r-ca", "type": "opt_out_sale", "user_id": "u-ca", "received_at": "2026-11-28T13:30:00Z", "jurisdiction": "US-CA"},
        {"request_id": "r-de", "type": "opt_out_sale", "user_id": "u-de-crm", "received_at": "2026-11-28T13:30:00Z"},
        {"request_id": "r-stranger", "type": "opt_out_sale", "email": "stranger@x.example", "received_at": "2026-11-28T13:30:00Z"},
    ]
    (landing / "privacy_requests" / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reqs))


def _run(landing: Path):
    write_landing(landing)
    defs = defs_for_env()
    result = materialize(defs, SELECTION, (PARTITION, PARTITION))
    checks = check_results(result)
    assert checks and all(checks.values()), {k: v for k, v in checks.items() if not v}
    return defs


class World:
    def __init__(self, defs):
        self.defs = defs
        self.lake = defs.resources["lake"]
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone='UTC'")
        for name, layer, table in (("consented", "consented", "events"), ("identity", "privacy", "identity_links"),
                                   ("state", "privacy", "consent_state"), ("crm", "consented", "crm_profiles")):
            self.lake.register(self.con, name, layer, table)
        from personalization_assets.privacy.consent import LEDGER_SCHEMA
        from personalization_assets.core.hash_chain import HashChainedLog

        self.ledger = HashChainedLog(lake=self.lake, name="consent_ledger", schema=LEDGER_SCHEMA).read_all()

    def pz(self, value: str, kind: str = "id") -> str:
        return self.defs.resources["pseudonymizer"].pseudonymize_values([value], kind)[0]

    def kept(self, user: str) -> list[tuple[str, list[str]]]:
        return [(m, sorted(p)) for m, p in self.con.execute(
            "select message_id, purposes from consented where consent_subject = ? order by message_id", [self.pz(user)]).fetchall()]

    def subject(self, user: str) -> tuple[str, str]:
        rows = set(self.con.execute("select jurisdiction, jurisdiction_source from identity where consent_subject = ?", [self.pz(user)]).fetchall())
        assert len(rows) == 1, rows
        return rows.pop()

    def state(self, pseudonym: str) -> dict[str, list[tuple]]:
        out = {}
        for purpose, status, basis, j, src in self.con.execute(
                "select purpose, status, basis, jurisdiction, jurisdiction_source from state where consent_subject = ? order by purpose, valid_from",
                [pseudonym]).fetchall():
            out.setdefault(purpose, []).append((status, basis, j, src))
        return out

    def ledger_rows(self, ref: str) -> list[dict]:
        return [r for r in self.ledger.to_pylist() if r["source_ref"] == ref]


@pytest.fixture(scope="module")
def world(module_data_dir):
    """Materialized once per module: every test below only reads it (lake, ledger, pseudonyms)."""
    landing = module_data_dir / "landing"
    landing.mkdir()
    return World(_run(landing))


def test_eu_crm_subject_without_location_or_consent_is_not_processed(world):
    """The issue's reproduction: CRM country DE, no context.location, no decision -> nothing in consented/events
    (it used to land there for `analytics` under `default`), and not in consented/crm_profiles either."""
    assert world.kept("u-de-crm") == []
    assert world.subject("u-de-crm") == ("EU", "crm_country")
    state = world.state(world.pz("u-de-crm"))
    assert {p: [s[0] for s in v] for p, v in state.items() if p != "sale_share"} == {
        "personalization": ["denied"], "analytics": ["denied"], "advertising": ["denied"]}
    assert {s[2:] for v in state.values() for s in v} == {("EU", "crm_country")}
    assert world.con.execute("select count(*) from crm where user_pseudonym = ?", [world.pz("u-de-crm")]).fetchall() == [(0,)]


def test_subject_with_no_location_and_no_crm_row_gets_nothing_for_any_purpose(world):
    assert world.kept("u-nowhere") == []
    assert world.subject("u-nowhere") == ("unknown", "unknown")
    state = world.state(world.pz("u-nowhere"))
    assert set(state) == PURPOSES
    assert {s for v in state.values() for s in v} == {("denied", "policy_default", "unknown", "unknown")}


def test_california_located_user_still_gets_analytics_by_default(world):
    assert world.subject("u-ca") == ("US-CA", "event_location")
    assert world.kept("u-ca") == [("m-u-ca-1", ["advertising", "analytics", "sale_share"]),
                                  ("m-u-ca-2", ["advertising", "analytics", "sale_share"])]


def test_event_location_wins_over_crm_country(world):
    assert world.subject("u-loc-wins") == ("US-CA", "event_location")
    assert [m for m, p in world.kept("u-loc-wins") if "analytics" in p] == ["m-u-loc-wins-1", "m-u-loc-wins-2"]


def test_most_recent_located_event_decides_with_its_own_country_and_region(world):
    """Older event US/US-CA, newer event DE without a region: EU. (Taking the latest country and the latest
    region separately would pair DE with US-CA and pick California.)"""
    assert world.kept("u-latest-loc") == []
    assert world.subject("u-latest-loc") == ("EU", "event_location")


def test_known_location_listed_nowhere_is_default_not_unknown(world):
    assert world.subject("u-ny") == ("default", "event_location")
    assert world.kept("u-ny") == [("m-u-ny-1", ["analytics"])]


def test_crm_subdivision_is_matched_as_a_region(world):
    assert world.kept("u-crm-region") == [("m-u-crm-region-1", ["advertising", "analytics", "sale_share"])]
    assert world.subject("u-crm-region") == ("US-CA", "crm_country")
    row = world.con.execute("select purposes from crm where user_pseudonym = ?", [world.pz("u-crm-region")]).fetchall()
    assert [sorted(r[0]) for r in row] == [["advertising", "analytics", "sale_share"]]


def test_ledger_records_which_source_decided_the_jurisdiction(world):
    grant = world.ledger_rows("m-u-de-consent-grant")
    assert {(r["purpose"], r["decision"], r["jurisdiction"], r["jurisdiction_source"]) for r in grant} == {
        ("analytics", "granted", "EU", "crm_country")}
    anon = world.ledger_rows("m-anon-grant")
    assert {(r["jurisdiction"], r["jurisdiction_source"]) for r in anon} == {("unknown", "unknown")}
    assert {(r["jurisdiction"], r["jurisdiction_source"]) for r in world.ledger_rows("r-ca")} == {("US-CA", "request")}
    # a request without a jurisdiction field: the user's CRM country
    assert {(r["jurisdiction"], r["jurisdiction_source"]) for r in world.ledger_rows("r-de")} == {("EU", "crm_country")}
    assert {(r["jurisdiction"], r["jurisdiction_source"]) for r in world.ledger_rows("r-stranger")} == {("unknown", "unknown")}
    # an explicit grant still works where the jurisdiction came from the CRM (or is unknown): events from the
    # grant on are kept (the consent event itself included), the one before it is not
    assert world.kept("u-de-consent") == [("m-u-de-consent-3", ["analytics"]), ("m-u-de-consent-grant", ["analytics"])]
    assert world.kept("anon-lonely") == [("m-anon-after", ["analytics"]), ("m-anon-grant", ["analytics"])]


def test_subject_known_only_from_the_ledger_is_fail_closed(world):
    stranger = world.pz("stranger@x.example", "email")
    assert world.con.execute("select count(*) from identity where identifier = ?", [stranger]).fetchall() == [(0,)]
    state = world.state(stranger)
    assert set(state) == PURPOSES
    assert {s for p, v in state.items() if p != "sale_share" for s in v} == {("denied", "policy_default", "unknown", "unknown")}
    assert {s[2:] for s in state["sale_share"]} == {("unknown", "unknown")}


def _policy_copy(tmp_path: Path, edit) -> Path:
    d = tmp_path / "policy"
    shutil.copytree(ROOT / "privacy_policies", d)
    data = yaml.safe_load((d / "jurisdictions.yaml").read_text())
    edit(data["jurisdictions"])
    (d / "jurisdictions.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return d


def test_a_policy_may_loosen_unknown_explicitly(landing, tmp_path, monkeypatch):
    d = _policy_copy(tmp_path, lambda j: j["unknown"]["purposes"]["analytics"].update(basis="opt_out", no_record="allow"))
    monkeypatch.setenv("PERSONALIZATION_POLICY_DIR", str(d))
    w = World(_run(landing))
    assert w.kept("u-nowhere") == [("m-u-nowhere-1", ["analytics"]), ("m-u-nowhere-2", ["analytics"])]
    assert w.kept("u-de-crm") == []  # EU by CRM country: still opt-in


def test_loader_requires_the_unknown_jurisdiction(tmp_path):
    d = _policy_copy(tmp_path, lambda j: j.pop("unknown"))
    with pytest.raises(PolicyError, match=r"jurisdictions\.yaml: jurisdictions\.unknown: missing .*no_record: deny"):
        load_policy(d)


def test_loader_rejects_a_match_on_unknown(tmp_path):
    d = _policy_copy(tmp_path, lambda j: j["unknown"].update(match={"countries": ["DE"]}))
    with pytest.raises(PolicyError, match=r"jurisdictions\.yaml: jurisdictions\.unknown\.match: must be empty"):
        load_policy(d)


def test_sql_rule_agrees_with_the_stated_rule():
    """identity.jurisdiction_case_sql (what the assets run) == PrivacyPolicy.jurisdiction_for (the rule)."""
    from personalization_assets.privacy.identity import jurisdiction_case_sql
    from personalization_assets.core.policies import get_policy

    policy = get_policy()
    values = [None, "", " ", "DE", "de", "US", "FR", "GB", "US-CA", "us-ca", "US-NY", "XX"]
    pairs = [(c, r) for c in values for r in values]
    t = pa.table({"c": [p[0] for p in pairs], "r": [p[1] for p in pairs]})
    con = duckdb.connect()
    con.register("t", t)
    sql = jurisdiction_case_sql(policy).format(country="c", region="r")
    got = [row[0] for row in con.execute(f"select {sql} from t").fetchall()]
    expected = [policy.jurisdiction_for(c, r) for c, r in pairs]
    # the SQL leaves "no location" NULL for the caller's fallback (CRM country, then unknown)
    assert [g if g is not None else "unknown" for g in got] == expected
    assert policy.jurisdiction_for(None, None) == "unknown" and policy.jurisdiction_for("GB", None) == "default"


def test_ledger_segments_written_before_the_column_existed_still_verify_and_read(tmp_path):
    """The ledger is immutable: segments appended before `jurisdiction_source` existed keep their columns;
    they must still verify (hash over their own columns) and read with the new column as null."""
    from datetime import datetime, timezone

    from personalization_assets.privacy.consent import LEDGER_SCHEMA
    from personalization_assets.core.hash_chain import HashChainedLog
    from personalization_assets.core.storage import LakeStorage

    t = datetime(2026, 11, 28, tzinfo=timezone.utc)
    row = {"decision_id": "d1", "identifier_pseudonym": "v1:" + "a" * 64, "identifier_kind": "user", "purpose": "analytics",
           "decision": "granted", "effective_at": t, "recorded_at": t, "source": "cmp_event", "source_ref": "m1",
           "policy_version": "old", "jurisdiction": "EU"}
    lake = LakeStorage(url=str(tmp_path / "lake"))
    old_schema = pa.schema([f for f in LEDGER_SCHEMA if f.name != "jurisdiction_source"])
    HashChainedLog(lake=lake, name="consent_ledger", schema=old_schema).append([row])
    log = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA)
    assert log.verify().ok
    log.append([{**row, "decision_id": "d2", "source_ref": "m2", "jurisdiction_source": "event_location"}])
    status = log.verify()
    assert status.ok and status.rows == 2, status
    assert log.read_all(["seq", "jurisdiction_source"]).to_pylist() == [
        {"seq": 1, "jurisdiction_source": None}, {"seq": 2, "jurisdiction_source": "event_location"}]
    # tampering with an old segment is still detected
    path = Path(lake.full_path(lake.data_file("privacy", "consent_ledger", {"segment": "000000000001"})))
    import pyarrow.parquet as pq

    old = pq.read_table(path)
    pq.write_table(old.set_column(old.schema.get_field_index("jurisdiction"), "jurisdiction", pa.array(["US-CA"])), path)
    assert not log.verify().ok


def test_consent_state_refuses_identity_links_written_before_the_source_existed(landing):
    """After an upgrade, identity_links from the old code (jurisdiction `default` for subjects with no location)
    must not feed consent_state: the run fails with what to do, instead of carrying the old fallback over."""
    defs = _run(landing)
    lake = defs.resources["lake"]
    old = lake.read_table("privacy", "identity_links")
    lake.write_table("privacy", "identity_links", old.drop_columns(["jurisdiction_source"]))
    result = materialize(defs, "key:privacy/consent_state", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "materialize privacy/identity_links, then privacy/consent_state" in str(failure.event_specific_data.error)
