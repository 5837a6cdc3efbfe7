"""Static checks of the user-code image definition (no Docker engine is needed or used)."""

from __future__ import annotations

import re
import tomllib

from .conftest import INFRA, REPO_ROOT

DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERIGNORE = INFRA / "docker" / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_multi_stage_non_root():
    instructions = _instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2, "build and runtime stages"
    final_stage_start = max(
        i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"
    )
    users = [
        rest for keyword, rest in instructions[final_stage_start:] if keyword == "USER"
    ]
    assert users, "the runtime stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "runtime user must not be root"
    runtime_runs = " ".join(
        rest for keyword, rest in instructions[final_stage_start:] if keyword == "RUN"
    )
    assert "build-essential" not in runtime_runs, "no compilers in the runtime image"


def test_installs_the_project_and_parses_dbt():
    runs = " ".join(rest for keyword, rest in _instructions() if keyword == "RUN")
    assert re.search(r"pip install \.( |$)", runs), "pip install . missing"
    assert "dbt parse" in runs and "target/manifest.json" in runs
    copies = " ".join(rest for keyword, rest in _instructions() if keyword == "COPY")
    for needed in (
        "personalization_assets",
        "privacy_policies",
        "dbt",
        "pyproject.toml",
    ):
        assert needed in copies, f"{needed} is not copied into the image"


def test_dagster_k8s_matches_the_dagster_pins():
    pyproject = tomllib.loads(
        (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    )
    deps = pyproject["project"]["dependencies"]
    postgres_pin = next(d for d in deps if d.startswith("dagster-postgres=="))
    version = postgres_pin.split("==")[1]
    match = re.search(
        r"ARG DAGSTER_K8S_VERSION=(\S+)", DOCKERFILE.read_text(encoding="utf-8")
    )
    assert match and match.group(1) == version, (
        "dagster-k8s must match the other dagster-* library pins"
    )


def test_python_version_is_supported():
    pyproject = tomllib.loads(
        (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    )
    requires = pyproject["project"]["requires-python"]
    version = re.search(
        r"ARG PYTHON_VERSION=(\d+\.\d+)", DOCKERFILE.read_text(encoding="utf-8")
    ).group(1)
    minor = int(version.split(".")[1])
    low = int(re.search(r">=\s*3\.(\d+)", requires).group(1))
    high = int(re.search(r"<\s*3\.(\d+)", requires).group(1))
    assert low <= minor < high


def test_dockerignore_is_used_and_excludes_local_state():
    link = INFRA / "docker" / "Dockerfile.dockerignore"
    assert link.exists() and link.resolve() == DOCKERIGNORE.resolve(), (
        "BuildKit reads <Dockerfile>.dockerignore"
    )
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "allow-list: exclude everything first"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert allowed >= {
        "pyproject.toml",
        "personalization_assets",
        "privacy_policies",
        "dbt",
    }
    assert not allowed & {
        ".venv",
        ".venv-tools",
        ".data",
        ".dagster_home",
        "tests",
        "infra",
        ".git",
    }
    assert "dbt/target/" in rules, "the manifest is rebuilt inside the image"
