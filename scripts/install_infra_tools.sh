#!/usr/bin/env bash
# Install the tools the offline infrastructure tests (tests/infra/) need, on a
# fresh Debian 12 machine, as root:
#   * promtool   - from the Debian "prometheus" package (the daemon is never
#                  started or enabled; we only use the promtool binary),
#   * checkov    - in its own virtualenv at $REPO/.venv-checkov (it pins its own
#                  boto3 and an hcl2 fork that clash with the main test venv),
#   * python-hcl2 - into whichever python is active when this script runs.
# Idempotent and fast when everything is already present.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The python that receives python-hcl2: the active one (the test venv).
if [ -z "${PYTHON:-}" ]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
CHECKOV_VENV="${CHECKOV_VENV:-$REPO/.venv-checkov}"
# Interpreter used to create the checkov venv (any CPython >= 3.9 with venv).
BASE_PYTHON="${BASE_PYTHON:-python3}"

log() { printf '[install_infra_tools] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- promtool -----------------------------------------------------------------
if command -v promtool >/dev/null 2>&1; then
    log "promtool present: $(promtool --version 2>&1 | head -n1)"
else
    log "installing promtool (Debian package prometheus)"
    # policy-rc.d exit 101 stops dpkg maintainer scripts from starting the
    # daemon on machines where an init system is running.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        created_policy=1
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if [ "$created_policy" -eq 1 ]; then as_root rm -f "$policy"; trap - EXIT; fi
    # Make sure no prometheus daemon is left running or enabled.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    fi
    for svc in prometheus prometheus-node-exporter; do
        if [ -x "/etc/init.d/$svc" ]; then as_root "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
    done
    log "promtool installed: $(promtool --version 2>&1 | head -n1)"
fi

# --- checkov (own venv) -------------------------------------------------------
# Asking pip metadata is ~50 ms; `checkov --version` takes seconds.
checkov_version() {
    "$CHECKOV_VENV/bin/python" -c \
        'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null
}
if [ -x "$CHECKOV_VENV/bin/checkov" ] && checkov_version >/dev/null; then
    log "checkov present: $(checkov_version)"
else
    log "creating checkov venv at $CHECKOV_VENV"
    rm -rf "$CHECKOV_VENV"
    if ! "$BASE_PYTHON" -m venv "$CHECKOV_VENV" >/dev/null 2>&1; then
        # Debian's own python3 needs python3-venv for ensurepip.
        rm -rf "$CHECKOV_VENV"
        export DEBIAN_FRONTEND=noninteractive
        as_root apt-get update -qq
        as_root apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        BASE_PYTHON=/usr/bin/python3
        "$BASE_PYTHON" -m venv "$CHECKOV_VENV"
    fi
    "$CHECKOV_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$CHECKOV_VENV/bin/python" -m pip install -q --disable-pip-version-check checkov
    log "checkov installed: $(checkov_version)"
fi

# --- python-hcl2 and PyYAML into the active python ----------------------------
# tests/infra parses .tf files with python-hcl2 and YAML rules with PyYAML.
target_python="$("$PYTHON" -c 'import sys; print(sys.executable)')"
if "$PYTHON" -c 'import hcl2, yaml' >/dev/null 2>&1; then
    log "python-hcl2 and PyYAML present in $target_python"
else
    log "installing python-hcl2 and PyYAML into $target_python"
    "$PYTHON" -m pip install -q --disable-pip-version-check python-hcl2 PyYAML
fi
