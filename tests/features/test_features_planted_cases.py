"""End to end on generated data: landing -> raw -> privacy (the real pipeline) -> features.

The generator plants subjects with known consent stories (tests/helpers.generate, manifest `cases`);
the feature tables must tell the same stories.
"""

import dagster as dg
import pyarrow.parquet as pq
import pytest

from personalization_assets.features import build_feature_assets
from personalization_assets.privacy.pseudonymize import Pseudonymizer
from personalization_assets.resources import DuckDBEngine
from personalization_assets.resources.storage import LakeStorage
from tests.helpers import PIPELINE, defs_for_env, generate, materialize, partition_range

pytestmark = pytest.mark.integration


def test_planted_consent_stories_in_features(data_dir, landing):
    manifest = generate(landing, users=300, events=20_000)
    assert materialize(defs_for_env(), PIPELINE, partitions=partition_range(manifest)).success

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
