#!/usr/bin/env python3
"""Render the Helm values of one environment: infra/helm/values.yaml + Terraform outputs + image tag.

Helm replaces lists instead of merging them, so environment-specific settings inside the
user-deployment list (image, bucket URLs, Snowflake names) cannot be layered with a second `-f` file.
This script fills every REPLACE_ME of values.yaml from `terraform output -json deployment_settings`
and refuses to write a file that still contains a placeholder.

    terraform -chdir=infra/terraform/environments/prod output -json deployment_settings > settings.json
    python infra/scripts/render_helm_values.py --settings settings.json --image-tag "$GIT_SHA" -o values.env.yaml
    helm upgrade --install dagster dagster/dagster --version 1.13.27 -n dagster -f values.env.yaml

With --collector-output it also renders the event collector's manifests (infra/helm/collector.yaml): the image, the
buckets, the Object Lock mode and the active pseudonymization key version are copied from the code location just
rendered (one source: they cannot drift apart), plus its IRSA role and the VPC CIDR its proxy-header trust is limited to:

    python infra/scripts/render_helm_values.py --settings settings.json --image-tag "$GIT_SHA" -o values.env.yaml \
        --collector-output collector.env.yaml
    kubectl apply -f collector.env.yaml
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_VALUES = REPO_ROOT / "infra" / "helm" / "values.yaml"
COLLECTOR_MANIFEST = REPO_ROOT / "infra" / "helm" / "collector.yaml"
PLACEHOLDER = "REPLACE_ME"
DEPLOYMENT_NAME = "personalization"

REQUIRED_SETTINGS = (
    "image_repository",
    "aws_region",
    "landing_url",
    "lake_url",
    "ledger_url",
    "postgres_host",
    "postgres_port",
    "postgres_db_name",
    "postgres_username",
    "run_role_arn",
    "run_service_account_name",
    "snowflake_account",
    "snowflake_role",
    "snowflake_warehouse",
    "snowflake_database",
    "snowflake_schema",
)
# What the collector manifest needs besides the rendered values (terraform output deployment_settings).
COLLECTOR_REQUIRED_SETTINGS = (
    "collector_role_arn",
    "collector_service_account_name",
    "vpc_cidr",
)
COLLECTOR_NAME = "personalization-collector"
COLLECTOR_CONTAINER = "collector"
# The collector sees the platform as the code location does: these come from its rendered env, never twice.
SHARED_WITH_CODE_LOCATION = (
    "PERSONALIZATION_LANDING_URL",
    "PERSONALIZATION_LAKE_URL",
    "PERSONALIZATION_LEDGER_URL",
    "PERSONALIZATION_LEDGER_OBJECT_LOCK",
    "PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION",
    "AWS_REGION",
)
# Immutable, traceable tags only (git sha, semver); never "latest".
TAG_PATTERN = re.compile(r"^(?!latest$)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class RenderError(ValueError):
    pass


def placeholders(node: Any, path: str = "") -> list[str]:
    """Paths of every value still equal to (or containing) the placeholder."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += placeholders(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += placeholders(value, f"{path}[{index}]")
    elif isinstance(node, str) and PLACEHOLDER in node:
        found.append(path)
    return found


def render(base: dict, settings: dict, image_tag: str) -> dict:
    missing = [key for key in REQUIRED_SETTINGS if settings.get(key) in (None, "")]
    if missing:
        raise RenderError(
            f"settings lack {', '.join(missing)} (terraform output -json deployment_settings)"
        )
    if not TAG_PATTERN.match(image_tag):
        raise RenderError(
            f"image tag {image_tag!r} is not an immutable tag (use the git sha or a version)"
        )
    for url_key in ("landing_url", "lake_url", "ledger_url"):
        if not str(settings[url_key]).startswith("s3://"):
            raise RenderError(f"{url_key}={settings[url_key]!r} is not an s3:// URL")

    values = json.loads(json.dumps(base))  # deep copy
    image = {"repository": settings["image_repository"], "tag": image_tag}
    values["dagsterWebserver"]["image"].update(image)
    values["dagsterDaemon"]["image"].update(image)

    pg = values["postgresql"]
    pg["postgresqlHost"] = settings["postgres_host"]
    pg["postgresqlUsername"] = settings["postgres_username"]
    pg["postgresqlDatabase"] = settings["postgres_db_name"]
    pg["service"]["port"] = int(settings["postgres_port"])

    user = values["dagster-user-deployments"]
    user["serviceAccount"]["name"] = settings["run_service_account_name"]
    user["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"] = settings[
        "run_role_arn"
    ]
    deployments = [d for d in user["deployments"] if d.get("name") == DEPLOYMENT_NAME]
    if len(deployments) != 1:
        raise RenderError(
            f"values.yaml must define exactly one user deployment named {DEPLOYMENT_NAME!r}"
        )
    deployment = deployments[0]
    deployment["image"].update(image)
    deployment["env"].update(
        {
            "PERSONALIZATION_LANDING_URL": settings["landing_url"],
            "PERSONALIZATION_LAKE_URL": settings["lake_url"],
            "PERSONALIZATION_LEDGER_URL": settings["ledger_url"],
            "AWS_REGION": settings["aws_region"],
            "SNOWFLAKE_ACCOUNT": settings["snowflake_account"],
            "SNOWFLAKE_ROLE": settings["snowflake_role"],
            "SNOWFLAKE_WAREHOUSE": settings["snowflake_warehouse"],
            "SNOWFLAKE_DATABASE": settings["snowflake_database"],
            "SNOWFLAKE_SCHEMA": settings["snowflake_schema"],
        }
    )

    left = placeholders(values)
    if left:
        raise RenderError(f"placeholders left after rendering: {', '.join(left)}")
    return values


def _one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind and d.get("metadata", {}).get("name") == name]
    if len(found) != 1:
        raise RenderError(f"the collector manifest must define exactly one {kind} named {name!r}")
    return found[0]


def render_collector(docs: list[dict], values: dict, settings: dict) -> list[dict]:
    """The collector manifests (collector.yaml) for one environment. `values` are the Helm values `render` returned:
    the collector gets the code location's image and platform settings (SHARED_WITH_CODE_LOCATION) from them."""
    missing = [key for key in COLLECTOR_REQUIRED_SETTINGS if settings.get(key) in (None, "")]
    if missing:
        raise RenderError(
            f"settings lack {', '.join(missing)} for the collector (terraform output -json deployment_settings)"
        )
    try:
        cidr = ipaddress.ip_network(str(settings["vpc_cidr"]))
    except ValueError:
        raise RenderError(f"vpc_cidr={settings['vpc_cidr']!r} is not a CIDR block") from None
    if cidr.prefixlen == 0:
        raise RenderError("vpc_cidr must be the VPC's block: trusting 0.0.0.0/0 lets any client forge its address")
    if not str(settings["collector_role_arn"]).startswith("arn:"):
        raise RenderError(f"collector_role_arn={settings['collector_role_arn']!r} is not an IAM role ARN")
    left = placeholders(values)
    if left:
        raise RenderError(f"render the Helm values first: placeholders left in them: {', '.join(left)}")
    code = [d for d in values["dagster-user-deployments"]["deployments"] if d.get("name") == DEPLOYMENT_NAME]
    if len(code) != 1:
        raise RenderError(f"values must define exactly one user deployment named {DEPLOYMENT_NAME!r}")
    image, code_env = code[0]["image"], code[0]["env"]
    absent = [name for name in SHARED_WITH_CODE_LOCATION if code_env.get(name) in (None, "")]
    if absent:
        raise RenderError(f"the code location sets no {', '.join(absent)}: the collector must see the same platform")

    docs = json.loads(json.dumps(docs))  # deep copy
    account = _one(docs, "ServiceAccount", COLLECTOR_NAME)
    if settings["collector_service_account_name"] != account["metadata"]["name"]:
        raise RenderError(
            f"the collector role trusts service account {settings['collector_service_account_name']!r}, "
            f"but collector.yaml names it {account['metadata']['name']!r}"
        )
    account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] = settings["collector_role_arn"]
    statefulset = _one(docs, "StatefulSet", COLLECTOR_NAME)
    containers = [c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == COLLECTOR_CONTAINER]
    if len(containers) != 1:
        raise RenderError(f"the collector StatefulSet must have one container named {COLLECTOR_CONTAINER!r}")
    container = containers[0]
    container["image"] = f"{image['repository']}:{image['tag']}"
    container["imagePullPolicy"] = image.get("pullPolicy", container.get("imagePullPolicy"))
    wanted = {name: str(code_env[name]) for name in SHARED_WITH_CODE_LOCATION}
    wanted["FORWARDED_ALLOW_IPS"] = str(cidr)
    for entry in container["env"]:
        if entry["name"] in wanted:
            if "value" not in entry:
                raise RenderError(f"the collector's {entry['name']} must be a plain value, not {sorted(entry)}")
            entry["value"] = wanted.pop(entry["name"])
    if wanted:
        raise RenderError(f"the collector container has no env entry {', '.join(sorted(wanted))}")

    left = placeholders(docs)
    if left:
        raise RenderError(f"placeholders left in the collector manifest: {', '.join(left)}")
    return docs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings",
        required=True,
        type=Path,
        help="JSON of `terraform output -json deployment_settings`",
    )
    parser.add_argument(
        "--image-tag", required=True, help="tag of the user-code image pushed to ECR"
    )
    parser.add_argument(
        "--values", type=Path, default=BASE_VALUES, help="base values file"
    )
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument(
        "--collector-output",
        type=Path,
        help="also render the event collector's manifests (infra/helm/collector.yaml) to this file",
    )
    parser.add_argument(
        "--collector-manifest", type=Path, default=COLLECTOR_MANIFEST, help="base collector manifests"
    )
    args = parser.parse_args(argv)
    try:
        base = yaml.safe_load(args.values.read_text(encoding="utf-8"))
        settings = json.loads(args.settings.read_text(encoding="utf-8"))
        rendered = render(base, settings, args.image_tag)
        collector = None
        if args.collector_output:
            docs = [d for d in yaml.safe_load_all(args.collector_manifest.read_text(encoding="utf-8")) if d]
            collector = render_collector(docs, rendered, settings)
    except (RenderError, OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.output.write_text(
        "# Rendered by infra/scripts/render_helm_values.py; do not edit, re-render instead.\n"
        + yaml.safe_dump(rendered, sort_keys=False, default_flow_style=False),
        encoding="utf-8",
    )
    print(f"wrote {args.output}")
    if collector is not None:
        args.collector_output.write_text(
            "# Rendered by infra/scripts/render_helm_values.py from infra/helm/collector.yaml; do not edit, re-render instead.\n"
            + yaml.safe_dump_all(collector, sort_keys=False, default_flow_style=False),
            encoding="utf-8",
        )
        print(f"wrote {args.collector_output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
