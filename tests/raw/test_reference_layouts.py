"""Reference sources read every object of their folder (issue #13): names starting with '.' or '_' are not
skipped; what cannot be read is quarantined with the landing plan's reason instead of vanishing."""

from __future__ import annotations

import json

from tests.helpers import check_results, defs_for_env, materializations, materialize

REQ = {"type": "erasure", "received_at": "2026-11-01T00:00:00Z", "jurisdiction": "EU"}


def _request(request_id: str, email: str) -> str:
    return json.dumps({"request_id": request_id, "email": email, **REQ}) + "\n"


def test_underscore_and_nested_privacy_requests_are_ingested(landing):
    d = landing / "privacy_requests"
    (d / "2026" / "11").mkdir(parents=True)
    (d / "r.jsonl").write_text(_request("r1", "a@x.example"))
    (d / "_x.jsonl").write_text(_request("r2", "b@x.example"))  # skipped before: a leading '_' hid it
    (d / ".late.ndjson").write_text(_request("r3", "c@x.example"))
    (d / "2026" / "11" / "portal.jsonl").write_text(_request("r4", "d@x.example"))
    (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (d / "export.json").write_text(_request("r5", "e@x.example"))  # not NDJSON by name: quarantined, not guessed
    defs = defs_for_env()
    result = materialize(defs, "key:raw/privacy_requests")
    assert check_results(result)["raw/privacy_requests:reconciliation"] is True
    lake = defs.resources["lake"]
    raw = lake.read_table("raw", "privacy_requests").to_pylist()
    assert sorted(r["request_id"] for r in raw) == ["r1", "r2", "r3", "r4"]
    q = {r["source_file"]: r for r in lake.read_table("raw", "privacy_requests_quarantine").to_pylist()}
    assert set(q) == {"privacy_requests/.DS_Store", "privacy_requests/export.json"}
    for row in q.values():
        assert row["reason"] == "unsupported_file" and row["line_no"] == 0 and row["source"] == "privacy_requests"
        assert ".jsonl" in row["detail"]
    assert q["privacy_requests/.DS_Store"]["original_bytes"] == b"\x00\x00\x00\x01Bud1"
    meta = materializations(result)["raw/privacy_requests"]
    assert meta["records_read"] == 6 and meta["rows_written"] == 4 and meta["quarantined"] == 2
    assert meta["files_read"] == 6


def test_crm_and_catalog_hidden_names_are_read_or_quarantined(landing):
    (landing / "crm").mkdir()
    header = "user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n"
    (landing / "crm" / "_export.csv").write_text(
        header + "u1,a@x.example,+49 30 1234,Ann,A,DE,1990-01-02,2025-01-01T00:00:00Z,free,2025-01-01T00:00:00Z\n")
    (landing / "crm" / "Thumbs.db").write_bytes(b"junk")
    (landing / "catalog").mkdir()
    (landing / "catalog" / "_c.ndjson").write_text(json.dumps(
        {"content_id": "c1", "title": "T", "category": "news", "tags": ["a"], "author": "x",
         "published_at": "2026-01-01T00:00:00Z", "premium": False, "price": None}) + "\n")
    defs = defs_for_env()
    result = materialize(defs, "key:raw/crm_profiles or key:raw/content_catalog")
    checks = check_results(result)
    assert checks["raw/crm_profiles:reconciliation"] is True and checks["raw/content_catalog:reconciliation"] is True
    lake = defs.resources["lake"]
    assert [r["user_id"] for r in lake.read_table("raw", "crm_profiles").to_pylist()] == ["u1"]
    assert [r["content_id"] for r in lake.read_table("raw", "content_catalog").to_pylist()] == ["c1"]
    crm_q = lake.read_table("raw", "crm_profiles_quarantine").to_pylist()
    assert [(r["source_file"], r["reason"]) for r in crm_q] == [("crm/Thumbs.db", "unsupported_file")]
    assert ".csv.gz" in crm_q[0]["detail"]


def test_landing_sensor_sees_every_reference_object(landing):
    """A privacy request dropped as `_x.jsonl` (or any object the reference asset would quarantine) changes the
    landing digest, so the arrival sensor requests the run that reads it."""
    from personalization_assets.automation.sensors import EMPTY_DIGEST, landing_state
    from personalization_assets.core.storage import LandingZone

    zone = LandingZone(url=str(landing))
    # every source has a digest, an empty one too (its last file gone, its table must be rebuilt empty)
    assert landing_state(zone)["sources"] == dict.fromkeys(("crm", "catalog", "privacy_requests"), EMPTY_DIGEST)
    (landing / "privacy_requests").mkdir()
    (landing / "privacy_requests" / "_x.jsonl").write_text(_request("r1", "a@x.example"))
    first = landing_state(zone)["sources"]
    assert {k for k, v in first.items() if v != EMPTY_DIGEST} == {"privacy_requests"}
    (landing / "privacy_requests" / ".DS_Store").write_bytes(b"junk")
    assert landing_state(zone)["sources"]["privacy_requests"] != first["privacy_requests"]


CRM_HEADER = "user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n"


def _crm_row(user: str, plan: str = "free") -> str:
    return f"{user},{user}@x.example,,Ann,A,DE,1990-01-02,2025-01-01T00:00:00Z,{plan},2025-01-01T00:00:00Z\n"


def test_a_reference_source_whose_inputs_did_not_change_is_not_read_again(landing, monkeypatch):
    """A tick every few minutes re-read and rewrote each reference source whole. With the same objects, suppression
    list and settings as the stored tables, the source is not read (its checks run on the stored tables); a changed
    object, a new one, a new erasure, a table rewritten by another step or `full_refresh` read it again."""
    import os

    from personalization_assets.raw import assets as raw_assets

    (landing / "crm").mkdir()
    export = landing / "crm" / "export.csv"
    export.write_text(CRM_HEADER + _crm_row("u1") + _crm_row("u2") + "broken line\n")
    defs = defs_for_env()
    lake = defs.resources["lake"]
    loads = []
    real_load = raw_assets._load
    monkeypatch.setattr(raw_assets, "_load", lambda landing_zone, files: loads.append(len(files)) or real_load(landing_zone, files))

    def run(config=None):
        result = materialize(defs, "key:raw/crm_profiles", run_config=config)
        checks = check_results(result)
        assert checks["raw/crm_profiles:reconciliation"] is True and checks["raw/crm_profiles:pandera_RawCrmProfile"] is True
        return materializations(result)["raw/crm_profiles"]

    first = run()
    assert loads == [1] and first["inputs_unchanged"] is False and first["quarantined"] == 1
    mtime = os.stat(lake.full_path(lake.data_file("raw", "crm_profiles"))).st_mtime_ns
    again = run()
    assert loads == [1], "read again although nothing changed"
    assert again["inputs_unchanged"] is True and again["records_read"] == first["records_read"] and again["quarantined"] == 1
    assert os.stat(lake.full_path(lake.data_file("raw", "crm_profiles"))).st_mtime_ns == mtime, "rewritten"
    # a changed object (same name, other bytes)
    export.write_text(CRM_HEADER + _crm_row("u1", "pro") + _crm_row("u2") + "broken line\n")
    assert run()["inputs_unchanged"] is False and loads == [1, 1]
    assert sorted(r["plan"] for r in lake.read_table("raw", "crm_profiles").to_pylist()) == ["free", "pro"]
    # a new object
    (landing / "crm" / "late.csv").write_text(CRM_HEADER + _crm_row("u3"))
    assert run()["inputs_unchanged"] is False and loads == [1, 1, 2]
    assert run()["inputs_unchanged"] is True and loads == [1, 1, 2]
    # another step rewrote the table (fewer rows than written): read again, the reconciliation stays exact
    table = lake.read_table("raw", "crm_profiles")
    lake.write_table("raw", "crm_profiles", table.slice(0, 1))
    assert run()["inputs_unchanged"] is False and loads == [1, 1, 2, 2]
    # full refresh
    assert run({"ops": {"raw_crm_profiles": {"config": {"full_refresh": True}}}})["inputs_unchanged"] is False
    assert loads == [1, 1, 2, 2, 2]


def test_a_new_erasure_makes_the_reference_source_read_again_without_the_subject(landing, monkeypatch):
    from personalization_assets.raw import assets as raw_assets

    (landing / "crm").mkdir()
    (landing / "crm" / "export.csv").write_text(CRM_HEADER + _crm_row("u1") + _crm_row("u2"))
    defs = defs_for_env()
    lake = defs.resources["lake"]
    materialize(defs, "key:raw/crm_profiles")
    digest = lake.schema("raw", "crm_profiles").metadata[raw_assets.INPUTS_META]
    (landing / "privacy_requests").mkdir()
    (landing / "privacy_requests" / "r.jsonl").write_text(json.dumps(
        {"request_id": "r1", "type": "erasure", "user_id": "u2", **{k: v for k, v in REQ.items() if k != "type"}}) + "\n")
    materialize(defs, "key:raw/privacy_requests or key:raw/events or key:privacy/identity_links or key:privacy/suppression_list")
    md = materializations(materialize(defs, "key:raw/crm_profiles"))["raw/crm_profiles"]
    assert md["inputs_unchanged"] is False and md["suppressed_erased_subjects"] == 1
    assert [r["user_id"] for r in lake.read_table("raw", "crm_profiles").to_pylist()] == ["u1"]
    assert lake.schema("raw", "crm_profiles").metadata[raw_assets.INPUTS_META] != digest


def test_a_run_that_died_between_the_two_writes_is_redone(landing):
    """The raw table is written before its quarantine: a run that dies in between leaves the raw table of the new
    inputs beside the quarantine of the old ones. The next run reads the source again instead of trusting the pair."""
    from personalization_assets.raw import assets as raw_assets

    (landing / "crm").mkdir()
    export = landing / "crm" / "export.csv"
    export.write_text(CRM_HEADER + _crm_row("u1") + "broken line\n")
    defs = defs_for_env()
    lake = defs.resources["lake"]
    materialize(defs, "key:raw/crm_profiles")
    export.write_text(CRM_HEADER + _crm_row("u1") + _crm_row("u2") + "broken line\n" + "another broken line\n")
    # what the dying run left: its raw table (new rows, its digest and counts), the old quarantine
    with_new_inputs = materialize(defs, "key:raw/crm_profiles")
    assert materializations(with_new_inputs)["raw/crm_profiles"]["inputs_unchanged"] is False
    new_raw = lake.read_table("raw", "crm_profiles")
    export.write_text(CRM_HEADER + _crm_row("u1") + "broken line\n")
    materialize(defs, "key:raw/crm_profiles")  # back to the old inputs: old raw + old quarantine
    export.write_text(CRM_HEADER + _crm_row("u1") + _crm_row("u2") + "broken line\n" + "another broken line\n")
    lake.write_table("raw", "crm_profiles", new_raw)  # the new raw table, then the run died
    assert lake.schema("raw", "crm_profiles").metadata[raw_assets.INPUTS_META] != \
        lake.schema("raw", "crm_profiles_quarantine").metadata[raw_assets.INPUTS_META]
    md = materializations(materialize(defs, "key:raw/crm_profiles"))["raw/crm_profiles"]
    assert md["inputs_unchanged"] is False and md["quarantined"] == 2
    assert lake.parquet_metadata("raw", "crm_profiles_quarantine").num_rows == 2
    assert materializations(materialize(defs, "key:raw/crm_profiles"))["raw/crm_profiles"]["inputs_unchanged"] is True
