"""The planted privacy cases are present, shaped as the manifest says."""

from __future__ import annotations

import csv
import json

import pytest

CONSENT = "Segment Consent Preference Updated"
CASES = {"never_consented", "grant_then_withdraw", "anon_consent_then_login", "gpc_user", "opt_out_sale_user", "erased_user",
         "erased_by_id", "junk_anonymous_id"}


def _of(messages, case) -> list[dict]:
    """Messages of a planted person (by userId or one of their anonymousIds), in event-time order."""
    ids = set(case["anonymous_ids"])
    return sorted((m for m in messages if m["userId"] == case["user_id"] or m.get("anonymousId") in ids), key=lambda m: m["timestamp"])


def _consents(msgs):
    return [m for m in msgs if m.get("event") == CONSENT]


@pytest.fixture(scope="module")
def requests(clean_zone) -> list[dict]:
    root = clean_zone[0]
    return [json.loads(line) for p in sorted((root / "privacy_requests").glob("*.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def crm_rows(clean_zone) -> list[dict]:
    root = clean_zone[0]
    return [row for p in sorted((root / "crm").glob("*.csv")) for row in csv.DictReader(p.read_text().splitlines())]


def test_manifest_format(manifest):
    assert manifest["seed"] == 11 and manifest["end"] == "2024-05-07" and manifest["days"] == 3
    assert set(manifest["cases"]) == CASES
    for case in manifest["cases"].values():
        assert {"user_id", "anonymous_ids", "email", "expected"} <= set(case) and case["expected"]
    assert set(manifest["bad_lines"]) and sum(manifest["bad_lines"].values()) == 0


def test_never_consented(manifest, clean_messages):
    case = manifest["cases"]["never_consented"]
    msgs = _of(clean_messages, case)
    assert len(msgs) >= 15 and not _consents(msgs)
    assert not any("consent" in m["context"] for m in msgs)
    assert any(m["userId"] == case["user_id"] for m in msgs) and all(m["anonymousId"] in case["anonymous_ids"] for m in msgs)
    assert case["jurisdiction"] == "EU" and msgs[0]["context"]["location"]["country"] == "DE"


def test_grant_then_withdraw(manifest, clean_messages):
    case = manifest["cases"]["grant_then_withdraw"]
    msgs = _of(clean_messages, case)
    consents = _consents(msgs)
    assert [c["context"]["consent"]["categoryPreferences"]["personalization"] for c in consents] == [True, False]
    grant, withdraw = consents
    assert grant["timestamp"] < withdraw["timestamp"] and withdraw["timestamp"] == case["withdrawn_at"]
    assert grant["timestamp"][:10] == "2024-05-05", "granted on day 1"
    before = [m for m in msgs if m["timestamp"] < withdraw["timestamp"] and m.get("event") != CONSENT]
    after = [m for m in msgs if m["timestamp"] > withdraw["timestamp"]]
    assert len(before) >= 5 and len(after) >= 5
    assert all(m["context"]["location"]["country"] == "FR" for m in msgs)


def test_anon_consent_then_login(manifest, clean_messages):
    case = manifest["cases"]["anon_consent_then_login"]
    msgs = _of(clean_messages, case)
    (consent,) = _consents(msgs)
    assert consent["userId"] is None and consent["anonymousId"] in case["anonymous_ids"]
    assert consent["context"]["consent"]["categoryPreferences"]["personalization"] is True
    identify = next(m for m in msgs if m["type"] == "identify")
    assert identify["userId"] == case["user_id"] and identify["anonymousId"] == consent["anonymousId"]
    assert identify["traits"]["email"] == case["email"]
    assert all(m["userId"] is None for m in msgs if m["timestamp"] < identify["timestamp"])
    later = [m for m in msgs if m["timestamp"] > identify["timestamp"]]
    assert later and all(m["userId"] == case["user_id"] for m in later)


def test_gpc_user(manifest, clean_messages):
    case = manifest["cases"]["gpc_user"]
    msgs = _of(clean_messages, case)
    assert len(msgs) >= 8 and all(m["context"]["gpc"] is True for m in msgs)
    assert all(m["context"]["location"]["region"] == "US-CA" for m in msgs)
    assert _consents(msgs)[0]["context"]["consent"]["categoryPreferences"]["personalization"] is True


def test_opt_out_sale_and_erasures(manifest, clean_messages, requests, crm_rows):
    cases = manifest["cases"]
    opt = cases["opt_out_sale_user"]
    (req,) = [r for r in requests if r["request_id"] == opt["request_id"]]
    assert req["type"] == "opt_out_sale" and req["user_id"] == opt["user_id"] and req["jurisdiction"] == "US-CA"
    assert all(m["context"]["location"]["region"] == "US-CA" for m in _of(clean_messages, opt))

    erased = cases["erased_user"]
    (req,) = [r for r in requests if r["request_id"] == erased["request_id"]]
    assert req["type"] == "erasure" and req["email"] == erased["email"] and "user_id" not in req
    assert any(r["user_id"] == erased["user_id"] and r["email"] == erased["email"] for r in crm_rows)
    msgs = _of(clean_messages, erased)
    assert len(msgs) >= 5 and any(m["type"] == "identify" and m["traits"]["email"] == erased["email"] for m in msgs)

    by_id = cases["erased_by_id"]
    (req,) = [r for r in requests if r["request_id"] == by_id["request_id"]]
    assert req["type"] == "erasure" and req["user_id"] == by_id["user_id"] and "email" not in req
    assert any(r["user_id"] == by_id["user_id"] for r in crm_rows) and _of(clean_messages, by_id)


def test_junk_anonymous_id(manifest, clean_messages):
    case = manifest["cases"]["junk_anonymous_id"]
    (junk,) = case["anonymous_ids"]
    assert junk == "00000000-0000-0000-0000-000000000000"
    linked = {m["userId"] for m in clean_messages if m["type"] == "identify" and m["anonymousId"] == junk}
    assert len(linked) >= 30 and linked == set(case["linked_user_ids"])
