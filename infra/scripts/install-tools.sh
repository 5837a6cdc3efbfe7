#!/usr/bin/env bash
# Install the infrastructure lint tools in their own virtualenv (.venv-tools/), apart from the
# project venv: checkov pins packaging<24, boto3 1.35 and ships its own `hcl2` module, which would
# clash with python-hcl2 and the project's dependencies (see shared STACK_NOTES).
#
# Idempotent: does nothing when .venv-tools/bin/checkov already runs at the pinned version.
# Usage: infra/scripts/install-tools.sh            (from anywhere)
#        TOOLS_VENV=/path/to/venv infra/scripts/install-tools.sh
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_VENV="${TOOLS_VENV:-$REPO_ROOT/.venv-tools}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
PYTHON="${PYTHON:-python3}"

installed_version() {
  "$TOOLS_VENV/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version
print(version("checkov"))
PY
}

if [[ -x "$TOOLS_VENV/bin/checkov" && "$(installed_version)" == "$CHECKOV_VERSION" ]]; then
  echo "checkov $CHECKOV_VERSION already installed in $TOOLS_VENV"
  exit 0
fi

if [[ ! -x "$TOOLS_VENV/bin/python" ]]; then
  echo "creating $TOOLS_VENV"
  "$PYTHON" -m venv "$TOOLS_VENV"
fi
# the project venv's uv when `make install` put one there (6 s against 25 s with pip); pip otherwise or if it fails
UV_PYTHON="$REPO_ROOT/.venv/bin/python"
if ! { [[ -x "$UV_PYTHON" ]] && "$UV_PYTHON" -m uv --version >/dev/null 2>&1 \
       && "$UV_PYTHON" -m uv pip install --quiet --compile-bytecode --python "$TOOLS_VENV/bin/python" "checkov==$CHECKOV_VERSION"; }; then
  "$TOOLS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$TOOLS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi
echo "installed checkov $(installed_version) in $TOOLS_VENV"
