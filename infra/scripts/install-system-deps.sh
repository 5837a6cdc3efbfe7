#!/usr/bin/env bash
# System packages the test suite needs, from Debian's archive (run as root; idempotent):
#   prometheus             promtool (check/test the alerting rules)
#   prometheus-pushgateway metrics push target for the monitoring tests
#   postgresql             a throwaway server for the Dagster-on-Postgres tests
#   chromium               headless browser for UI tests
# Packages already installed are skipped; nothing is started (tests start their own servers).
set -euo pipefail

PACKAGES=(prometheus prometheus-pushgateway postgresql chromium)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    echo "$pkg: already installed"
  else
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "error: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
# Debian's packages would start their services at install time; keep them off (tests start their own).
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
