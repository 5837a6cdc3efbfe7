"""infra/helm/values.yaml has what the dagster/dagster chart (1.13) needs, agrees with Terraform and
with infra/dagster/dagster.prod.yaml, and renders into a complete environment file."""

from __future__ import annotations

import json

import pytest
import yaml

from .conftest import INFRA, TERRAFORM, load_module, load_script, module_calls

VALUES = INFRA / "helm" / "values.yaml"
PROD_YAML = INFRA / "dagster" / "dagster.prod.yaml"

SETTINGS = {
    "image_repository": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/personalization/dagster-user-code",
    "aws_region": "eu-west-1",
    "landing_url": "s3://personalization-prod-landing-123456789012/",
    "lake_url": "s3://personalization-prod-lake-123456789012/",
    "ledger_url": "s3://personalization-prod-ledger-123456789012/",
    "postgres_host": "personalization-prod-dagster.abc.eu-west-1.rds.amazonaws.com",
    "postgres_port": 5432,
    "postgres_db_name": "dagster",
    "postgres_username": "dagster",
    "run_role_arn": "arn:aws:iam::123456789012:role/personalization-prod-dagster-run",
    "run_service_account_name": "personalization-runs",
    "snowflake_account": "ACME-PERSONALIZATION",
    "snowflake_role": "PERSONALIZATION_PIPELINE",
    "snowflake_warehouse": "PERSONALIZATION_PIPELINE_WH",
    "snowflake_database": "PERSONALIZATION",
    "snowflake_schema": "CONSENTED",
    # the event collector (infra/helm/collector.yaml)
    "collector_role_arn": "arn:aws:iam::123456789012:role/personalization-prod-collector",
    "collector_service_account_name": "personalization-collector",
    "vpc_cidr": "10.40.0.0/16",
}


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def prod() -> dict:
    return yaml.safe_load(PROD_YAML.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def renderer():
    return load_script("render_helm_values")


def _deployment(values: dict) -> dict:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert len(deployments) == 1
    return deployments[0]


def test_run_launcher_is_k8s_with_one_pod_per_run_on_spot(values):
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    config = launcher["config"]["k8sRunLauncher"]
    pod_spec = config["runK8sConfig"]["podSpecConfig"]
    assert pod_spec["nodeSelector"] == {"personalization.io/pool": "runs"}
    assert {
        "key": "personalization.io/runs",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in pod_spec["tolerations"]
    assert config["runK8sConfig"]["jobSpecConfig"]["backoffLimit"] == 0, (
        "Dagster retries runs; Kubernetes must not"
    )
    resources = config["resources"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"], (
        "run pods need guaranteed memory"
    )


def test_external_postgres(values):
    pg = values["postgresql"]
    assert pg["enabled"] is False
    assert pg["postgresqlHost"], "external host required"
    assert pg["postgresqlScheme"] == "postgresql+psycopg2"
    assert pg["postgresqlParams"]["sslmode"] in ("require", "verify-ca", "verify-full")
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"


def test_queued_run_coordinator_with_limits(values):
    rc = values["dagsterDaemon"]["runCoordinator"]
    assert rc["enabled"] is True
    assert rc["type"] == "QueuedRunCoordinator"
    queued = rc["config"]["queuedRunCoordinator"]
    assert (
        isinstance(queued["maxConcurrentRuns"], int) and queued["maxConcurrentRuns"] > 0
    )
    limits = queued["tagConcurrencyLimits"]
    assert limits and all({"key", "limit"} <= set(limit) for limit in limits)
    backfill = [limit for limit in limits if limit["key"] == "dagster/backfill"]
    assert backfill and backfill[0]["limit"] < queued["maxConcurrentRuns"], (
        "backfills must leave room for other runs"
    )
    assert values["concurrency"]["enabled"] is False, (
        "run limits live in the run coordinator, not in `concurrency`"
    )


def test_user_deployment(values):
    user = values["dagster-user-deployments"]
    assert user["enabled"] is True and user["enableSubchart"] is True
    deployment = _deployment(values)
    assert deployment["dagsterApiGrpcArgs"] == [
        "-m",
        "personalization_assets.definitions",
    ]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert deployment["resources"] == {}, (
        "resources here would override the run pods' resources"
    )
    env = deployment["env"]
    required = {
        "PERSONALIZATION_ENV",
        "PERSONALIZATION_LANDING_URL",
        "PERSONALIZATION_LAKE_URL",
        "AWS_REGION",
        "PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION",
        "SNOWFLAKE_ACCOUNT",
        "SNOWFLAKE_ROLE",
        "SNOWFLAKE_WAREHOUSE",
        "SNOWFLAKE_DATABASE",
        "SNOWFLAKE_SCHEMA",
        "PERSONALIZATION_ALERT_WEBHOOK_URL",
        "PROMETHEUS_PUSHGATEWAY_URL",
        "PERSONALIZATION_DUCKDB_MEMORY_LIMIT",
    }
    assert required <= set(env), f"missing env: {sorted(required - set(env))}"
    assert env["PERSONALIZATION_ENV"] == "prod"
    secrets_in_env = {
        "PERSONALIZATION_PSEUDONYM_KEYS",
        "SNOWFLAKE_PASSWORD",
        "SNOWFLAKE_USER",
        "AWS_SECRET_ACCESS_KEY",
    }
    assert not secrets_in_env & set(env), (
        "secrets must come from envSecrets, never from values"
    )
    assert {s["name"] for s in deployment["envSecrets"]} == {
        "personalization-pseudonym-keys",
        "personalization-snowflake",
    }


def test_duckdb_limit_fits_the_run_pod(values):
    def gib(quantity: str) -> float:
        units = {"Gi": 1.0, "GB": 1e9 / 2**30, "Mi": 1 / 1024, "MB": 1e6 / 2**30}
        for suffix, factor in units.items():
            if quantity.endswith(suffix):
                return float(quantity[: -len(suffix)]) * factor
        raise AssertionError(f"unknown unit in {quantity}")

    limit = gib(
        values["runLauncher"]["config"]["k8sRunLauncher"]["resources"]["limits"][
            "memory"
        ]
    )
    duckdb = gib(_deployment(values)["env"]["PERSONALIZATION_DUCKDB_MEMORY_LIMIT"])
    assert duckdb <= 0.75 * limit, (
        f"DuckDB limit {duckdb:.1f} GiB leaves too little of the {limit:.1f} GiB pod"
    )


def test_no_secret_values_and_telemetry_off(values):
    assert values["telemetry"]["enabled"] is False
    text = VALUES.read_text(encoding="utf-8").lower()
    assert 'postgresqlpassword: ""' in text
    for forbidden in (
        "aws_secret_access_key:",
        "snowflake_password:",
        "begin private key",
    ):
        assert forbidden not in text


def test_irsa_service_account_matches_terraform(values):
    sa = values["dagster-user-deployments"]["serviceAccount"]
    assert "eks.amazonaws.com/role-arn" in sa["annotations"]
    env = load_module(TERRAFORM / "environments" / "example")
    locals_ = {k: v for block in env.get("locals", []) for k, v in block.items()}
    assert locals_["run_service_account"] == sa["name"]
    assert locals_["namespace"] == "dagster"
    iam = module_calls(env)["iam"]
    assert iam["run_service_account_name"] == "${local.run_service_account}"


def test_node_pools_match_terraform_node_groups(values):
    eks = load_module(TERRAFORM / "modules" / "eks")
    locals_ = {k: v for block in eks.get("locals", []) for k, v in block.items()}
    pool_key, taint_key = locals_["pool_label_key"], locals_["run_taint_key"]
    pod_spec = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"][
        "podSpecConfig"
    ]
    assert pod_spec["nodeSelector"] == {pool_key: "runs"}
    assert pod_spec["tolerations"][0]["key"] == taint_key
    for component in (
        values["dagsterWebserver"],
        values["dagsterDaemon"],
        _deployment(values),
    ):
        assert component["nodeSelector"] == {pool_key: "system"}


def test_webserver_port_matches_nodeport_service_and_alb(values):
    service = yaml.safe_load((INFRA / "helm" / "webserver-service.yaml").read_text())
    port = values["dagsterWebserver"]["service"]["port"]
    assert service["spec"]["ports"][0]["targetPort"] == port
    assert values["dagsterWebserver"]["readinessProbe"]["httpGet"]["port"] == port
    env = load_module(TERRAFORM / "environments" / "example")
    locals_ = {k: v for block in env.get("locals", []) for k, v in block.items()}
    assert service["spec"]["ports"][0]["nodePort"] == locals_["webserver_node_port"]
    assert service["spec"]["selector"]["component"] == "dagster-webserver"


def test_helm_and_prod_instance_agree(values, prod):
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    rc = prod["run_coordinator"]["config"]
    assert rc["max_concurrent_runs"] == queued["maxConcurrentRuns"]
    assert rc["tag_concurrency_limits"] == queued["tagConcurrencyLimits"]
    assert rc["dequeue_interval_seconds"] == queued["dequeueIntervalSeconds"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] is prod["run_monitoring"]["enabled"] is True
    assert (
        monitoring["startTimeoutSeconds"]
        == prod["run_monitoring"]["start_timeout_seconds"]
    )
    assert (
        monitoring["pollIntervalSeconds"]
        == prod["run_monitoring"]["poll_interval_seconds"]
    )
    assert (
        monitoring["maxResumeRunAttempts"]
        == prod["run_monitoring"]["max_resume_run_attempts"]
    )
    # The chart cannot render retry_on_asset_or_op_failure, so run_retries is set in full there.
    assert values["dagsterDaemon"]["runRetries"]["enabled"] is False
    assert values["additionalInstanceConfig"]["run_retries"] == prod["run_retries"]
    assert values["telemetry"]["enabled"] is prod["telemetry"]["enabled"] is False
    pg = prod["storage"]["postgres"]["postgres_db"]
    assert values["postgresql"]["postgresqlScheme"] == pg["scheme"]
    assert values["postgresql"]["postgresqlParams"] == pg["params"]


def test_additional_instance_config_is_valid_dagster_config(values, tmp_path):
    """What the chart appends verbatim must itself pass Dagster's instance-config loader."""
    from tests.dagster_internals import instance_config

    (tmp_path / "dagster.yaml").write_text(
        yaml.safe_dump(values["additionalInstanceConfig"])
    )
    config, _ = instance_config(tmp_path)
    assert config["run_retries"]["max_retries"] == 2


def test_render_fills_every_placeholder(values, renderer, tmp_path):
    assert renderer.placeholders(values), (
        "values.yaml should mark environment-specific values"
    )
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    out = tmp_path / "values.env.yaml"
    assert (
        renderer.main(
            ["--settings", str(settings), "--image-tag", "3f2c1ab", "-o", str(out)]
        )
        == 0
    )
    rendered = yaml.safe_load(out.read_text())
    assert renderer.placeholders(rendered) == []
    deployment = _deployment(rendered)
    assert deployment["image"] == {
        "repository": SETTINGS["image_repository"],
        "tag": "3f2c1ab",
        "pullPolicy": "IfNotPresent",
    }
    assert deployment["env"]["PERSONALIZATION_LAKE_URL"] == SETTINGS["lake_url"]
    assert deployment["env"]["PERSONALIZATION_LEDGER_URL"] == SETTINGS["ledger_url"]
    assert (
        deployment["dagsterApiGrpcArgs"] == _deployment(values)["dagsterApiGrpcArgs"]
    ), "list entries must be kept"
    assert (
        rendered["dagster-user-deployments"]["serviceAccount"]["annotations"][
            "eks.amazonaws.com/role-arn"
        ]
        == SETTINGS["run_role_arn"]
    )
    assert (
        rendered["dagsterWebserver"]["image"]["tag"]
        == rendered["dagsterDaemon"]["image"]["tag"]
        == "3f2c1ab"
    )
    assert rendered["postgresql"]["postgresqlHost"] == SETTINGS["postgres_host"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lake_url": "/local/path"}, "not an s3:// URL"),
        ({"ledger_url": "/local/path"}, "not an s3:// URL"),
        ({"run_role_arn": ""}, "run_role_arn"),
    ],
)
def test_render_refuses_bad_settings(values, renderer, change, message):
    with pytest.raises(renderer.RenderError, match=message):
        renderer.render(values, {**SETTINGS, **change}, "3f2c1ab")


def test_render_refuses_latest_tag(values, renderer):
    with pytest.raises(renderer.RenderError, match="immutable"):
        renderer.render(values, SETTINGS, "latest")


def test_terraform_outputs_every_setting_the_renderer_needs(renderer):
    env = load_module(TERRAFORM / "environments" / "example")
    outputs = {
        name: body for block in env.get("output", []) for name, body in block.items()
    }
    settings_expr = outputs["deployment_settings"]["value"]
    needed = set(renderer.REQUIRED_SETTINGS) | set(renderer.COLLECTOR_REQUIRED_SETTINGS)
    assert needed <= set(settings_expr), sorted(needed - set(settings_expr))
    assert set(SETTINGS) == set(settings_expr), "SETTINGS above must mirror the Terraform output"


def test_render_writes_the_collector_manifests(renderer, tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    out, collector = tmp_path / "values.env.yaml", tmp_path / "collector.env.yaml"
    argv = ["--settings", str(settings), "--image-tag", "3f2c1ab", "-o", str(out)]
    assert renderer.main(argv + ["--collector-output", str(collector)]) == 0
    docs = [d for d in yaml.safe_load_all(collector.read_text()) if d]
    assert renderer.placeholders(docs) == []
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == SETTINGS["collector_role_arn"]
    assert "REPLACE_ME" not in collector.read_text()
    # a settings file from before the collector existed: the values render, the collector is refused
    old = {k: v for k, v in SETTINGS.items() if k not in ("collector_role_arn", "vpc_cidr")}
    settings.write_text(json.dumps(old))
    assert renderer.main(argv) == 0
    assert renderer.main(argv + ["--collector-output", str(tmp_path / "c2.yaml")]) == 2
    assert not (tmp_path / "c2.yaml").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"collector_role_arn": ""}, "collector_role_arn"),
        ({"collector_role_arn": "personalization-prod-collector"}, "not an IAM role ARN"),
        ({"collector_service_account_name": "someone-else"}, "trusts service account"),
        ({"vpc_cidr": "0.0.0.0/0"}, "forge"),
    ],
)
def test_render_collector_refuses_bad_settings(values, renderer, change, message):
    docs = [d for d in yaml.safe_load_all((INFRA / "helm" / "collector.yaml").read_text()) if d]
    rendered = renderer.render(values, SETTINGS, "3f2c1ab")
    with pytest.raises(renderer.RenderError, match=message):
        renderer.render_collector(docs, rendered, {**SETTINGS, **change})


def test_render_collector_needs_the_rendered_values(values, renderer):
    """The collector copies the code location's image and platform settings: from unrendered values it refuses."""
    docs = [d for d in yaml.safe_load_all((INFRA / "helm" / "collector.yaml").read_text()) if d]
    with pytest.raises(renderer.RenderError, match="render the Helm values first"):
        renderer.render_collector(docs, values, SETTINGS)
    rendered = renderer.render(values, SETTINGS, "3f2c1ab")
    del rendered["dagster-user-deployments"]["deployments"][0]["env"]["PERSONALIZATION_LEDGER_URL"]
    with pytest.raises(renderer.RenderError, match="PERSONALIZATION_LEDGER_URL"):
        renderer.render_collector(docs, rendered, SETTINGS)
