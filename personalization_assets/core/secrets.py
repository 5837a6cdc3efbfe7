"""Production secrets read from AWS Secrets Manager through dagster-aws, as an alternative to External Secrets.

Two ways bring the secrets (pseudonymization keys, Snowflake credentials) into a run, both ending in
environment variables that the resources read through ``dg.EnvVar``:

* External Secrets Operator copies them into Kubernetes Secrets that the Helm chart injects as env
  (infra/helm/external-secrets.yaml.tftpl); nothing to configure here.
* ``PERSONALIZATION_SECRETS_ARNS`` lists Secrets Manager ARNs; when the definitions load, each secret is
  read with the client of ``dagster_aws.secretsmanager.SecretsManagerResource`` (IRSA role, or the
  static AWS credentials) and put into the process environment:

  - ``ENV_NAME=arn:aws:secretsmanager:…`` sets ``ENV_NAME`` to the secret string (the pseudonym key map);
  - a bare ``arn:aws:secretsmanager:…`` must hold a JSON object of variables, each of which is set
    (the Snowflake secret ``{"SNOWFLAKE_USER": …, "SNOWFLAKE_PASSWORD": …}``), like ESO's ``dataFrom``.

Values never appear in messages, logs or metadata: errors name the variable, the secret's name or ARN
and the fix. A variable already set to a DIFFERENT value is refused (two sources for one secret).
"""

from __future__ import annotations

import json
import os
import re
from typing import Mapping

from personalization_assets.core.errors import ConfigError

SETTING = "PERSONALIZATION_SECRETS_ARNS"
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+$")


def parse_secret_refs(raw: str) -> list[tuple[str | None, str]]:
    """(variable or None, ARN) per comma-separated entry. Raises ConfigError naming the bad entry."""
    refs = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, arn = (entry.split("=", 1) if "=" in entry else (None, entry))
        name = name.strip() if name is not None else None
        arn = arn.strip()
        if name is not None and not _ENV_NAME.match(name):
            raise ConfigError(f"{SETTING}: {name!r} is not an environment variable name. Fix: write NAME=arn with NAME "
                              "in upper case letters, digits and '_' (e.g. PERSONALIZATION_PSEUDONYM_KEYS=arn:…).")
        if not _ARN.match(arn):
            raise ConfigError(f"{SETTING}: {arn!r} is not a Secrets Manager ARN. Fix: use the full ARN "
                              "arn:aws:secretsmanager:<region>:<account>:secret:<name> (terraform output secret_arns).")
        refs.append((name, arn))
    if not refs:
        raise ConfigError(f"{SETTING} is set but lists no ARN. Fix: unset it, or list NAME=arn / arn entries separated by commas.")
    return refs


def secrets_manager_client(environ: Mapping[str, str]):
    """The boto3 Secrets Manager client of dagster-aws's SecretsManagerResource (region, endpoint, credentials)."""
    from dagster_aws.secretsmanager import SecretsManagerResource

    return SecretsManagerResource(
        region_name=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
        endpoint_url=environ.get("AWS_ENDPOINT_URL_SECRETS_MANAGER") or environ.get("AWS_ENDPOINT_URL") or None,
        aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=environ.get("AWS_SESSION_TOKEN") or None,
    ).get_client()


def fetch_secret_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """Read every secret listed in PERSONALIZATION_SECRETS_ARNS; returns {variable: value}."""
    from botocore.exceptions import BotoCoreError, ClientError
    from dagster_aws.secretsmanager import get_secrets_from_arns

    refs = parse_secret_refs(environ.get(SETTING, ""))
    client = secrets_manager_client(environ)
    try:
        names = {arn: name for name, arn in get_secrets_from_arns(client, [arn for _, arn in refs]).items()}
    except (ClientError, BotoCoreError) as exc:
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else type(exc).__name__
        raise ConfigError(f"{SETTING}: cannot describe the listed secrets ({code}). Fix: check the ARNs and that the run "
                          "role may secretsmanager:DescribeSecret and GetSecretValue them (infra/terraform/modules/iam).") from None
    values: dict[str, str] = {}
    for var, arn in refs:
        label = names.get(arn, arn)
        try:
            secret = client.get_secret_value(SecretId=arn).get("SecretString")
        except (ClientError, BotoCoreError) as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else type(exc).__name__
            raise ConfigError(f"{SETTING}: cannot read secret {label} ({code}). Fix: put a value in it (docs/DEPLOYMENT.md, "
                              "Secrets) and let the run role read it.") from None
        if secret is None:
            raise ConfigError(f"{SETTING}: secret {label} has no string value. Fix: store it as a SecretString.")
        if var is not None:
            found = {var: secret}
        else:
            try:
                found = json.loads(secret)
            except ValueError:
                found = None
            if not isinstance(found, dict) or not found or not all(
                isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str) for k, v in found.items()
            ):
                raise ConfigError(f"{SETTING}: secret {label} is not a JSON object of environment variables. Fix: store it as "
                                  '{"NAME": "value", …}, or map the whole string to one variable with NAME=arn.')
        for k, v in found.items():
            if k in values and values[k] != v:
                raise ConfigError(f"{SETTING}: two listed secrets set {k} to different values. Fix: list each variable once.")
            values[k] = v
    return values


def load_secrets(environ: Mapping[str, str]) -> tuple[Mapping[str, str], tuple[str, ...]]:
    """Resolve PERSONALIZATION_SECRETS_ARNS. Returns the environment with the secrets and the variable names set.

    For the process environment (``os.environ``), the variables are set in it, so that ``dg.EnvVar`` resolves
    them when the resources initialize; any other mapping is copied, not modified."""
    values = fetch_secret_variables(environ)
    for k, v in values.items():
        current = environ.get(k)
        if current not in (None, "", v):
            raise ConfigError(f"{k} is set in the environment and also by {SETTING}, with a different value. Fix: provide "
                              "it one way only (unset the variable, or remove its secret from the list).")
    if environ is os.environ:
        os.environ.update(values)
        return os.environ, tuple(sorted(values))
    return {**environ, **values}, tuple(sorted(values))
