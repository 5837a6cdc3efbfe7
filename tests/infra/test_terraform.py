"""Static checks of infra/terraform: every file parses (python-hcl2), providers are pinned, inputs and
outputs are documented, and the security properties the platform relies on are present in the code."""

from __future__ import annotations

import re
import subprocess

import pytest
from lark.exceptions import LarkError

from .conftest import (
    TERRAFORM,
    data_sources,
    load_module,
    load_tf,
    module_calls,
    resources,
    tf_files,
)

MODULES = TERRAFORM / "modules"
ROOTS = sorted({p.parent for p in tf_files()})


def _locals(module: dict) -> dict:
    return {k: v for block in module.get("locals", []) for k, v in block.items()}


def _variables(module: dict) -> dict:
    return {k: v for block in module.get("variable", []) for k, v in block.items()}


def _statements(doc: dict) -> list[dict]:
    return doc.get("statement", [])


def _resolve_var(value, variables: dict):
    match = re.fullmatch(r"\$\{var\.(\w+)\}", str(value))
    return variables[match.group(1)]["default"] if match else value


def test_terraform_tree_is_not_empty():
    names = {p.name for p in MODULES.iterdir()}
    assert {"storage", "iam", "network", "secrets", "snowflake", "eks"} <= names
    assert (TERRAFORM / "environments" / "example" / "main.tf").exists()


@pytest.mark.parametrize(
    "path", tf_files(), ids=lambda p: str(p.relative_to(TERRAFORM))
)
def test_every_tf_file_parses(path):
    parsed = load_tf(path)
    assert isinstance(parsed, dict) and parsed, f"{path} parsed to nothing"


def test_parser_rejects_invalid_hcl(tmp_path):
    bad = tmp_path / "bad.tf"
    bad.write_text('resource "aws_s3_bucket" "x" {\n  bucket = \n}\n')
    with pytest.raises(LarkError):
        load_tf(bad)


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_versions_pinned(root):
    module = load_module(root)
    terraform_blocks = module.get("terraform", [])
    assert terraform_blocks, f"{root} has no terraform block"
    block = terraform_blocks[0]
    assert re.search(r">=\s*1\.11", block["required_version"]), (
        "write-only attributes need Terraform >= 1.11"
    )
    providers = block["required_providers"][0]
    assert providers, "no required_providers"
    for name, spec in providers.items():
        assert "source" in spec and "version" in spec, (
            f"provider {name} in {root} is not pinned"
        )
        assert spec["version"].startswith("~>"), (
            f"provider {name}: pin with ~> (got {spec['version']})"
        )
    if "snowflake" in providers:
        assert providers["snowflake"]["source"] == "snowflakedb/snowflake"


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_variables_and_outputs_documented(root):
    module = load_module(root)
    for name, spec in _variables(module).items():
        assert spec.get("description"), f"variable {name} in {root} has no description"
        assert spec.get("type"), f"variable {name} in {root} has no type"
    for block in module.get("output", []):
        for name, spec in block.items():
            assert spec.get("description"), (
                f"output {name} in {root} has no description"
            )


def test_environment_calls_every_module_with_local_sources():
    env = load_module(TERRAFORM / "environments" / "example")
    calls = module_calls(env)
    assert set(calls) == {"network", "storage", "secrets", "eks", "iam", "snowflake"}
    for name, call in calls.items():
        assert call["source"] == f"../../modules/{name}"
    backend = env["terraform"][0]["backend"][0]["s3"]
    assert backend["encrypt"] is True and backend["use_lockfile"] is True


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [t for k, v in node.items() for t in [str(k), *_strings(v)]]
    if isinstance(node, list):
        return [t for v in node for t in _strings(v)]
    return [str(node)]


def test_module_wiring_is_consistent():
    """What `terraform validate` would say about the wiring (it needs the providers, which cannot be downloaded
    everywhere this suite runs): every module argument is a declared variable, every variable without a default is
    passed, every `module.<m>.<output>` exists, and every `var.`/`local.` reference is declared."""
    env_dir = TERRAFORM / "environments" / "example"
    parsed = {env_dir: load_module(env_dir), **{p: load_module(p) for p in sorted(MODULES.iterdir()) if p.is_dir()}}
    env = parsed[env_dir]
    env_text = _strings(env)
    for name, call in module_calls(env).items():
        module = parsed[MODULES / name]
        variables = _variables(module)
        passed = set(call) - {"source", "providers", "depends_on", "count", "for_each"}
        assert passed <= set(variables), f"module {name}: unknown arguments {sorted(passed - set(variables))}"
        required = {v for v, spec in variables.items() if "default" not in spec}
        assert required <= passed, f"module {name}: required variables not passed {sorted(required - passed)}"
        outputs = {o for block in module.get("output", []) for o in block}
        used = {m for t in env_text for m in re.findall(rf"\bmodule\.{name}\.(\w+)", t)}
        assert used <= outputs, f"module {name} has no output(s) {sorted(used - outputs)}"
    for root, module in parsed.items():
        text = _strings(module)
        declared_vars = set(_variables(module))
        used_vars = {m for t in text for m in re.findall(r"\$\{[^}]*?\bvar\.(\w+)", t)} | {
            m for t in text for m in re.findall(r"(?<![\w.])var\.(\w+)", t) if "${" in t
        }
        assert used_vars <= declared_vars, f"{root.name}: undeclared variables {sorted(used_vars - declared_vars)}"
        declared_locals = set(_locals(module))
        used_locals = {m for t in text if "${" in t for m in re.findall(r"(?<![\w.])local\.(\w+)", t)}
        assert used_locals <= declared_locals, f"{root.name}: undeclared locals {sorted(used_locals - declared_locals)}"


def test_module_wiring_check_can_fail(tmp_path):
    """The wiring check above reads what it claims to: an argument the module does not declare is visible."""
    env = load_module(TERRAFORM / "environments" / "example")
    call = dict(module_calls(env)["iam"])
    call["no_such_variable"] = "x"
    assert not set(call) - {"source"} <= set(_variables(load_module(MODULES / "iam")))


# ------------------------------------------------------------------------------------------------
# storage
# ------------------------------------------------------------------------------------------------


def test_storage_encryption_versioning_public_access_tls():
    storage = load_module(MODULES / "storage")
    key = resources(storage, "aws_kms_key")["data"]
    assert key["enable_key_rotation"] is True
    sse = resources(storage, "aws_s3_bucket_server_side_encryption_configuration")[
        "data"
    ]
    default = sse["rule"][0]["apply_server_side_encryption_by_default"][0]
    assert default["sse_algorithm"] == "aws:kms"
    assert default["kms_master_key_id"] == "${aws_kms_key.data.arn}"
    for pab in resources(storage, "aws_s3_bucket_public_access_block").values():
        assert all(
            pab[k] is True
            for k in (
                "block_public_acls",
                "block_public_policy",
                "ignore_public_acls",
                "restrict_public_buckets",
            )
        )
    for versioning in resources(storage, "aws_s3_bucket_versioning").values():
        assert versioning["versioning_configuration"][0]["status"] == "Enabled"
    logging = resources(storage, "aws_s3_bucket_logging")["data"]
    assert logging["target_bucket"] == "${aws_s3_bucket.logs.id}"
    for name, doc in data_sources(storage, "aws_iam_policy_document").items():
        if name in ("data_bucket", "logs"):
            tls = [
                s for s in _statements(doc) if s.get("sid") == "DenyInsecureTransport"
            ]
            assert tls, f"policy {name} lacks the TLS-only statement"
            condition = tls[0]["condition"][0]
            assert (condition["variable"], condition["values"], tls[0]["effect"]) == (
                "aws:SecureTransport",
                ["false"],
                "Deny",
            )


def test_pii_fence_in_lake_bucket_policy():
    storage = load_module(MODULES / "storage")
    locals_ = _locals(storage)
    lake_pii = " ".join(locals_["pii_object_arns"]["lake"])
    assert "raw/*" in lake_pii and "privacy/*" in lake_pii
    assert "consented" not in lake_pii and "features" not in lake_pii


def _dynamic_statements(doc: dict) -> dict[str, dict]:
    """{sid: content} of the `dynamic "statement"` blocks of a policy document."""
    out = {}
    for block in doc.get("dynamic", []):
        for body in (block.get("statement"),) if "statement" in block else ():
            content = body["content"][0] if isinstance(body["content"], list) else body["content"]
            out[content["sid"]] = {**content, "for_each": body["for_each"]}
    return out


def test_ledger_bucket_is_write_once():
    """The append-only logs: own bucket with Object Lock, encrypted, versioned, fenced, no delete, no overwrite."""
    storage = load_module(MODULES / "storage")
    ledger = resources(storage, "aws_s3_bucket")["ledger"]
    assert ledger["object_lock_enabled"] is True and ledger["force_destroy"] is False
    assert "ledger" in _locals(storage)["data_bucket_ids"]  # SSE-KMS, versioning, public access block, logging
    assert "ledger" in _locals(storage)["pii_object_arns"]
    assert not any(b.get("object_lock_enabled") for n, b in resources(storage, "aws_s3_bucket").items() if n != "ledger")
    statements = _dynamic_statements(data_sources(storage, "aws_iam_policy_document")["data_bucket"])
    deletes, overwrites = statements["DenyLedgerDeletes"], statements["DenyLedgerOverwrites"]
    for statement in (deletes, overwrites):
        assert statement["effect"] == "Deny" and 'each.key == "ledger"' in statement["for_each"]
        principals = statement["principals"][0] if isinstance(statement["principals"], list) else statement["principals"]
        assert principals["identifiers"] == ["*"]  # everyone, the pipeline included
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"} <= set(deletes["actions"])
    condition = overwrites["condition"][0]
    assert overwrites["actions"] == ["s3:PutObject"]
    assert (condition["test"], condition["variable"], condition["values"]) == ("Null", "s3:if-none-match", ["true"])


def test_run_role_appends_to_the_ledger_without_delete():
    iam, docs = _iam_docs()
    by_sid = {s["sid"]: s for s in _statements(docs["run"])}
    assert set(by_sid["AppendToLedger"]["actions"]) == {"s3:GetObject", "s3:PutObject", "s3:PutObjectRetention"}
    assert by_sid["AppendToLedger"]["resources"] == "${local.ledger_log_objects}"
    assert "${var.ledger_bucket_arn}" in by_sid["ListDataBuckets"]["resources"]
    deny = {s["sid"]: s for s in _statements(docs["analyst"])}["DenyPersonalDataTiers"]
    assert "ledger_bucket_arn" in str(deny["resources"])


# ------------------------------------------------------------------------------------------------
# iam
# ------------------------------------------------------------------------------------------------


def _iam_docs():
    iam = load_module(MODULES / "iam")
    return iam, data_sources(iam, "aws_iam_policy_document")


def test_run_role_least_privilege():
    iam, docs = _iam_docs()
    statements = _statements(docs["run"])
    for statement in statements:
        assert statement.get("effect", "Allow") == "Allow"
        for action in statement["actions"]:
            assert "*" not in action, f"wildcard action {action} in the run role"
        assert statement["resources"] != ["*"], (
            f"{statement['sid']} grants on every resource"
        )
    by_sid = {s["sid"]: s for s in statements}
    assert set(by_sid["ReadLanding"]["actions"]) == {"s3:GetObject"}, (
        "landing is read-only"
    )
    assert "s3:DeleteObjectVersion" not in by_sid["ReadWriteLakeTiers"]["actions"], (
        "history is purged by lifecycle only"
    )
    assert by_sid["ReadWriteLakeTiers"]["resources"] == "${local.lake_tier_objects}"
    assert _locals(iam)["lake_tiers"] == ["raw", "privacy", "consented", "features"]
    assert by_sid["ReadTheTwoApplicationSecrets"]["resources"] == "${var.secret_arns}"
    assert set(by_sid["ReadTheTwoApplicationSecrets"]["actions"]) <= {
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
    }
    assert set(by_sid["UseDataKeyThroughS3"]["actions"]) == {
        "kms:Decrypt",
        "kms:GenerateDataKey",
    }
    assert by_sid["UseDataKeyThroughS3"]["resources"] == ["${var.data_kms_key_arn}"]
    variables = _variables(iam)
    assert (
        "length(var.secret_arns) == 2"
        in variables["secret_arns"]["validation"][0]["condition"]
    )


def test_run_role_is_irsa_for_one_service_account():
    _, docs = _iam_docs()
    statement = _statements(docs["run_assume"])[0]
    assert statement["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    assert statement["principals"][0]["type"] == "Federated"
    conditions = {c["variable"]: c for c in statement["condition"]}
    sub = conditions["${var.oidc_issuer}:sub"]
    assert sub["test"] == "StringEquals"
    assert sub["values"] == [
        "system:serviceaccount:${var.namespace}:${var.run_service_account_name}"
    ]
    assert conditions["${var.oidc_issuer}:aud"]["values"] == ["sts.amazonaws.com"]


def test_analyst_role_curated_only():
    iam, docs = _iam_docs()
    locals_ = _locals(iam)
    assert locals_["curated_tiers"] == ["consented", "features"]
    assert locals_["pii_tiers"] == ["raw", "privacy"]
    statements = _statements(docs["analyst"])
    allows = [s for s in statements if s.get("effect", "Allow") == "Allow"]
    for statement in allows:
        assert not any(
            a in ("s3:*", "*") or a.startswith(("s3:Put", "s3:Delete"))
            for a in statement["actions"]
        )
        text = str(statement["resources"])
        assert "raw" not in text and "privacy" not in text and "landing" not in text
    read = next(s for s in allows if s["sid"] == "ReadCuratedTiers")
    assert read["resources"] == "${local.curated_objects}"
    listing = next(s for s in allows if s["sid"] == "ListCuratedPrefixesOnly")
    assert listing["condition"][0]["variable"] == "s3:prefix"
    denies = {s["sid"]: s for s in statements if s.get("effect") == "Deny"}
    assert "local.pii_objects" in str(denies["DenyPersonalDataTiers"]["resources"])
    assert "landing_bucket_arn" in str(denies["DenyPersonalDataTiers"]["resources"])


# ------------------------------------------------------------------------------------------------
# network / eks / secrets
# ------------------------------------------------------------------------------------------------


def test_only_the_alb_accepts_ingress_from_outside_the_vpc():
    network = load_module(MODULES / "network")
    ingress = resources(network, "aws_vpc_security_group_ingress_rule")
    external = {
        name: rule
        for name, rule in ingress.items()
        if "cidr_ipv4" in rule and rule["cidr_ipv4"] != "${var.vpc_cidr}"
    }
    # the Dagster UI ALB (VPN ranges) and the event collector ALB (public: SDKs post from anywhere), 443 only
    assert set(external) == {"alb_https", "collector_alb_https"}, (
        f"unexpected external ingress: {sorted(external)}"
    )
    for name, alb in external.items():
        assert (alb["from_port"], alb["to_port"], alb["ip_protocol"]) == (443, 443, "tcp"), name
    assert external["alb_https"]["security_group_id"] == "${aws_security_group.alb.id}"
    assert external["collector_alb_https"]["security_group_id"] == "${aws_security_group.collector_alb.id}"
    assert external["collector_alb_https"]["cidr_ipv4"] == "${each.value}"
    variables = _variables(network)
    assert "0.0.0.0/0" in variables["ui_allowed_cidrs"]["validation"][0]["condition"]
    # each ALB reaches the nodes on its own NodePort only
    egress = resources(network, "aws_vpc_security_group_egress_rule")
    assert egress["alb_to_webserver"]["from_port"] == egress["alb_to_webserver"]["to_port"] == "${var.webserver_node_port}"
    collector = egress["collector_alb_to_collector"]
    assert collector["from_port"] == collector["to_port"] == "${var.collector_node_port}"
    node_ingress = {n: r for n, r in ingress.items() if r.get("security_group_id") == "${aws_security_group.nodes.id}"}
    assert {(r["referenced_security_group_id"], r["from_port"]) for r in node_ingress.values()} == {
        ("${aws_security_group.alb.id}", "${var.webserver_node_port}"),
        ("${aws_security_group.collector_alb.id}", "${var.collector_node_port}"),
    }
    for subnet in resources(network, "aws_subnet").values():
        assert subnet["map_public_ip_on_launch"] is False
    s3 = resources(network, "aws_vpc_endpoint")["s3"]
    assert s3["vpc_endpoint_type"] == "Gateway"


def test_alb_listener_is_https_with_acm_and_modern_tls():
    eks = load_module(MODULES / "eks")
    listeners = resources(eks, "aws_lb_listener")
    # one HTTPS listener per load balancer (UI, event collector), no plain-HTTP listener anywhere
    assert set(listeners) == {"https", "collector_https"}, "no plain-HTTP listener"
    certificates = {"https": "${var.certificate_arn}", "collector_https": "${var.collector_certificate_arn}"}
    for name, https in listeners.items():
        assert https["port"] == 443 and https["protocol"] == "HTTPS", name
        assert https["certificate_arn"] == certificates[name]
        assert "TLS13" in https["ssl_policy"]
    assert listeners["collector_https"]["load_balancer_arn"] == "${aws_lb.collector.arn}"
    for lb in resources(eks, "aws_lb").values():
        assert lb["drop_invalid_header_fields"] is True
        assert lb["access_logs"][0]["enabled"] is True
    assert _variables(eks)["alb_internal"]["default"] is True


def test_node_groups_spot_for_runs_on_demand_for_system():
    eks = load_module(MODULES / "eks")
    groups = resources(eks, "aws_eks_node_group")
    assert groups["runs"]["capacity_type"] == "SPOT"
    assert groups["system"]["capacity_type"] == "ON_DEMAND"
    taint = groups["runs"]["taint"][0]
    assert taint["effect"] == "NO_SCHEDULE" and taint["key"] == "${local.run_taint_key}"
    assert groups["runs"]["scaling_config"][0]["min_size"] == 0
    templates = resources(eks, "aws_launch_template")["node"]
    metadata = templates["metadata_options"][0]
    assert (
        metadata["http_tokens"] == "required"
        and metadata["http_put_response_hop_limit"] == 1
    )
    assert templates["block_device_mappings"][0]["ebs"][0]["encrypted"] is True
    cluster = resources(eks, "aws_eks_cluster")["this"]
    assert cluster["encryption_config"][0]["resources"] == ["secrets"]
    assert _variables(eks)["endpoint_public_access"]["default"] is False


def test_rds_private_encrypted_backed_up_protected():
    eks = load_module(MODULES / "eks")
    db = resources(eks, "aws_db_instance")["dagster"]
    variables = _variables(eks)
    assert db["publicly_accessible"] is False
    assert (
        db["storage_encrypted"] is True
        and db["kms_key_id"] == "${aws_kms_key.platform.arn}"
    )
    assert db["deletion_protection"] is True and db["skip_final_snapshot"] is False
    assert _resolve_var(db["backup_retention_period"], variables) >= 7
    assert "password" not in db, (
        "the password must only be set through the write-only attribute"
    )
    assert db["password_wo"] == "${ephemeral.random_password.db.result}"
    version = resources(eks, "aws_secretsmanager_secret_version")["db"]
    assert version["secret_string_wo"] == "${ephemeral.random_password.db.result}"
    assert "secret_string" not in version
    params = {
        p["name"]: p["value"]
        for p in resources(eks, "aws_db_parameter_group")["dagster"]["parameter"]
    }
    assert params["rds.force_ssl"] == "1"


def test_secrets_are_kms_encrypted_and_valueless():
    secrets = load_module(MODULES / "secrets")
    app = resources(secrets, "aws_secretsmanager_secret")["app"]
    assert app["kms_key_id"] == "${aws_kms_key.secrets.arn}"
    assert set(_locals(secrets)["secrets"]) == {"pseudonym-keys", "snowflake"}
    assert not resources(secrets, "aws_secretsmanager_secret_version"), (
        "secret values must not pass through Terraform"
    )


# ------------------------------------------------------------------------------------------------
# snowflake
# ------------------------------------------------------------------------------------------------


def test_snowflake_layers_warehouse_roles_and_masking():
    sf = load_module(MODULES / "snowflake")
    variables = _variables(sf)
    locals_ = _locals(sf)
    assert set(locals_["layer_schemas"]) == {
        "CONSENTED",
        "FEATURES",
        "SEGMENTS",
        "STAGING",
    }
    assert set(locals_["analyst_schema"]) == {"SEGMENTS", "FEATURES"}
    for warehouse in resources(sf, "snowflake_warehouse").values():
        assert _resolve_var(warehouse["auto_suspend"], variables) == 60
        assert warehouse["initially_suspended"] is True
    env = load_module(TERRAFORM / "environments" / "example")
    assert module_calls(env)["snowflake"]["auto_suspend_seconds"] == 60
    policy = resources(sf, "snowflake_masking_policy")["pseudonym"]
    assert "CURRENT_ROLE() = '${local.pipeline_role}' THEN VAL" in policy["body"]
    assert "ELSE '${local.masked_value}'" in policy["body"]
    tag = resources(sf, "snowflake_tag")["pseudonym"]
    assert tag["masking_policies"] == [
        "${snowflake_masking_policy.pseudonym.fully_qualified_name}"
    ]
    grants = resources(sf, "snowflake_grant_privileges_to_account_role")
    analyst_grants = [
        g
        for g in grants.values()
        if g["account_role_name"] == "${snowflake_account_role.analyst.name}"
    ]
    for grant in analyst_grants:
        assert set(grant["privileges"]) <= {"USAGE", "SELECT"}, (
            f"analyst gets {grant['privileges']}"
        )
        assert "CONSENTED" not in str(grant) and "STAGING" not in str(grant)


# ------------------------------------------------------------------------------------------------
# terraform fmt (only where a terraform binary exists; it cannot be installed from the registries
# this project uses, so its absence is never a failure)
# ------------------------------------------------------------------------------------------------


def test_terraform_fmt_is_clean():
    import shutil

    binary = shutil.which("terraform") or shutil.which("tofu")
    if binary is None:
        pytest.skip(
            "terraform/tofu binary not present; formatting is checked where it is installed"
        )
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"run `terraform fmt -recursive infra/terraform`:\n{result.stdout}{result.stderr}"
    )
