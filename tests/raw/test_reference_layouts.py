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
    from personalization_assets.automation.sensors import landing_state
    from personalization_assets.core.storage import LandingZone

    zone = LandingZone(url=str(landing))
    assert landing_state(zone)["sources"] == {}
    (landing / "privacy_requests").mkdir()
    (landing / "privacy_requests" / "_x.jsonl").write_text(_request("r1", "a@x.example"))
    first = landing_state(zone)["sources"]
    assert set(first) == {"privacy_requests"}
    (landing / "privacy_requests" / ".DS_Store").write_bytes(b"junk")
    assert landing_state(zone)["sources"]["privacy_requests"] != first["privacy_requests"]
