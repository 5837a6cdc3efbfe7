"""The append-only logs are write-once in production: S3 Object Lock (COMPLIANCE) on a ledger bucket of their own.

Everything runs against a moto S3 server on 127.0.0.1 with a bucket created with Object Lock enabled (what
infra/terraform's storage module creates). What moto 5.2 enforces, and so what these tests can prove:
deleting a locked version (`DeleteObject` / `DeleteObjects` with a VersionId) is AccessDenied, and a PUT with
`If-None-Match: *` on an existing key is PreconditionFailed. A PUT *without* the condition creates a new
version on top (S3 behaves the same): the locked version stays intact and readable by its VersionId, and the
hash chain reports the replaced segment. (moto does not refuse shortening a COMPLIANCE retention, which real S3
does; that part is S3's own guarantee and is not asserted here.)

The secrets test reads the production secrets from moto's Secrets Manager through dagster-aws.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import uuid

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from personalization_assets.privacy.assets import ledger_log
from personalization_assets.core.audit import audit_log
from personalization_assets.core.hash_chain import HashChainedLog
from personalization_assets.core.policies import get_policy
from personalization_assets.resources import PlatformConfig
from personalization_assets.core.storage import ImmutableStoreError, LakeStorage
from personalization_assets.settings import ConfigError, load_settings

LOGS = ("consent_ledger", "access_audit_log", "erasure_log", "retention_log", "key_rotation_log")


def _client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.fixture
def ledger_bucket(moto_server):
    bucket = f"ledger-{uuid.uuid4().hex[:12]}"
    _client(moto_server).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


def _lake(endpoint, lake_bucket, ledger_bucket, mode="COMPLIANCE", days=2190) -> LakeStorage:
    return LakeStorage(url=f"s3://{lake_bucket}/lake", logs_url=f"s3://{ledger_bucket}/logs", logs_object_lock_mode=mode,
                       logs_object_lock_days=days, s3_endpoint_url=endpoint, aws_region="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")


def _rows(schema: pa.Schema, n: int, tag: str) -> list[dict]:
    now = dt.datetime.now(dt.timezone.utc)
    out = []
    for i in range(n):
        row = {}
        for f in schema:
            if f.name in ("seq", "prev_hash", "row_hash"):
                continue
            row[f.name] = now if pa.types.is_timestamp(f.type) else (i if pa.types.is_integer(f.type) else f"{tag}-{f.name}-{i}")
        out.append(row)
    return out


def _versions(client, bucket, prefix=""):
    listing = client.list_object_versions(Bucket=bucket, Prefix=prefix)
    return listing.get("Versions", []), listing.get("DeleteMarkers", [])


def test_appends_go_on_while_locked_segments_cannot_be_overwritten_or_deleted(moto_server, ledger_bucket, tmp_path):
    client = _client(moto_server)
    lake_bucket = f"lake-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=lake_bucket)
    lake = _lake(moto_server, lake_bucket, ledger_bucket)
    platform = PlatformConfig(data_dir=str(tmp_path))
    ledger, audit = ledger_log(lake, platform), audit_log(lake, None)
    assert ledger.lake.is_write_once and ledger.lake.url == f"s3://{ledger_bucket}/logs"

    started = dt.datetime.now(dt.timezone.utc)
    for round_ in range(3):  # appends go on, repeatedly, on both logs
        assert ledger.append(_rows(ledger.schema, 4, f"l{round_}"))[0] == 4
        assert audit.append(_rows(audit.schema, 2, f"a{round_}"))[0] == 2
    assert ledger.verify().ok and ledger.verify().rows == 12 and ledger.verify().segments == 3
    assert audit.verify().ok and audit.verify().rows == 6

    # every segment sits in the ledger bucket (none in the lake), once, locked in COMPLIANCE mode for 2190 days
    versions, markers = _versions(client, ledger_bucket)
    assert len(versions) == 6 and not markers and len({v["Key"] for v in versions}) == 6
    # the lake holds no segment: only each log's head hint (coordination, like the writer lease: it is rewritten on
    # every append, which a write-once bucket refuses, and it is checked against the segments before any use)
    in_lake = sorted(o["Key"] for o in client.list_objects_v2(Bucket=lake_bucket).get("Contents", []))
    assert in_lake == ["lake/privacy/access_audit_log/_head.json", "lake/privacy/consent_ledger/_head.json"], in_lake
    assert ledger.head()[0] == 12 and ledger._hinted_head() == ledger._listed_head()
    for v in versions:
        head = client.head_object(Bucket=ledger_bucket, Key=v["Key"], VersionId=v["VersionId"])
        assert head["ObjectLockMode"] == "COMPLIANCE"
        until = head["ObjectLockRetainUntilDate"].astimezone(dt.timezone.utc)
        assert started + dt.timedelta(days=2190) - dt.timedelta(minutes=5) <= until <= started + dt.timedelta(days=2190, minutes=5)

    first = sorted(v["Key"] for v in versions if "/consent_ledger/" in v["Key"])[0]
    version = next(v["VersionId"] for v in versions if v["Key"] == first)
    original = client.get_object(Bucket=ledger_bucket, Key=first)["Body"].read()

    # deleting the locked version is refused, singly and in a batch
    with pytest.raises(ClientError) as exc:
        client.delete_object(Bucket=ledger_bucket, Key=first, VersionId=version)
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        client.delete_object(Bucket=ledger_bucket, Key=first, VersionId=version, BypassGovernanceRetention=True)
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    batch = client.delete_objects(Bucket=ledger_bucket, Delete={"Objects": [{"Key": first, "VersionId": version}]})
    assert [e["Code"] for e in batch.get("Errors", [])] == ["AccessDenied"] and not batch.get("Deleted")
    # the writer's own conditional PUT cannot replace a segment
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=ledger_bucket, Key=first, Body=b"forged", IfNoneMatch="*")
    assert exc.value.response["Error"]["Code"] == "PreconditionFailed"
    assert ledger.lake.create_exclusive(first.split("/", 1)[1], b"forged") is False

    # the platform's code refuses to rewrite or delete anything in the log store
    store = ledger.lake
    table = ledger.read_all()
    with pytest.raises(ImmutableStoreError, match="write-once"):
        store.write_table("privacy", "consent_ledger", table, partition={"segment": "000000000001"})
    with pytest.raises(ImmutableStoreError, match="write-once"):
        store.delete_partition("privacy", "consent_ledger", {"segment": "000000000001"})
    with pytest.raises(ImmutableStoreError):
        store.write_bytes(first.split("/", 1)[1], b"forged")
    with pytest.raises(ImmutableStoreError):
        store.delete("privacy/consent_ledger")

    # an unconditional PUT stacks a new version on top: the locked original is untouched and still readable,
    # and the chain reports the forged segment
    buf = io.BytesIO()
    forged = table.slice(0, 4).set_column(table.schema.get_field_index("decision"), "decision", pa.array(["granted"] * 4))
    pq.write_table(forged, buf)
    client.put_object(Bucket=ledger_bucket, Key=first, Body=buf.getvalue())
    assert client.get_object(Bucket=ledger_bucket, Key=first, VersionId=version)["Body"].read() == original
    status = ledger.verify()
    assert not status.ok and status.first_bad_seq == 1
    versions, _ = _versions(client, ledger_bucket, first)
    assert len(versions) == 2  # nothing was lost: the evidence is recoverable from the locked version

    # the chain goes on after the failed attempts (appends are never blocked by the lock)
    assert audit.append(_rows(audit.schema, 1, "after"))[0] == 1 and audit.verify().ok


def test_writer_refuses_a_ledger_bucket_without_object_lock(moto_server):
    client = _client(moto_server)
    plain = f"plain-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=plain)
    log = audit_log(_lake(moto_server, plain, plain), None)
    with pytest.raises(ImmutableStoreError, match="PERSONALIZATION_LEDGER_URL"):
        log.append(_rows(log.schema, 1, "x"))
    assert not client.list_objects_v2(Bucket=plain).get("Contents")


def test_a_local_store_cannot_claim_object_lock(tmp_path):
    lake = LakeStorage(url=str(tmp_path / "lake"), logs_object_lock_mode="COMPLIANCE", logs_object_lock_days=2190)
    with pytest.raises(ValueError, match="needs an s3:// store"):
        lake.log_store()


PROD = {
    "PERSONALIZATION_ENV": "prod",
    "PERSONALIZATION_LANDING_URL": "s3://landing-bucket/cdp",
    "PERSONALIZATION_LAKE_URL": "s3://lake-bucket/lake",
    "PERSONALIZATION_LEDGER_URL": "s3://ledger-bucket/",
    "PERSONALIZATION_PSEUDONYM_KEYS": json.dumps({"1": "ab" * 32}),
    **{k: "x" for k in ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "SNOWFLAKE_PASSWORD", "SNOWFLAKE_ROLE", "SNOWFLAKE_WAREHOUSE",
                        "SNOWFLAKE_DATABASE")},
}


def test_prod_settings_lock_the_logs_for_the_policy_retention():
    s = load_settings(PROD)
    tier = get_policy().ledger_tier
    assert tier is not None and tier.bucket == "ledger" and tier.object_lock == "COMPLIANCE"
    assert (s.ledger_url, s.ledger_object_lock, s.ledger_retention_days) == ("s3://ledger-bucket/", "COMPLIANCE", tier.days)
    assert load_settings({**PROD, "PERSONALIZATION_LEDGER_OBJECT_LOCK": "governance"}).ledger_object_lock == "GOVERNANCE"
    assert load_settings({**PROD, "PERSONALIZATION_LEDGER_RETENTION_DAYS": "3650"}).ledger_retention_days == 3650


@pytest.mark.parametrize(
    "change, message",
    [
        ({"PERSONALIZATION_LEDGER_URL": ""}, "PERSONALIZATION_LEDGER_URL is not set"),
        ({"PERSONALIZATION_LEDGER_URL": "/var/ledger"}, "PERSONALIZATION_LEDGER_URL="),
        ({"PERSONALIZATION_LEDGER_OBJECT_LOCK": "none"}, "PERSONALIZATION_LEDGER_OBJECT_LOCK=none is refused in prod"),
        ({"PERSONALIZATION_LEDGER_OBJECT_LOCK": "forever"}, "PERSONALIZATION_LEDGER_OBJECT_LOCK='FOREVER' is unknown"),
        ({"PERSONALIZATION_LEDGER_RETENTION_DAYS": "30"}, "shorter than the policy"),
        ({"PERSONALIZATION_LEDGER_RETENTION_DAYS": "40000"}, "exceeds S3's maximum"),
        ({"PERSONALIZATION_LEDGER_RETENTION_DAYS": "long"}, "is not an integer"),
    ],
)
def test_ledger_misconfiguration_names_the_setting_and_the_fix(change, message):
    with pytest.raises(ConfigError) as exc:
        load_settings({**PROD, **change})
    assert message in str(exc.value) and "Fix" in str(exc.value)


def test_local_object_lock_needs_an_s3_ledger(tmp_path):
    with pytest.raises(ConfigError, match="needs an S3 ledger.*PERSONALIZATION_LEDGER_URL"):
        load_settings({"PERSONALIZATION_DATA_DIR": str(tmp_path), "PERSONALIZATION_LEDGER_OBJECT_LOCK": "COMPLIANCE"})
    local = load_settings({"PERSONALIZATION_DATA_DIR": str(tmp_path)})
    assert local.ledger_url is None and local.ledger_object_lock is None  # locally the logs stay in the lake


def test_pipeline_erasure_rotation_and_retention_never_rewrite_the_logs(s3_env, ledger_bucket, tmp_path, monkeypatch):
    """The whole privacy layer on S3 with the logs in an Object Lock bucket: every run appends, none rewrites.

    Consent ledger and audit log are written by ingestion, then erasure, key rotation and retention run (each
    rewrites or deletes lake data, and each appends to its own log). Afterwards every key in the ledger bucket
    has exactly one version, no delete marker, and is locked; every chain verifies."""
    import secrets as pysecrets

    import pyarrow.fs as pafs

    from personalization_assets.cli import landing_partition_keys
    from personalization_assets.generator import generate_landing_zone
    from tests.helpers import PIPELINE, defs_for_env, materialize, materializations

    monkeypatch.setenv("PERSONALIZATION_LEDGER_URL", f"s3://{ledger_bucket}/ledger")
    monkeypatch.setenv("PERSONALIZATION_LEDGER_OBJECT_LOCK", "COMPLIANCE")
    v1 = pysecrets.token_hex(32)
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps({"1": v1}))
    s3 = pafs.S3FileSystem(endpoint_override=s3_env["endpoint"].split("://", 1)[1], scheme="http", access_key="testing",
                           secret_key="testing", region="us-east-1")
    # 40 days old: the retention run deletes the raw partitions (30-day tier) and logs it
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)).date()
    generate_landing_zone(s3, f"{s3_env['bucket']}/landing", users=60, events=1500, seed=5, bad_fraction=0.0, end=old, days=1)
    defs = defs_for_env()
    keys = landing_partition_keys(defs, None)
    materialize(defs, PIPELINE.replace("pipeline", "group:raw or group:privacy or group:consented"), (keys[0], keys[-1]))
    lake: LakeStorage = defs.resources["lake"]
    store = lake.log_store()
    assert store.url == f"s3://{ledger_bucket}/ledger" and store.is_write_once

    erasure = materializations(materialize(defs, "key:privacy/erasure_log"))["privacy/erasure_log"]
    assert erasure["requests"] > 0  # the generated landing zone plants erasure requests
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps({"1": v1, "2": pysecrets.token_hex(32)}))
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION", "2")
    rotated = defs_for_env()
    rotation = materializations(materialize(rotated, "key:privacy/key_rotation_log"))["privacy/key_rotation_log"]
    assert rotation["values_rekeyed"] > 0
    retention = materializations(materialize(rotated, "key:privacy/retention_log"))["privacy/retention_log"]
    assert retention["partitions_removed"] > 0

    client = s3_env["client"]
    versions, markers = _versions(client, ledger_bucket)
    assert not markers, "a run deleted a log segment"
    by_key: dict[str, int] = {}
    for v in versions:
        by_key[v["Key"]] = by_key.get(v["Key"], 0) + 1
    assert by_key and all(n == 1 for n in by_key.values()), "a run overwrote a log segment"
    logs_seen = {k.split("/")[2] for k in by_key}
    assert set(LOGS) <= logs_seen, logs_seen
    for key in by_key:
        assert client.head_object(Bucket=ledger_bucket, Key=key)["ObjectLockMode"] == "COMPLIANCE"
    lake_keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_env["bucket"], Prefix="lake/privacy/").get("Contents", [])]
    # no segment of a log in the lake: only the logs' head hints (coordination, checked against the segments before use)
    in_lake = [k for k in lake_keys if any(f"/privacy/{name}/" in k for name in LOGS)]
    assert in_lake and all(k.endswith("/_head.json") for k in in_lake), f"a log was written into the lake: {in_lake}"
    from personalization_assets.privacy import consent as consent_lib
    from personalization_assets.core.audit import AUDIT_SCHEMA
    from personalization_assets.privacy.erasure import ERASURE_LOG_SCHEMA
    from personalization_assets.privacy.operations import RETENTION_SCHEMA, ROTATION_SCHEMA

    for name, schema in (("consent_ledger", consent_lib.LEDGER_SCHEMA), ("access_audit_log", AUDIT_SCHEMA),
                         ("erasure_log", ERASURE_LOG_SCHEMA), ("retention_log", RETENTION_SCHEMA),
                         ("key_rotation_log", ROTATION_SCHEMA)):
        status = HashChainedLog(lake=store, name=name, schema=schema).verify()
        assert status.ok and status.rows > 0, (name, status)
    # the ledger kept its v1 pseudonyms (rotation skips the immutable logs)
    ledger = HashChainedLog(lake=store, name="consent_ledger", schema=consent_lib.LEDGER_SCHEMA).read_all(["identifier_pseudonym"])
    assert all(v.startswith("v1:") for v in ledger["identifier_pseudonym"].to_pylist())


# ----------------------------------------------------------------------------------------------
# Secrets Manager through dagster-aws (moto's Secrets Manager on loopback)
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def secrets_env(moto_server, clean_env):
    """A moto Secrets Manager holding the two production secrets, and a prod environment WITHOUT them."""
    monkeypatch = clean_env
    for k, v in {**PROD, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server}.items():
        monkeypatch.setenv(k, v)
    # the secrets the code must fetch: empty now (monkeypatch restores the original state afterwards)
    for k in ("PERSONALIZATION_PSEUDONYM_KEYS", "SNOWFLAKE_USER", "SNOWFLAKE_PASSWORD"):
        monkeypatch.setenv(k, "")
    sm = boto3.client("secretsmanager", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    tag = uuid.uuid4().hex[:8]
    keys = json.dumps({"1": "cd" * 32, "2": "ef" * 32})
    snowflake = {"SNOWFLAKE_USER": "PIPELINE_SVC", "SNOWFLAKE_PASSWORD": f"pat-{tag}-not-in-logs"}
    arns = {
        "keys": sm.create_secret(Name=f"prod-{tag}/pseudonym-keys", SecretString=keys)["ARN"],
        "snowflake": sm.create_secret(Name=f"prod-{tag}/snowflake", SecretString=json.dumps(snowflake))["ARN"],
        "plain": sm.create_secret(Name=f"prod-{tag}/plain", SecretString="just-a-string")["ARN"],
    }
    return {"arns": arns, "keys": keys, "snowflake": snowflake}


def test_prod_secrets_come_from_secrets_manager_through_dagster_aws(secrets_env, monkeypatch):
    from personalization_assets.resources import build_resources

    arns = secrets_env["arns"]
    with pytest.raises(ConfigError, match="SNOWFLAKE_USER, SNOWFLAKE_PASSWORD not set.*PERSONALIZATION_SECRETS_ARNS"):
        load_settings()  # without the Secrets Manager path, prod has no credentials
    monkeypatch.setenv("PERSONALIZATION_SECRETS_ARNS", f"PERSONALIZATION_PSEUDONYM_KEYS={arns['keys']}, {arns['snowflake']}")
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION", "2")
    settings = load_settings()
    assert settings.secrets_from_aws == ("PERSONALIZATION_PSEUDONYM_KEYS", "SNOWFLAKE_PASSWORD", "SNOWFLAKE_USER")
    assert os.environ["PERSONALIZATION_PSEUDONYM_KEYS"] == secrets_env["keys"]
    assert os.environ["SNOWFLAKE_PASSWORD"] == secrets_env["snowflake"]["SNOWFLAKE_PASSWORD"]
    # the resources read them through dg.EnvVar, as with External Secrets: the pseudonymizer uses key v2
    import dagster as dg

    from personalization_assets.core.pseudonymize import Pseudonymizer

    expected = Pseudonymizer(keys_json=secrets_env["keys"], active_version="2")
    from personalization_assets.resources import pseudonymizer

    assert build_resources(settings)["pseudonymizer"].lake is not None  # the resources check the keys against the lake
    # the keys alone here (this test's lake bucket does not exist): the resource as build_resources makes it, lake aside
    with dg.build_resources({"pz": pseudonymizer(settings)}) as resources:
        assert resources.pz.chain().active == "2"
        got = resources.pz.pseudonymize_values(["user-42", None], "id")
    assert got == expected.pseudonymize_values(["user-42", None], "id") and got[0].startswith("v2:")
    # a second load in the same process (run worker reloading the definitions) is consistent, not a conflict
    assert load_settings().secrets_from_aws == settings.secrets_from_aws


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{plain}", "is not a JSON object of environment variables"),
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:missing-AbCdEf", "cannot describe the listed secrets"),
        ("not-an-arn", "is not a Secrets Manager ARN"),
        ("lower_case={keys}", "is not an environment variable name"),
        (" , ", "lists no ARN"),
    ],
)
def test_secrets_manager_errors_name_the_setting_never_the_value(secrets_env, monkeypatch, entry, message):
    monkeypatch.setenv("PERSONALIZATION_SECRETS_ARNS", entry.format(**secrets_env["arns"]))
    with pytest.raises(ConfigError) as exc:
        load_settings()
    text = str(exc.value)
    assert message in text and "PERSONALIZATION_SECRETS_ARNS" in text and "Fix" in text
    assert "just-a-string" not in text and secrets_env["keys"] not in text


def test_a_secret_also_set_differently_in_the_environment_is_refused(secrets_env, monkeypatch):
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "another-value")
    monkeypatch.setenv("PERSONALIZATION_SECRETS_ARNS", secrets_env["arns"]["snowflake"])
    with pytest.raises(ConfigError, match="SNOWFLAKE_PASSWORD is set in the environment and also by PERSONALIZATION_SECRETS_ARNS") as exc:
        load_settings()
    assert secrets_env["snowflake"]["SNOWFLAKE_PASSWORD"] not in str(exc.value) and "another-value" not in str(exc.value)
