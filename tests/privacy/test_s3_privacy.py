"""The privacy layer on S3 (a moto server on 127.0.0.1 as landing and lake): the same code path, and no
raw identifier in any output outside the raw tier."""

from __future__ import annotations

import datetime as dt

from personalization_assets.cli import landing_partition_keys
from tests.helpers import check_results, defs_for_env, materialize
from tests.privacy.test_end_to_end import scan_for_identifiers


def test_identifier_scan_on_s3(s3_env, tmp_path):
    import pyarrow.fs as pafs

    from personalization_assets.generator import generate_landing_zone

    # the same landing zone written locally (to collect the identifiers) and to S3 (to be processed)
    local = tmp_path / "landing"
    kwargs = dict(users=100, events=3000, seed=21, bad_fraction=0.01, end=dt.date(2026, 11, 28), days=1)
    generate_landing_zone(pafs.LocalFileSystem(), str(local), **kwargs)
    s3 = pafs.S3FileSystem(endpoint_override=s3_env["endpoint"].split("://", 1)[1], scheme="http", access_key="testing",
                           secret_key="testing", region="us-east-1")
    generate_landing_zone(s3, f"{s3_env['bucket']}/landing", **kwargs)
    defs = defs_for_env()
    assert defs.resources["lake"].is_s3 and defs.resources["landing"].is_s3
    keys = landing_partition_keys(defs, None)
    result = materialize(defs, "group:raw or group:privacy or group:consented or group:features", (keys[0], keys[-1]))
    checks = check_results(result)
    assert checks["raw/events:reconciliation"] and checks["consented/events:pandera_ConsentedEvent"]
    objects = s3_env["client"].list_objects_v2(Bucket=s3_env["bucket"], Prefix="lake/features/")["Contents"]
    assert any(o["Key"].endswith("user_rfm/data.parquet") for o in objects)
    scan_for_identifiers(defs.resources["lake"], local)
