"""The segment-size anomaly check reads the sizes through the reader the warehouse layer hands in (the check
library sits below the warehouse in the import contract), and evaluates them against the previous build."""

from __future__ import annotations

import dagster as dg

from personalization_assets.checks.anomalies import SEGMENT_CHECK, SEGMENT_SIZES, build_segment_size_check


def test_the_check_reads_the_sizes_through_the_given_reader(tmp_path):
    seen = []

    def read_sizes(snowflake):
        seen.append(snowflake)
        return [("rfm", "champions", 120), ("rfm", "loyal", 80)]

    @dg.asset(key=SEGMENT_SIZES)
    def segment_sizes() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    check = build_segment_size_check(read_sizes)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([segment_sizes, check], instance=instance,
                                resources={"snowflake": dg.ResourceDefinition.hardcoded_resource("the-warehouse")})
    evaluation = result.get_asset_check_evaluations()[0]
    assert evaluation.check_name == SEGMENT_CHECK and evaluation.passed
    assert evaluation.metadata["sizes"].value == {"rfm/champions": 120, "rfm/loyal": 80}
    assert seen == ["the-warehouse"]
