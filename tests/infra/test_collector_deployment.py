"""The event collector's production deployment (infra/helm/collector.yaml, the collector parts of Terraform and
External Secrets) agrees with the collector's own code: the settings `collector/config.py` and the platform settings
read, the routes its app serves, the S3 requests it really makes, the CLI that starts it.

The expectations are derived from the code (the `*_ENV` constants, the repr-hidden secret fields, the app's routes,
the requests the real app sends to S3, recorded), so a new setting, a renamed endpoint or a new object it reads or
writes makes a test fail instead of a pod that crashes or a role that refuses the collector in production.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import ipaddress
import json
import re
import time

import pytest
import yaml

from .conftest import INFRA, REPO_ROOT, TERRAFORM, data_sources, load_module, load_script, module_calls, resources
from .test_helm_values import SETTINGS

# Starlette's TestClient (used to run the real app with its lifespan, in-process) warns that it will move to httpx2.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")

MANIFEST = INFRA / "helm" / "collector.yaml"
PODMONITOR = INFRA / "helm" / "collector-podmonitor.yaml"
ESO_TEMPLATE = INFRA / "helm" / "external-secrets.yaml.tftpl"
NAME = "personalization-collector"
TAG = "3f2c1ab"
# what AWS Secrets Manager holds in the test (distinct values, so each can be traced to the field it fills)
SECRET_VALUES = {
    "PERSONALIZATION_COLLECTOR_WRITE_KEYS": "test-write-key-0001,test-write-key-0002",
    "PERSONALIZATION_PREFERENCE_TOKEN_SECRET": "test-preference-token-secret-0001-abcdefgh",
    "PERSONALIZATION_PSEUDONYM_KEYS": json.dumps({"1": "5e" * 32}),
}
# the ALB's view: requests arrive from a node of the VPC (kube-proxy) carrying the client in X-Forwarded-For
PUBLIC_HOST = "collect.example.com"
CLIENT_IP = "198.51.100.23"


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _load_docs(path=MANIFEST) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _one(docs: list[dict], kind: str, name: str = NAME) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(docs: list[dict]) -> dict:
    containers = _one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env_entries(container: dict) -> dict[str, dict]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), "an env variable is set twice"
    return {e["name"]: e for e in container["env"]}


def _pod_environment(container: dict, secrets: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the kubelet gives the container: literal values, and each secretKeyRef resolved from
    `secrets` (keyed by the Secret's key). Nothing of the test process's environment."""
    secrets = SECRET_VALUES if secrets is None else secrets
    env = {}
    for name, entry in _env_entries(container).items():
        if "value" in entry:
            env[name] = str(entry["value"])
        else:
            env[name] = secrets[entry["valueFrom"]["secretKeyRef"]["key"]]
    return env


def _collector_config_module():
    from personalization_assets.collector import config

    return config


def _settings_constants() -> dict[str, str]:
    """Every setting collector/config.py names (`*_ENV` constants), except the crash tests' fault injection
    (its variable starts with `_`: not a user setting)."""
    config = _collector_config_module()
    return {
        name: value
        for name, value in vars(config).items()
        if name.endswith("_ENV") and isinstance(value, str) and not value.startswith("_")
    }


def _locals(module: dict) -> dict:
    return {k: v for block in module.get("locals", []) for k, v in block.items()}


def _variables(module: dict) -> dict:
    return {k: v for block in module.get("variable", []) for k, v in block.items()}


def _iam_statements() -> list[dict]:
    docs = data_sources(load_module(TERRAFORM / "modules" / "iam"), "aws_iam_policy_document")
    return docs["collector"]["statement"]


def _iam_key_pattern(landing_prefix: str) -> str:
    """The collector's object-key pattern of the IAM policy, with var.landing_prefix substituted."""
    pattern = _locals(load_module(TERRAFORM / "modules" / "iam"))["collector_key_pattern"]
    return pattern.replace("${var.landing_prefix}", landing_prefix)


def _iam_matches(pattern: str, key: str) -> bool:
    """IAM's wildcard match: `*` is any run of characters (slashes included), `?` one character."""
    return fnmatch.fnmatchcase(key, pattern)


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return _load_docs()


@pytest.fixture(scope="module")
def renderer():
    return load_script("render_helm_values")


@pytest.fixture(scope="module")
def values(renderer) -> dict:
    """The Helm values rendered for SETTINGS (the code location the collector is rendered next to)."""
    return renderer.render(yaml.safe_load((INFRA / "helm" / "values.yaml").read_text()), SETTINGS, TAG)


@pytest.fixture(scope="module")
def rendered(docs, renderer, values) -> list[dict]:
    return renderer.render_collector(docs, values, SETTINGS)


# ------------------------------------------------------------------------------------------------
# shape: one replica, persistent state, the same image as the code server
# ------------------------------------------------------------------------------------------------


def test_manifests_parse_into_the_expected_objects(docs):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted([
        ("ServiceAccount", NAME),
        ("StorageClass", "personalization-collector-gp3"),
        ("StatefulSet", NAME),
        ("Service", NAME),
        ("Service", "personalization-collector-alb"),
        ("NetworkPolicy", NAME),
    ])
    namespace = yaml.safe_load((INFRA / "helm" / "namespace.yaml").read_text().split("---")[0])["metadata"]["name"]
    assert namespace == _locals(load_module(TERRAFORM / "environments" / "example"))["namespace"]
    for doc in docs:
        if doc["kind"] != "StorageClass":  # cluster-scoped
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created by External Secrets, never here"
    monitor = _load_docs(PODMONITOR)[0]
    assert monitor["kind"] == "PodMonitor" and monitor["metadata"]["namespace"] == namespace


def test_one_replica_with_its_state_on_a_persistent_volume(docs):
    """The dedup index and the preference store are per-process SQLite files: one pod, on a volume that follows it."""
    config = _collector_config_module()
    statefulset = _one(docs, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 1, "replicas do not share the SQLite state (see the manifest header)"
    state_dir = _env_entries(_container(docs))[config.STATE_DIR_ENV]["value"]
    mounts = {m["mountPath"]: m["name"] for m in _container(docs)["volumeMounts"]}
    assert state_dir in mounts, f"{config.STATE_DIR_ENV}={state_dir} is not a mounted volume"
    claims = {c["metadata"]["name"]: c for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert mounts[state_dir] in claims, "the state dir must be a PersistentVolumeClaim, not an emptyDir"
    claim = claims[mounts[state_dir]]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    storage_class = _one(docs, "StorageClass", claim["storageClassName"])
    assert storage_class["provisioner"] == "ebs.csi.aws.com"
    assert storage_class["reclaimPolicy"] == "Retain" and storage_class["parameters"]["encrypted"] == "true"
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # EKS provisions EBS volumes only through the CSI driver add-on
    addons = resources(load_module(TERRAFORM / "modules" / "eks"), "aws_eks_addon")
    assert addons["ebs_csi"]["addon_name"] == "aws-ebs-csi-driver"
    assert addons["ebs_csi"]["service_account_role_arn"] == "${aws_iam_role.ebs_csi.arn}"


def test_same_image_and_platform_as_the_code_server(docs, renderer, rendered, values):
    deployment = values["dagster-user-deployments"]["deployments"][0]
    image = deployment["image"]
    assert _container(rendered)["image"] == f"{image['repository']}:{TAG}" == f"{image['repository']}:{image['tag']}"
    assert _container(rendered)["imagePullPolicy"] == image["pullPolicy"]
    env = _pod_environment(_container(rendered))
    for name in renderer.SHARED_WITH_CODE_LOCATION:
        assert env[name] == str(deployment["env"][name]), f"{name} differs from the code location's"
        assert _env_entries(_container(docs))[name]["value"] == renderer.PLACEHOLDER, f"{name} must come from the renderer"


# ------------------------------------------------------------------------------------------------
# settings and secrets, derived from collector/config.py
# ------------------------------------------------------------------------------------------------


def test_every_collector_setting_is_set_explicitly(docs):
    """Each setting config.py names is set in the manifest (a new one fails here until the deployment decides it)."""
    constants = _settings_constants()
    assert {"WRITE_KEYS_ENV", "STATE_DIR_ENV", "PREFERENCE_TOKEN_SECRET_ENV"} <= set(constants), constants
    env = _env_entries(_container(docs))
    missing = sorted(v for v in constants.values() if v not in env)
    assert not missing, f"infra/helm/collector.yaml does not set {missing}"
    assert env["PERSONALIZATION_ENV"]["value"] == "prod"


def test_the_rendered_manifest_is_a_valid_collector_configuration(rendered, tmp_path):
    """load_collector_config (the collector's own validation, prod rules) accepts exactly the pod's environment."""
    config = _collector_config_module()
    env = _pod_environment(_container(rendered))
    env[config.STATE_DIR_ENV] = str(tmp_path / "state")  # the volume's mount path is not writable here
    loaded = config.load_collector_config(env)
    assert loaded.landing.url == SETTINGS["landing_url"]
    assert loaded.landing.aws_region == SETTINGS["aws_region"]
    # the preference store's view of the platform
    assert (loaded.platform.lake_url, loaded.platform.ledger_url) == (SETTINGS["lake_url"], SETTINGS["ledger_url"])
    assert loaded.platform.ledger_object_lock == "COMPLIANCE" and loaded.platform.pseudonym_keys_from_env
    assert loaded.write_keys == tuple(SECRET_VALUES["PERSONALIZATION_COLLECTOR_WRITE_KEYS"].split(","))
    assert loaded.preference_token_secret == SECRET_VALUES["PERSONALIZATION_PREFERENCE_TOKEN_SECRET"]
    assert loaded.faults == config.Faults(), "no fault injection in production"


def test_without_a_secret_the_configuration_is_refused(rendered, tmp_path):
    """The check above can fail: the same environment without the write keys is refused by the collector."""
    config = _collector_config_module()
    env = _pod_environment(_container(rendered))
    env[config.STATE_DIR_ENV] = str(tmp_path / "state")
    del env[config.WRITE_KEYS_ENV]
    with pytest.raises(Exception, match=config.WRITE_KEYS_ENV):
        config.load_collector_config(env)


def test_secrets_come_only_from_secret_key_refs(rendered, tmp_path):
    """The config's secret fields (repr=False: never logged) are filled only by secretKeyRef variables."""
    config = _collector_config_module()
    entries = _env_entries(_container(rendered))
    env = _pod_environment(_container(rendered))
    env[config.STATE_DIR_ENV] = str(tmp_path / "state")
    loaded = config.load_collector_config(env)
    hidden = [f.name for f in dataclasses.fields(loaded) if not f.repr]
    assert {"write_keys", "preference_token_secret"} <= set(hidden), hidden

    def fills(env_value: str, field_value) -> bool:
        if isinstance(field_value, tuple):
            return tuple(k.strip() for k in env_value.split(",") if k.strip()) == field_value
        return env_value.strip() == field_value

    for field in hidden:
        value = getattr(loaded, field)
        assert value, f"secret field {field} is not provided by the manifest"
        sources = [name for name, v in env.items() if fills(v, value)]
        assert len(sources) == 1, (field, sources)
        entry = entries[sources[0]]
        assert "value" not in entry, f"{sources[0]} is a literal value: it must come from a secretKeyRef"
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == NAME and ref["key"] == sources[0]
        assert not ref.get("optional"), f"{sources[0]} must not be optional: the pod must not start without it"
    # the platform's secret settings (settings.EnvSettings fields with repr=False: the pseudonymization keys)
    from personalization_assets.settings import EnvSettings

    platform_secrets = {str(f.validation_alias) for f in EnvSettings.model_fields.values() if f.repr is False}
    assert "PERSONALIZATION_PSEUDONYM_KEYS" in platform_secrets
    for name in platform_secrets & set(entries):
        assert "value" not in entries[name], f"{name} is a literal value: it must come from a secretKeyRef"
    for name, entry in entries.items():
        assert set(entry) <= {"name", "value", "valueFrom"}
        if "valueFrom" in entry:
            assert set(entry["valueFrom"]) == {"secretKeyRef"}, f"{name}: only secretKeyRef"
    assert "envFrom" not in _container(rendered)


def test_external_secrets_create_every_referenced_secret_key(docs):
    template = ESO_TEMPLATE.read_text()
    rendered = re.sub(r"\$\{(\w+)\}", lambda m: f"x-{m.group(1)}", template)
    eso = [d for d in yaml.safe_load_all(rendered) if d]
    synced = {d["spec"]["target"]["name"]: d for d in eso if d["kind"] == "ExternalSecret"}
    refs = [e["valueFrom"]["secretKeyRef"] for e in _container(docs)["env"] if "valueFrom" in e]
    for ref in refs:
        assert ref["name"] in synced, f"no ExternalSecret creates {ref['name']}"
        keys = {d["secretKey"] for d in synced[ref["name"]]["spec"].get("data", [])}
        assert ref["key"] in keys, f"{ref['name']} has no key {ref['key']}"
    own = synced[NAME]
    assert {d["secretKey"] for d in own["spec"]["data"]} == {r["key"] for r in refs if r["name"] == NAME}
    assert {d["remoteRef"]["key"] for d in own["spec"]["data"]} == {
        "x-collector_write_keys_secret_name",
        "x-collector_preference_token_secret_name",
    }
    store = next(d for d in eso if d["kind"] == "SecretStore" and d["metadata"]["name"] == own["spec"]["secretStoreRef"]["name"])
    assert store["spec"]["provider"]["aws"]["auth"]["jwt"]["serviceAccountRef"]["name"] == "x-collector_service_account"
    env = load_module(TERRAFORM / "environments" / "example")
    assert _locals(env)["collector_service_account"] == _one(docs, "ServiceAccount")["metadata"]["name"]


# ------------------------------------------------------------------------------------------------
# the pod: CLI, port, probes, hardening, writable paths
# ------------------------------------------------------------------------------------------------


def test_command_starts_the_collector_cli_on_the_container_port(docs):
    import tomllib

    from personalization_assets import cli

    container = _container(docs)
    command = container["command"]
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[command[0]] == "personalization_assets.cli:main"
    args = cli.build_parser().parse_args(command[1:])
    assert args.func is cli._cmd_collect
    assert args.host == "0.0.0.0", "listen on the pod's address, not loopback"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert args.port == port
    annotations = _one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    for service in (_one(docs, "Service"), _one(docs, "Service", "personalization-collector-alb")):
        assert service["spec"]["ports"][0]["targetPort"] in ("http", port)
        assert service["spec"]["selector"].items() <= _one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"].items()
    assert _one(docs, "Service")["spec"]["clusterIP"] == "None"
    assert _one(docs, "StatefulSet")["spec"]["serviceName"] == _one(docs, "Service")["metadata"]["name"]


def test_pod_runs_hardened(docs):
    pod = _one(docs, "StatefulSet")["spec"]["template"]["spec"]
    container = _container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    user = re.findall(r"^USER (\d+)", dockerfile, re.M)[-1]
    assert pod["securityContext"]["runAsUser"] == int(user), "the image's own non-root user"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    resources_ = container["resources"]
    assert {"cpu", "memory"} <= set(resources_["requests"]) and "memory" in resources_["limits"]
    eks_locals = _locals(load_module(TERRAFORM / "modules" / "eks"))
    assert pod["nodeSelector"] == {eks_locals["pool_label_key"]: "system"}, "on-demand system nodes, never spot"
    assert "tolerations" not in pod


def test_every_written_path_is_a_volume(docs):
    """With a read-only root filesystem the collector may write only to mounted volumes: its state dir, the
    DAGSTER_HOME the CLI writes dagster.yaml into at start, and the temp/data dirs."""
    config = _collector_config_module()
    env = _env_entries(_container(docs))
    mounts = [m["mountPath"] for m in _container(docs)["volumeMounts"]]
    for name in (config.STATE_DIR_ENV, "DAGSTER_HOME", "TMPDIR", "PERSONALIZATION_DATA_DIR"):
        path = env[name]["value"]
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), f"{name}={path} is not on a volume"


def test_proxy_trust_is_the_vpc_only(docs, rendered, renderer, values):
    env = _env_entries(_container(rendered))
    assert ipaddress.ip_network(env["FORWARDED_ALLOW_IPS"]["value"]) == ipaddress.ip_network(SETTINGS["vpc_cidr"])
    assert _env_entries(_container(docs))["FORWARDED_ALLOW_IPS"]["value"] == renderer.PLACEHOLDER
    for bad in ("0.0.0.0/0", "not-a-cidr"):
        with pytest.raises(renderer.RenderError, match="vpc_cidr"):
            renderer.render_collector(docs, values, {**SETTINGS, "vpc_cidr": bad})


# ------------------------------------------------------------------------------------------------
# the collector's IAM policy, evaluated: a small model of IAM for the S3 requests the collector makes
# ------------------------------------------------------------------------------------------------


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments of an HCL call."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[(" and 1 or (ch in "])" and -1 or 0)
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    return out + ([current.strip()] if current.strip() else [])


def _evaluate(expr, variables: dict, locals_: dict):
    """The value of an expression of the collector policy: strings with ${var.x}/${local.x}, lists, concat(...)."""
    if isinstance(expr, list):
        out = []
        for item in expr:
            value = _evaluate(item, variables, locals_)
            out += value if isinstance(value, list) else [value]
        return out
    whole = re.fullmatch(r"\$\{local\.(\w+)\}", expr)
    if whole:
        return _evaluate(locals_[whole.group(1)], variables, locals_)
    call = re.fullmatch(r"\$\{concat\((.*)\)\}", expr, re.S)
    if call:
        out = []
        for arg in _split_args(call.group(1)):
            inner = [a.strip() for a in _split_args(arg[1:-1])] if arg.startswith("[") else None
            for ref in inner if inner is not None else [arg]:
                value = _evaluate("${" + ref + "}", variables, locals_)
                out += value if isinstance(value, list) else [value]
        return out

    def substitute(m):
        kind, name = m.group(1), m.group(2)
        value = variables[name] if kind == "var" else _evaluate(locals_[name], variables, locals_)
        assert isinstance(value, str), f"{kind}.{name} is not a string"
        return value

    result = re.sub(r"\$\{(var|local)\.(\w+)\}", substitute, expr)
    assert "${" not in result, f"cannot evaluate {expr!r}"
    return result


@dataclasses.dataclass
class S3Policy:
    statements: list[dict]

    @staticmethod
    def _match(pattern: str, value: str) -> bool:
        return fnmatch.fnmatchcase(value, pattern)  # IAM: * any run of characters (slashes too), ? one

    def _applies(self, statement: dict, action: str, arn: str, prefix: str | None) -> bool:
        if not any(self._match(a, action) for a in statement["actions"]):
            return False
        if statement.get("resources") is not None:
            if not any(self._match(r, arn) for r in statement["resources"]):
                return False
        elif any(self._match(r, arn) for r in statement["not_resources"]):
            return False
        for condition in statement.get("conditions", []):
            assert (condition["test"], condition["variable"]) == ("StringLike", "s3:prefix"), condition
            if prefix is None or not any(self._match(v, prefix) for v in condition["values"]):
                return False
        return True

    def allows(self, action: str, arn: str, prefix: str | None = None) -> bool:
        if any(s["effect"] == "Deny" and self._applies(s, action, arn, prefix) for s in self.statements):
            return False
        return any(s["effect"] == "Allow" and self._applies(s, action, arn, prefix) for s in self.statements)


def _collector_policy(buckets: dict[str, str], prefixes: dict[str, str]) -> S3Policy:
    """The collector role's S3 statements with the module's variables set to these buckets and prefixes."""
    iam = load_module(TERRAFORM / "modules" / "iam")
    variables = {f"{b}_bucket_arn": f"arn:aws:s3:::{name}" for b, name in buckets.items()}
    variables.update({f"{b}_prefix": p for b, p in prefixes.items()})
    locals_ = _locals(iam)
    statements = []
    for st in _iam_statements():
        if not any(a.startswith("s3:") for a in st["actions"]):
            continue
        entry = {"sid": st["sid"], "effect": st.get("effect", "Allow"), "actions": st["actions"]}
        if "resources" in st:
            entry["resources"] = _evaluate(st["resources"], variables, locals_)
        else:
            entry["not_resources"] = _evaluate(st["not_resources"], variables, locals_)
        entry["conditions"] = [{**c, "values": _evaluate(c["values"], variables, locals_)} for c in st.get("condition", [])]
        statements.append(entry)
    return S3Policy(statements)


def _s3_requests_as_iam(requests: list[tuple[str, str, str, dict]]) -> list[tuple[str, str, str | None, str]]:
    """(action, resource ARN, s3:prefix, request) of each recorded S3 request (path-style), as IAM authorizes it."""
    from urllib.parse import parse_qs, unquote

    out = []
    for method, path, query, headers in requests:
        bucket, _, key = unquote(path).lstrip("/").partition("/")
        q = parse_qs(query, keep_blank_values=True)
        what = f"{method} {path}?{query}"
        if not key:
            if method == "GET" and ("list-type" in q or "prefix" in q or not q):
                out.append(("s3:ListBucket", f"arn:aws:s3:::{bucket}", q.get("prefix", [None])[0], what))
            else:
                out.append((f"s3:unmodelled-bucket-request", f"arn:aws:s3:::{bucket}", None, what))
            continue
        arn = f"arn:aws:s3:::{bucket}/{key}"
        if method in ("GET", "HEAD"):
            out.append(("s3:GetObjectRetention" if "retention" in q else "s3:GetObject", arn, None, what))
        elif method in ("PUT", "POST") and ("uploads" in q or "uploadId" in q or method == "PUT"):
            out.append(("s3:PutObject", arn, None, what))
            if "x-amz-object-lock-mode" in headers or "retention" in q:
                out.append(("s3:PutObjectRetention", arn, None, what))
        elif method == "DELETE":
            action = "s3:AbortMultipartUpload" if "uploadId" in q else ("s3:DeleteObjectVersion" if "versionId" in q else "s3:DeleteObject")
            out.append((action, arn, None, what))
        else:
            out.append(("s3:unmodelled-object-request", arn, None, what))
    return out


# ------------------------------------------------------------------------------------------------
# the real app on the pod's environment: S3 (recorded), the ALB in front of it
# ------------------------------------------------------------------------------------------------

PEER_HEADER = "x-test-peer"  # the TCP peer of a request (one client, so the app's lifespan runs once)
NODE_IP = str(ipaddress.ip_network(SETTINGS["vpc_cidr"]).network_address + 1000)  # kube-proxy on a node of the VPC
OUTSIDE_IP = "203.0.113.50"  # anyone on the internet reaching the pod some other way
ALB_HEADERS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": CLIENT_IP, "X-Forwarded-Port": "443"}
PREFIXES = {"landing": "landing/", "lake": "lake/", "ledger": "ledger/"}


def _with_peer(asgi):
    """The connection's peer address from PEER_HEADER (default: a node of the VPC), set before uvicorn's proxy-header
    middleware looks at it, as the socket would."""

    async def app(scope, receive, send):
        if scope["type"] == "http":
            peer = dict(scope["headers"]).get(PEER_HEADER.encode(), NODE_IP.encode()).decode()
            scope = {**scope, "client": (peer, 40000)}
        await asgi(scope, receive, send)

    return app


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server that records every request (method, path, query, x-amz headers), with the platform's three
    buckets (the ledger with Object Lock, as Terraform creates it)."""
    import threading
    import uuid

    import boto3
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    from tests.conftest import free_port

    log: list[tuple[str, str, str, dict]] = []
    backend = DomainDispatcherApplication(create_backend_app)

    def recording(environ, start_response):
        headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_X_AMZ_")}
        log.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""), headers))
        return backend(environ, start_response)

    port = free_port()
    server = make_server("127.0.0.1", port, recording, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    run = uuid.uuid4().hex[:10]
    buckets = {b: f"{b}-{run}" for b in ("landing", "lake", "ledger")}
    for b, name in buckets.items():
        client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
                             ObjectLockEnabledForBucket=b == "ledger")
    yield {"endpoint": endpoint, "client": client, "buckets": buckets, "log": log}
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def pod_env(rendered, s3, tmp_path_factory) -> dict[str, str]:
    """The rendered pod's environment, pointed at the test buckets; the lake holds what the platform would have
    written before the collector starts: the key ids and a suppression list (one erased subject)."""
    import pyarrow as pa

    from personalization_assets.core.pseudonym_keys import parse_key_map
    from personalization_assets.core.pseudonymize import KeyChain, check_key_ids
    from personalization_assets.core.storage import LakeStorage

    config = _collector_config_module()
    env = _pod_environment(_container(rendered))
    urls = {b: f"s3://{s3['buckets'][b]}/{PREFIXES[b]}" for b in PREFIXES}
    env.update({
        "PERSONALIZATION_LANDING_URL": urls["landing"], "PERSONALIZATION_LAKE_URL": urls["lake"],
        "PERSONALIZATION_LEDGER_URL": urls["ledger"], "PERSONALIZATION_S3_ENDPOINT_URL": s3["endpoint"],
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",  # the pod has IRSA instead
        config.STATE_DIR_ENV: str(tmp_path_factory.mktemp("collector-state")),
        "PERSONALIZATION_DATA_DIR": str(tmp_path_factory.mktemp("collector-scratch")),
        "DAGSTER_HOME": str(tmp_path_factory.mktemp("collector-home")),
    })
    lake = LakeStorage(url=urls["lake"], s3_endpoint_url=s3["endpoint"], aws_region=env["AWS_REGION"],
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    keys, active = parse_key_map(env["PERSONALIZATION_PSEUDONYM_KEYS"], env["PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION"])
    from personalization_assets.core import pseudonymize

    with pytest.MonkeyPatch.context() as mp:  # the platform records the key ids; its process cache is not the pod's
        mp.setattr(pseudonymize, "_VERIFIED", set())
        check_key_ids(lake, keys, "the test", record=True)
    lake.write_table("privacy", "suppression_list", pa.table({"identifier": [KeyChain(keys, active).pseudonym("erased-user")]}))
    return env


def _build_app(pod_env: dict[str, str], mp: pytest.MonkeyPatch, forwarded_allow_ips: bool = True):
    """The app as `personalization collect` runs it: config from the process environment (the pod's), uvicorn with
    its defaults (proxy headers trusted from FORWARDED_ALLOW_IPS)."""
    import uvicorn

    from personalization_assets.collector.app import create_app
    from tests.conftest import clear_platform_env

    clear_platform_env(mp)
    for name, value in pod_env.items():
        mp.setenv(name, value)
    if not forwarded_allow_ips:
        mp.delenv("FORWARDED_ALLOW_IPS")
    app = create_app(_collector_config_module().load_collector_config())
    server_config = uvicorn.Config(app, log_level="warning")  # the defaults server.serve relies on
    server_config.load()
    return app, _with_peer(server_config.loaded_app)


def _routes(app) -> set[tuple[str, str]]:
    from starlette.routing import Mount, Route

    out = set()
    for route in app.routes:
        if isinstance(route, Route):
            out |= {(route.path, m) for m in route.methods}
        elif isinstance(route, Mount):
            out.add((route.path + "/*", "MOUNT"))
    return out


def _landing_objects(s3) -> dict[str, list[dict]]:
    client, bucket = s3["client"], s3["buckets"]["landing"]
    out = {}
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        out[obj["Key"]] = [json.loads(line) for line in gzip.decompress(body).splitlines()]
    return out


@pytest.fixture(scope="module")
def scenario(docs, pod_env, s3):
    """One production-like session, run once: the app starts (key check, suppression list read and audited), then
    through the ALB an SDK batch, the preference center's page and its own post, a forged post from outside the
    VPC, the probes and a scrape; then the writer's recovery check of a collector object. Every S3 request the
    collector made is recorded."""
    import base64

    from starlette.testclient import TestClient

    container = _container(docs)
    annotations = _one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    mp = pytest.MonkeyPatch()
    before = set(_landing_objects(s3))
    del s3["log"][:]  # what the test wrote and read itself is not the collector's
    out: dict = {}
    try:
        app, asgi = _build_app(pod_env, mp)
        out["app"] = app
        with TestClient(asgi, base_url=f"http://{PUBLIC_HOST}", follow_redirects=False) as client:
            out["probe"] = client.get(container["livenessProbe"]["httpGet"]["path"])
            # the center opens once the suppression list was applied (in the background, at start)
            deadline = time.monotonic() + 30
            while "preference_center" in out["probe"].json() and out["probe"].json()["preference_center"] != "ready":
                assert time.monotonic() < deadline, f"the preference center never got ready: {out['probe'].json()}"
                time.sleep(0.05)
                out["probe"] = client.get(container["livenessProbe"]["httpGet"]["path"])
            out["scrape"] = client.get(annotations["prometheus.io/path"])
            key = SECRET_VALUES["PERSONALIZATION_COLLECTOR_WRITE_KEYS"].split(",")[0]
            out["batch"] = client.post("/v1/batch", headers={**ALB_HEADERS, "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()},
                                       json={"batch": [{"type": "track", "event": "Article Viewed", "userId": "u1", "messageId": "deploy-1"}]})
            out["page"] = client.get("/privacy/preferences", headers={**ALB_HEADERS, "Accept": "text/html"})
            anonymous = out["page"].headers.get("set-cookie", "").split(";", 1)[0]
            purpose = next(iter(app.state.policy.purposes))
            post = {**ALB_HEADERS, "Origin": f"https://{PUBLIC_HOST}", "Sec-Fetch-Site": "same-origin", "Cookie": anonymous,
                    "Content-Type": "application/x-www-form-urlencoded"}
            out["saved"] = client.post("/privacy/preferences", headers=post, content=f"purpose={purpose}")
            out["forged"] = client.post("/privacy/preferences", headers={**post, PEER_HEADER: OUTSIDE_IP}, content=f"purpose={purpose}")
            # the writer's check after a failed write (dedup.py): does a collector object exist?
            out["exists"] = app.state.writer.landing.exists("events/date=2026-12-01/hour=10/collector-1-0123456789abcdef0123.jsonl.gz")
    finally:
        mp.undo()
    out["requests"] = list(s3["log"])
    out["new_objects"] = {k: v for k, v in _landing_objects(s3).items() if k not in before}
    return out


def test_probes_and_scrape_paths_are_routes_the_app_serves(docs, scenario):
    routes = _routes(scenario["app"])
    container = _container(docs)
    probed = {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    scraped = {
        _one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"],
        _load_docs(PODMONITOR)[0]["spec"]["podMetricsEndpoints"][0]["path"],
    }
    eks = load_module(TERRAFORM / "modules" / "eks")
    alb_checked = {resources(eks, "aws_lb_target_group")["collector"]["health_check"][0]["path"]}
    for path in probed | scraped | alb_checked:
        assert (path, "GET") in routes, f"{path} is not a GET route of the collector app: {sorted(routes)}"
    assert probed == alb_checked, "kubelet and ALB must judge health the same way"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", container["ports"][0]["containerPort"])
    assert scenario["probe"].status_code == 200, scenario["probe"].text
    assert scenario["scrape"].status_code == 200 and "collector_write_seconds" in scenario["scrape"].text


def test_public_listener_hides_health_and_metrics_but_not_the_api(docs, scenario):
    eks = load_module(TERRAFORM / "modules" / "eks")
    rule = resources(eks, "aws_lb_listener_rule")["collector_internal_paths"]
    assert rule["action"][0]["type"] == "fixed-response"
    assert rule["condition"][0]["path_pattern"][0]["values"] == "${var.collector_internal_paths}"
    hidden = _variables(eks)["collector_internal_paths"]["default"]
    container = _container(docs)
    internal = {container["livenessProbe"]["httpGet"]["path"],
                _one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]}
    for path in internal:
        assert any(fnmatch.fnmatchcase(path, p) for p in hidden), f"{path} is answered to the internet"
    public = {path for path, method in _routes(scenario["app"]) if path not in internal}
    assert public, "the app has public routes"
    for path in public:
        probe = path.replace("/*", "/batch").replace("{endpoint}", "batch")
        assert not any(fnmatch.fnmatchcase(probe, p) for p in hidden), f"{probe} would be blocked"


def test_events_land_where_the_role_may_write_with_the_clients_ip(scenario, s3):
    """The writer's real object key is inside the collector role's PutObject resource, and context.ip is the
    client's (the ALB's X-Forwarded-For, trusted from the VPC), not a node's."""
    assert scenario["batch"].status_code == 200, scenario["batch"].text
    batches = {k: v for k, v in scenario["new_objects"].items() if any(m.get("messageId") == "deploy-1" for m in v)}
    assert len(batches) == 1
    key, messages = next(iter(batches.items()))
    pattern = _iam_key_pattern(PREFIXES["landing"])
    assert _iam_matches(pattern, key), f"{key} is outside the collector role's {pattern}"
    assert messages[0]["context"]["ip"] == CLIENT_IP
    assert scenario["exists"] is False


def test_preference_center_works_behind_the_alb_and_refuses_forged_proxy_headers(scenario):
    """Trusted from the VPC: the center sees https (Secure cookie) and accepts its own page's posts. From outside
    the VPC the same headers are ignored: the post is cross-origin (http vs https) and refused."""
    assert scenario["page"].status_code == 200, scenario["page"].text
    assert "Secure" in scenario["page"].headers["set-cookie"], "without the proxy trust the cookie is not marked Secure"
    assert scenario["saved"].status_code == 303, scenario["saved"].text
    assert scenario["forged"].status_code == 403 and scenario["forged"].json()["code"] == "cross_origin"


def test_without_forwarded_allow_ips_the_preference_center_breaks(pod_env):
    """Why FORWARDED_ALLOW_IPS is in the manifest: with uvicorn's default (loopback only) the page's own post,
    arriving through the ALB, is refused as cross-origin."""
    from starlette.testclient import TestClient

    mp = pytest.MonkeyPatch()
    env = {**pod_env, _collector_config_module().STATE_DIR_ENV: pod_env[_collector_config_module().STATE_DIR_ENV] + "-2"}
    try:
        _, asgi = _build_app(env, mp, forwarded_allow_ips=False)
        with TestClient(asgi, base_url=f"http://{PUBLIC_HOST}", follow_redirects=False) as client:
            deadline = time.monotonic() + 30
            while client.get("/health").json().get("preference_center", "ready") != "ready":
                assert time.monotonic() < deadline, "the preference center never got ready"
                time.sleep(0.05)
            page = client.get("/privacy/preferences", headers=ALB_HEADERS)
            anonymous = page.headers["set-cookie"].split(";", 1)[0]
            assert "Secure" not in page.headers["set-cookie"]
            r = client.post("/privacy/preferences", content="purpose=analytics",
                            headers={**ALB_HEADERS, "Origin": f"https://{PUBLIC_HOST}", "Sec-Fetch-Site": "same-origin",
                                     "Cookie": anonymous, "Content-Type": "application/x-www-form-urlencoded"})
    finally:
        mp.undo()
    assert r.status_code == 403


def test_every_s3_request_of_the_collector_is_allowed_by_its_role(scenario, s3):
    """Each request the real app sent to S3 (start-up key check, suppression list read, its audit append, the
    writes, the recovery check) is allowed by the collector role's policy as written in Terraform."""
    policy = _collector_policy(s3["buckets"], PREFIXES)
    requests = _s3_requests_as_iam(scenario["requests"])
    denied = [(action, arn, prefix, what) for action, arn, prefix, what in requests if not policy.allows(action, arn, prefix)]
    assert not denied, "the collector role refuses requests the collector makes:\n" + "\n".join(map(str, denied))
    # the scenario exercised every path the role exists for (otherwise this test proves little)
    lake, ledger, landing = (f"arn:aws:s3:::{s3['buckets'][b]}/{PREFIXES[b]}" for b in ("lake", "ledger", "landing"))
    seen = {(action, arn) for action, arn, _, _ in requests}
    assert any(a == "s3:PutObject" and arn.startswith(landing + "events/") for a, arn in seen)
    assert any(a == "s3:GetObject" and arn.startswith(lake + "privacy/suppression_list/") for a, arn in seen)
    assert any(a == "s3:GetObject" and arn.startswith(lake + "privacy/pseudonym_key_ids/") for a, arn in seen)
    assert any(a == "s3:PutObjectRetention" and arn.startswith(ledger + "privacy/access_audit_log/segment=") for a, arn in seen)
    assert any(a == "s3:DeleteObject" and arn.endswith("privacy/access_audit_log/_writer.lease") for a, arn in seen)


@pytest.mark.parametrize("action, bucket, key", [
    ("s3:GetObject", "lake", "raw/events/date=2026-12-01/hour=10/data.parquet"),
    ("s3:GetObject", "lake", "consented/events/date=2026-12-01/hour=10/data.parquet"),
    ("s3:GetObject", "lake", "features/user_features/data.parquet"),
    ("s3:GetObject", "lake", "privacy/identity_links/data.parquet"),
    ("s3:GetObject", "lake", "privacy/consent_state/data.parquet"),
    ("s3:PutObject", "lake", "privacy/suppression_list/data.parquet"),
    ("s3:DeleteObject", "lake", "privacy/access_audit_log/_head.json"),
    ("s3:GetObject", "ledger", "privacy/consent_ledger/segment=000000000001/data.parquet"),
    ("s3:PutObject", "ledger", "privacy/consent_ledger/segment=000000000002/data.parquet"),
    ("s3:DeleteObject", "ledger", "privacy/access_audit_log/segment=000000000001/data.parquet"),
    ("s3:DeleteObjectVersion", "lake", "privacy/access_audit_log/_writer.lease"),
    ("s3:GetObject", "landing", "segment-logs/src/1764584100000/part-0.gz"),
    ("s3:GetObject", "landing", "events/date=2026-12-01/hour=10/cdp-batch-0001.jsonl.gz"),
    ("s3:GetObject", "landing", "crm/profiles.csv"),
    ("s3:PutObject", "landing", "crm/profiles.csv"),
    ("s3:DeleteObject", "landing", "events/date=2026-12-01/hour=10/collector-1-abc.jsonl.gz"),
])
def test_collector_role_refuses_everything_else(s3, action, bucket, key):
    policy = _collector_policy(s3["buckets"], PREFIXES)
    arn = f"arn:aws:s3:::{s3['buckets'][bucket]}/{PREFIXES[bucket]}{key}"
    assert not policy.allows(action, arn), f"the collector role allows {action} on {arn}"


def test_collector_role_lists_only_its_prefixes(s3):
    policy = _collector_policy(s3["buckets"], PREFIXES)
    lake, landing, ledger = (f"arn:aws:s3:::{s3['buckets'][b]}" for b in ("lake", "landing", "ledger"))
    for arn, prefix in ((lake, None), (lake, ""), (lake, "lake/"), (lake, "lake/raw/"), (lake, "lake/privacy/"),
                        (landing, "landing/"), (landing, "landing/crm/"), (ledger, "ledger/privacy/consent_ledger/")):
        assert not policy.allows("s3:ListBucket", arn, prefix), f"the collector role lists {arn} {prefix!r}"
    assert policy.allows("s3:ListBucket", lake, "lake/privacy/suppression_list/")
    # the model bites: a policy without its explicit denies would let a wider allow through
    widened = S3Policy([{"effect": "Allow", "actions": ["s3:GetObject"], "resources": ["*"]}, *policy.statements])
    assert not widened.allows("s3:GetObject", f"{lake}/lake/raw/events/data.parquet")
    assert S3Policy([{"effect": "Allow", "actions": ["s3:GetObject"], "resources": ["*"]}]).allows(
        "s3:GetObject", f"{lake}/lake/raw/events/data.parquet")


# ------------------------------------------------------------------------------------------------
# IAM: the collector role is IRSA for the manifest's service account, and fits the wiring
# ------------------------------------------------------------------------------------------------


def test_iam_key_pattern_is_the_writers_layout_and_nothing_else():
    from personalization_assets.collector.writer import object_name

    pattern = _iam_key_pattern("landing/")
    written = "landing/" + object_name("2026-12-01T10:15:00.000Z", ["m-1", "m-2"], 1764584100000)
    assert _iam_matches(pattern, written)
    # pyarrow's existence check lists "<key>/": inside the pattern, so a retry after a failed write can look
    assert _iam_matches(pattern, written + "/")
    for other in (
        "landing/events/date=2026-12-01/hour=10/segment-batch-0001.jsonl.gz",  # a CDP's file in the same folder
        "landing/segment-logs/src/1764584100000/part-0.gz",
        "landing/crm/profiles.csv",
        "landing/privacy_requests/2026-12-01.jsonl",
        "other/events/date=2026-12-01/hour=10/collector-1-abc.jsonl.gz",
    ):
        assert not _iam_matches(pattern, other), other


def test_collector_role_is_irsa_for_the_manifests_service_account(docs):
    iam = load_module(TERRAFORM / "modules" / "iam")
    assume = data_sources(iam, "aws_iam_policy_document")["collector_assume"]["statement"][0]
    conditions = {c["variable"]: c for c in assume["condition"]}
    assert conditions["${var.oidc_issuer}:sub"]["values"] == [
        "system:serviceaccount:${var.namespace}:${var.collector_service_account_name}"
    ]
    account = _one(docs, "ServiceAccount")
    assert _variables(iam)["collector_service_account_name"]["default"] == account["metadata"]["name"]
    env = load_module(TERRAFORM / "environments" / "example")
    calls = module_calls(env)
    assert calls["iam"]["collector_service_account_name"] == "${local.collector_service_account}"
    assert calls["iam"]["collector_role_name"] == "${local.collector_role_name}"
    assert calls["iam"]["collector_secret_arns"] == "${module.secrets.collector_secret_arns}"
    assert calls["iam"]["secret_arns"] == "${module.secrets.secret_arns}", "the runs keep their two secrets"
    # the landing fence admits the collector role (by the ARN the environment computes from the same name)
    assert calls["storage"]["collector_principal_arns"] == ["${local.collector_role_arn}"]
    assert _locals(env)["collector_role_arn"].endswith(":role/${local.collector_role_name}")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == "REPLACE_ME"


def test_pii_fences_admit_the_collector_whose_iam_policy_confines_it():
    storage = load_module(TERRAFORM / "modules" / "storage")
    policy = data_sources(storage, "aws_iam_policy_document")["data_bucket"]
    contents = [b["statement"]["content"] for b in policy["dynamic"] if "statement" in b]
    contents = [c[0] if isinstance(c, list) else c for c in contents]
    fence = next(c for c in contents if c["sid"] == "DenyPiiObjectAccessExceptPipeline")
    values = fence["condition"][0]["values"]
    assert "var.collector_principal_arns" in values and values.count("collector_principal_arns") == 1
    # passing the fences is safe only because the role denies everything but its own objects explicitly
    sids = {s["sid"] for s in _iam_statements() if s.get("effect") == "Deny"}
    assert {"DenyEverythingElseRead", "DenyEverythingElseWritten", "DenyDeletesButTheLease"} <= sids


def test_collector_secrets_are_separate_from_the_runs_secrets():
    secrets = load_module(TERRAFORM / "modules" / "secrets")
    locals_ = _locals(secrets)
    assert set(locals_["collector_secrets"]) == {"collector-write-keys", "collector-preference-token-secret"}
    assert not set(locals_["collector_secrets"]) & set(locals_["secrets"])
    collector = resources(secrets, "aws_secretsmanager_secret")["collector"]
    assert collector["kms_key_id"] == "${aws_kms_key.secrets.arn}"
    assert not resources(secrets, "aws_secretsmanager_secret_version"), "secret values must not pass through Terraform"
    iam = load_module(TERRAFORM / "modules" / "iam")
    assert "length(var.collector_secret_arns) == 2" in _variables(iam)["collector_secret_arns"]["validation"][0]["condition"]


# ------------------------------------------------------------------------------------------------
# exposure: NodePort <-> Terraform ALB
# ------------------------------------------------------------------------------------------------


def test_alb_idle_timeout_is_shorter_than_the_collectors_keep_alive(monkeypatch):
    """The ALB reuses its connections to the pod: the pod must not close one first (a 502 for the request that was
    on its way). The keep-alive is what `personalization collect` really passes to uvicorn (or uvicorn's default)."""
    import inspect
    import types

    import uvicorn

    from personalization_assets.collector import app as app_module
    from personalization_assets.collector import config as config_module
    from personalization_assets.collector import server

    captured: dict = {}
    fake_config = types.SimpleNamespace(write_keys=("k" * 8,), state_dir="/state", preference_token_secret=None)
    monkeypatch.setattr(config_module, "load_collector_config", lambda *a, **k: fake_config)
    monkeypatch.setattr(app_module, "create_app", lambda config: types.SimpleNamespace(state=types.SimpleNamespace(landing_uri="s3://x/events")))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: captured.update(kwargs))
    server.serve("0.0.0.0", 8088)
    assert captured, "serve() did not start uvicorn"
    keep_alive = captured.get("timeout_keep_alive", inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default)
    assert captured.get("proxy_headers", True) is True, "the proxy-header trust (FORWARDED_ALLOW_IPS) needs proxy_headers"
    idle = resources(load_module(TERRAFORM / "modules" / "eks"), "aws_lb")["collector"]["idle_timeout"]
    assert idle < keep_alive, f"the collector ALB's idle timeout ({idle} s) must be shorter than the pod's keep-alive ({keep_alive} s)"


def test_nodeport_matches_the_terraform_alb(docs):
    service = _one(docs, "Service", "personalization-collector-alb")
    assert service["spec"]["type"] == "NodePort"
    env = load_module(TERRAFORM / "environments" / "example")
    port = _locals(env)["collector_node_port"]
    assert service["spec"]["ports"][0]["nodePort"] == port
    calls = module_calls(env)
    assert calls["network"]["collector_node_port"] == calls["eks"]["collector_node_port"] == "${local.collector_node_port}"
    webserver = yaml.safe_load((INFRA / "helm" / "webserver-service.yaml").read_text())
    assert port != webserver["spec"]["ports"][0]["nodePort"]
    for module in ("network", "eks"):
        assert _variables(load_module(TERRAFORM / "modules" / module))["collector_node_port"]["default"] == port
    eks = load_module(TERRAFORM / "modules" / "eks")
    group = resources(eks, "aws_lb_target_group")["collector"]
    assert group["port"] == "${var.collector_node_port}" and group["target_type"] == "instance"
    lb = resources(eks, "aws_lb")["collector"]
    assert lb["drop_invalid_header_fields"] is True
    assert _variables(eks)["collector_alb_internal"]["default"] is False, "SDKs post from the internet"
    # access logs hold end users' IPs: their own prefix, expired with the landing data
    storage = load_module(TERRAFORM / "modules" / "storage")
    assert lb["access_logs"][0]["prefix"] == "${var.collector_access_log_prefix}"
    assert calls["eks"]["collector_access_log_prefix"] == "${module.storage.collector_alb_log_prefix}"
    rules = {r["id"]: r for r in resources(storage, "aws_s3_bucket_lifecycle_configuration")["logs"]["rule"]}
    assert rules["expire-collector-access-logs"]["filter"][0]["prefix"] == "${local.collector_alb_log_prefix}/"
    assert _variables(storage)["collector_access_log_retention_days"]["default"] <= 30
