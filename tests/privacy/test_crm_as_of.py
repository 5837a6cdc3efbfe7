"""consented/crm_profiles checks consent at the same deterministic cutoff as the features: the end of the
last complete landing hour (the start of the latest raw/events hour), not the wall clock; run config
`as_of` overrides it."""

from __future__ import annotations

import json

import dagster as dg

from tests.helpers import check_results, defs_for_env, materialize, materializations
from tests.privacy.test_consented_incremental import _grant, _msg, _pz, KEY_V1

SELECTION = " or ".join(f"key:{k}" for k in (
    "raw/events", "raw/crm_profiles", "raw/privacy_requests", "privacy/identity_links", "privacy/consent_ledger",
    "privacy/consent_state", "privacy/suppression_list", "consented/crm_profiles"))
CRM = "consented/crm_profiles"


def _landing(landing):
    files = {13: [_grant("g-early", 13, 5, "u-early"), _msg("m-early", 13, 6, user="u-early")],
             # granted at 14:30: in force now, not at the cutoff 14:00 (hour 14 is the latest, still open, hour)
             14: [_grant("g-later", 14, 30, "u-later"), _msg("m-later", 14, 31, user="u-later")]}
    for hour, msgs in files.items():
        folder = landing / "events" / "date=2026-11-28" / f"hour={hour}"
        folder.mkdir(parents=True)
        (folder / "a.jsonl").write_text("".join(json.dumps(m) + "\n" for m in msgs))
    (landing / "crm").mkdir()
    (landing / "crm" / "export.csv").write_text(
        "user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n"
        + "".join(f"{u},{u}@x.example,,A,B,DE,1990-01-02,2025-01-01T00:00:00Z,free,2025-01-01T00:00:00Z\n" for u in ("u-early", "u-later")))


def _users(lake) -> set[str]:
    return set(lake.read_table("consented", "crm_profiles")["user_pseudonym"].to_pylist())


def test_crm_consent_is_checked_at_the_last_complete_landing_hour(data_dir, monkeypatch):
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps({"1": KEY_V1}))
    _landing(data_dir / "landing")
    defs = defs_for_env()
    result = materialize(defs, SELECTION, ("2026-11-28-13:00", "2026-11-28-14:00"))
    assert all(check_results(result).values())
    md = materializations(result)[CRM]
    assert md["as_of"] == "2026-11-28T14:00:00+00:00" and md["as_of_source"] == "latest_raw_hour_start"
    lake = defs.resources["lake"]
    assert _users(lake) == {_pz("u-early")}, "u-later's consent starts after the cutoff"
    first = sorted(map(repr, lake.read_table("consented", "crm_profiles").to_pylist()))
    materialize(defs, f"key:{CRM}")
    assert sorted(map(repr, lake.read_table("consented", "crm_profiles").to_pylist())) == first, "same landing, same table"

    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.ephemeral() as instance:
        job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(["consented", "crm_profiles"])],
                               run_config={"ops": {"consented__crm_profiles": {"config": {"as_of": "2026-11-28T15:00:00Z"}}}})
    assert _users(lake) == {_pz("u-early"), _pz("u-later")}, "an explicit as_of wins"
