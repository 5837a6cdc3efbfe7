"""End to end on generated data with planted cases, each checked in every downstream asset:
a never-consented user, a grant-then-withdraw user, an anonymous visitor who consents then logs in, a GPC
user, an opt-out-of-sale user, erased users (by email and by id) and a junk anonymous id. One generated landing
zone is materialized once per module (`world`); a test that changes the lake works on a copy (`own_world`)."""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from personalization_assets.cli import landing_partition_keys
from tests.helpers import (
    PIPELINE,
    check_results,
    defs_for_env,
    first_contained,
    generate,
    materializations,
    materialize,
    string_leaves,
)


def _ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def world(tmp_path_factory, clean_env_module):
    """One generated landing zone, materialized once, shared by the assertions below."""
    mp = clean_env_module
    root = tmp_path_factory.mktemp("e2e")
    mp.setenv("PERSONALIZATION_DATA_DIR", str(root / "data"))
    mp.setenv("PERSONALIZATION_EVENTS_START", "2026-01-01")
    manifest = generate(root / "data" / "landing")
    defs = defs_for_env()
    keys = landing_partition_keys(defs, None)
    result = materialize(defs, PIPELINE, (keys[0], keys[-1]))
    yield {"defs": defs, "manifest": manifest, "result": result, "range": (keys[0], keys[-1]), "root": root}


@pytest.fixture
def own_world(world, tmp_path, monkeypatch):
    """A private copy of the materialized world (its data dir: landing, lake, development key) for a test that
    changes it: the shared `world` stays as materialized, whatever order the tests run in."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["root"] / "data", data)
    monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(data))
    return {**world, "defs": defs_for_env(), "root": tmp_path}


def _pz(world, value, kind="id"):
    return world["defs"].resources["pseudonymizer"].pseudonymize_values([value], kind)[0]


def _con(world):
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    lake = world["defs"].resources["lake"]
    lake.register(con, "consented", "consented", "events")
    lake.register(con, "identity", "privacy", "identity_links")
    lake.register(con, "state", "privacy", "consent_state")
    return con


def _case(world, name):
    return world["manifest"]["cases"][name]


def _events(world, case):
    user = _pz(world, case["user_id"])
    con = _con(world)
    return con.execute(
        "select timestamp, purposes, user_pseudonym from consented where consent_subject = ? order by timestamp", [user]
    ).fetchall()


def test_pipeline_checks_all_pass(world):
    checks = check_results(world["result"])
    assert checks and all(checks.values()), {k: v for k, v in checks.items() if not v}


def test_never_consented_user_is_never_processed(world):
    assert _events(world, _case(world, "never_consented")) == []


def test_withdrawal_applies_from_its_time_and_earlier_events_stay(world):
    case = _case(world, "grant_then_withdraw")
    withdrawn = _ts(case["withdrawn_at"])
    rows = _events(world, case)
    before = [r for r in rows if r[0] < withdrawn and "personalization" in r[1]]
    after = [r for r in rows if r[0] >= withdrawn and "personalization" in r[1]]
    assert before, "events while consent was in force are kept"
    assert not after, "nothing after the withdrawal is kept for personalization"


def test_anonymous_consent_carries_over_to_the_user_after_login(world):
    case = _case(world, "anon_consent_then_login")
    rows = _events(world, case)
    identified = _ts(case["identified_at"])
    pre_login = [r for r in rows if r[2] is None]  # anonymous events, resolved to the user's subject
    assert pre_login and all("personalization" in r[1] for r in pre_login)
    assert any(r[0] >= identified and "personalization" in r[1] for r in rows)


def test_gpc_and_opt_out_exclude_sale_share_but_not_personalization(world):
    gpc = _events(world, _case(world, "gpc_user"))
    assert gpc and any("personalization" in r[1] for r in gpc)
    gpc_first = min(r[0] for r in gpc)
    assert not any("sale_share" in r[1] for r in gpc if r[0] >= gpc_first)
    case = _case(world, "opt_out_sale_user")
    opted = _ts(case["request_received_at"])
    rows = _events(world, case)
    assert any("personalization" in r[1] for r in rows)
    assert not any("sale_share" in r[1] for r in rows if r[0] >= opted)


def test_junk_anonymous_id_is_not_merged(world):
    case = _case(world, "junk_anonymous_id")
    junk = _pz(world, case["anonymous_ids"][0])
    con = _con(world)
    linked, subject = con.execute("select linked_users, consent_subject from identity where identifier = ?", [junk]).fetchall()[0]
    assert linked >= 30 and subject == junk


def test_no_raw_identifier_outside_the_raw_tier(world):
    """Scan every output file outside raw/ for the input's identifier values."""
    scan_for_identifiers(world["defs"].resources["lake"], world["root"] / "data" / "landing")


def scan_for_identifiers(lake, landing_dir):
    import csv
    import gzip
    import json

    values = set()
    for f in landing_dir.rglob("*.jsonl*"):
        data = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
        for line in data.splitlines():
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if not isinstance(m, dict):
                continue
            ctx = m.get("context") if isinstance(m.get("context"), dict) else {}
            traits = m.get("traits") if isinstance(m.get("traits"), dict) else {}
            for v in (m.get("userId"), m.get("anonymousId"), m.get("previousId"), ctx.get("ip"), ctx.get("userAgent"),
                      traits.get("email"), traits.get("phone"), traits.get("name"), m.get("email"), m.get("user_id")):
                if isinstance(v, str) and len(v) >= 6:
                    values.add(v)
    for f in landing_dir.rglob("*.csv"):
        for row in csv.DictReader(f.read_text(errors="replace").splitlines()):
            for k in ("user_id", "email", "phone", "first_name", "last_name"):
                v = row.get(k)
                if v and len(v) >= 6:
                    values.add(v)
    assert len(values) > 100
    leaves = []
    for layer in ("privacy", "consented", "features", "exports"):
        for f in lake.list_files(layer):
            if "/content_catalog/" in f.path:
                continue  # CMS data about content (author names are public bylines), no subject data
            table = lake.read_table(layer, f.path.split("/")[1], _partition(f.path))
            for field in table.schema:
                leaves += [(f"{f.path}.{name}", col) for name, col in string_leaves(field.name, table[field.name])]
    hit = first_contained(sorted(values), leaves)
    assert hit is None, f"{hit[0]} contains a raw identifier: {hit[2]!r} in {hit[1]!r}"
    scanned = len(leaves)
    assert scanned > 10


def _partition(path: str):
    parts = [p for p in path.split("/")[2:-1] if "=" in p]
    return dict(p.split("=", 1) for p in parts) or None


def test_erasure_removes_subjects_everywhere_and_ingestion_keeps_them_out(own_world):
    world = own_world
    defs = world["defs"]
    lake = defs.resources["lake"]
    erased = [_case(world, "erased_user"), _case(world, "erased_by_id")]
    users = [_pz(world, c["user_id"]) for c in erased]
    anons = [_pz(world, a) for c in erased for a in c["anonymous_ids"]]
    raw_ids = {c["user_id"] for c in erased} | {a for c in erased for a in c["anonymous_ids"]}
    con = _con(world)
    lake.register(con, "raw_events", "raw", "events")
    in_raw = con.execute(f"select count(*) from raw_events where user_id in ({','.join('?' * len(raw_ids))}) "
                         f"or anonymous_id in ({','.join('?' * len(raw_ids))})", list(raw_ids) * 2).fetchall()[0][0]
    assert in_raw > 0, "the erased users' events were ingested before their requests were processed"
    # the pipeline run already built the suppression list: the consented tier never received them
    assert con.execute(f"select count(*) from consented where user_pseudonym in ({','.join('?' * len(users))}) "
                       f"or anonymous_pseudonym in ({','.join('?' * len(anons))})", users + anons).fetchall()[0][0] == 0
    result = materialize(defs, "key:privacy/erasure_log or key:privacy/suppression_list")
    assert check_results(result)["privacy/erasure_log:subjects_absent_everywhere"] is True
    md = materializations(result)["privacy/erasure_log"]
    assert md["rows_removed_per_asset"]["raw/events"] > 0
    con = _con(world)
    for table in ("consented",):
        n = con.execute(f"select count(*) from {table} where user_pseudonym in ({','.join('?' * len(users))}) "
                        f"or anonymous_pseudonym in ({','.join('?' * len(anons))}) or consent_subject in ({','.join('?' * len(users))})",
                        users + anons + users).fetchall()[0][0]
        assert n == 0
    lake.register(con, "raw_events", "raw", "events")
    assert con.execute(f"select count(*) from raw_events where user_id in ({','.join('?' * len(raw_ids))}) "
                       f"or anonymous_id in ({','.join('?' * len(raw_ids))})", list(raw_ids) * 2).fetchall()[0][0] == 0
    lake.register(con, "raw_q", "raw", "events_quarantine")
    for v in raw_ids:
        assert con.execute("select count(*) from raw_q where contains(original_text, ?)", [v]).fetchall()[0][0] == 0
    # re-ingesting the landing zone (which still holds their events) keeps them out, and says so
    again = materialize(defs, "key:raw/events", world["range"])
    # each hour records its own figures (the run's totals are run tags): sum over the hours
    suppressed = sum(int(e.event_specific_data.materialization.metadata["suppressed_erased_subjects"].value) for e in again.all_events
                     if e.event_type_value == "ASSET_MATERIALIZATION" and e.event_specific_data.materialization.asset_key.path == ["raw", "events"])
    assert suppressed > 0
    assert check_results(again)["raw/events:reconciliation"] is True
    assert con.execute(f"select count(*) from raw_events where user_id in ({','.join('?' * len(raw_ids))})", list(raw_ids)).fetchall()[0][0] == 0
    log = lake.read_table("privacy", "erasure_log").to_pylist() if lake.exists("privacy", "erasure_log") else None
    rows = [r for seg in lake.partitions("privacy", "erasure_log") for r in lake.read_table("privacy", "erasure_log", seg).to_pylist()]
    assert {r["asset"] for r in rows} >= {"raw/events", "consented/events", "privacy/identity_links"}
    assert all(r["verified"] for r in rows)
    assert log is None  # segments only: the log is append-only


def test_consented_hours_record_their_own_figures(world):
    """consented/events in a range run: each hour's materialization carries that hour's figures (read =
    written + excluded, read = that hour's raw rows), and the run's totals are run tags, not per-hour."""
    result = world["result"]
    per_hour: dict[str, dict[str, dict]] = {}
    for e in result.all_events:
        if e.event_type_value == "ASSET_MATERIALIZATION":
            m = e.event_specific_data.materialization
            if m.partition and m.asset_key.path in (["raw", "events"], ["consented", "events"]):
                per_hour.setdefault("/".join(m.asset_key.path), {})[m.partition] = {k: getattr(v, "value", v) for k, v in m.metadata.items()}
    consented, raw = per_hour["consented/events"], per_hour["raw/events"]
    assert set(consented) == set(raw) and len(consented) > 10
    for pk, md in consented.items():
        assert md["raw_rows_read"] == raw[pk]["rows_written"], pk
        assert md["rows_written"] + md["excluded_no_consent"] + md["excluded_suppressed"] == md["raw_rows_read"], pk
        assert "partitions" not in md
    assert len({md["rows_written"] for md in consented.values()}) > 1  # not one repeated total
    tags = result.dagster_run.tags
    assert int(tags["personalization/totals/consented/events/rows_written"]) == sum(md["rows_written"] for md in consented.values())
    assert int(tags["personalization/totals/consented/events/raw_rows_read"]) == sum(md["raw_rows_read"] for md in consented.values())


def test_planted_consent_stories_in_features(own_world):
    """landing -> raw -> privacy (the pipeline run of `world`) -> features at an explicit as_of (on a copy of the
    world: the feature tables are rewritten): the feature tables tell the planted subjects' stories."""
    from personalization_assets.core.pseudonymize import Pseudonymizer
    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.features import build_feature_assets
    from personalization_assets.resources import DuckDBEngine

    assert own_world["result"].success
    data_dir, manifest = own_world["root"] / "data", own_world["manifest"]
    lake = LakeStorage(url=str(data_dir / "lake"))
    result = dg.materialize(
        build_feature_assets(),
        resources={"lake": lake, "duckdb": DuckDBEngine(database=":memory:")},
        run_config={"ops": {"feature_tables": {"config": {"as_of": f"{manifest['end']}T23:59:59Z"}}}},
        raise_on_error=False,
    )
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())

    pz = Pseudonymizer(keys_file=str(data_dir / "dev_pseudonym_keys.json"))
    identity = {r["identifier"]: r for r in pq.read_table(lake.full_path("features/identity_map/data.parquet")).to_pylist()}
    eligible = {(r["person_id"], r["purpose"]): r["eligible"]
                for r in pq.read_table(lake.full_path("features/purpose_eligibility/data.parquet")).to_pylist()}
    rfm_persons = set(pq.read_table(lake.full_path("features/user_rfm/data.parquet"))["person_id"].to_pylist())
    cases = manifest["cases"]

    def identifiers(case) -> list[str]:
        user = pz.pseudonymize_values([case["user_id"]], "id") if case.get("user_id") else []
        return user + pz.pseudonymize_values(case.get("anonymous_ids", []), "id")

    def persons(case) -> set[str]:
        return {identity[i]["person_id"] for i in identifiers(case) if i in identity}

    # no consent at as_of (never given, or withdrawn before it): no features at all
    for name in ("never_consented", "grant_then_withdraw"):
        if name in cases:
            assert not persons(cases[name]), name
    # consent given anonymously carries over after login: one stitched person with its pre-login events
    if "anon_consent_then_login" in cases:
        stitched = persons(cases["anon_consent_then_login"])
        assert len(stitched) == 1 and stitched <= rfm_persons
    # personalization allowed, sale/share not
    for name in ("gpc_user", "opt_out_sale_user"):
        if name in cases:
            (person,) = persons(cases[name])
            assert person in rfm_persons
            assert eligible[(person, "personalization")] is True
            assert eligible[(person, "sale_share")] is False, name
    # a buggy SDK's shared anonymousId does not merge its users
    if "junk_anonymous_id" in cases:
        case = cases["junk_anonymous_id"]
        (junk,) = pz.pseudonymize_values(case["anonymous_ids"], "id")
        if junk in identity:
            assert identity[junk]["is_junk"] and identity[junk]["component_size"] == 1
        users = [u for u in pz.pseudonymize_values(case["linked_user_ids"], "id") if u in identity]
        assert len({identity[u]["person_id"] for u in users}) == len(users)


def test_s3_lifecycle_expires_by_age_only_the_time_partitions_of_a_real_lake(world):
    """Every object of a materialized lake against the generated S3 lifecycle rules (infra/terraform): S3 expires an
    object by its age, so a rule may only reach objects of an hour's partition (as old as its data). The suppression
    list, the CRM snapshot, the landing manifest or the consented state, unchanged for a tier's days, would otherwise
    be deleted: erasures forgotten, state lost."""
    from tests.infra.test_retention_lifecycle import STORAGE, lake_expiry, load_module, parse_rules

    rules = parse_rules(load_module(STORAGE))
    root = world["root"] / "data" / "lake"
    keys = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    expiring = [k for k in keys if lake_expiry(rules, k) is not None]
    state = [k for k in expiring if not any(part.startswith("date=") for part in k.split("/")[:-1])]
    assert state == [], f"S3 would expire state by its age: {state[:10]}"
    # every prefix the policy expires holds objects here (a misspelt table expires nothing), and every hour partition
    # of the lake expires (partition lock files aside: no data)
    import yaml

    from tests.conftest import ROOT

    tiers = yaml.safe_load((ROOT / "privacy_policies" / "retention.yaml").read_text())["tiers"]
    for name, spec in tiers.items():
        if spec["bucket"] == "lake":
            for sub in spec.get("expire_prefixes", [""]):
                assert any(k.startswith(spec["prefix"] + sub) for k in expiring), f"tier {name}: nothing under {spec['prefix'] + sub!r}"
    hours = [k for k in keys if any(p.startswith("date=") for p in k.split("/")) and "/_partition_locks/" not in f"/{k}"]
    assert hours and [k for k in hours if lake_expiry(rules, k) is None] == []
    assert any(k.startswith("privacy/suppression_list/") for k in keys)  # the world has erasures: the list is there
