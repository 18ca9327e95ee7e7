#!/usr/bin/env bash
# Installs every dependency of the test suite on a fresh Debian 12 machine (run as root):
# Debian packages, a virtualenv with the package (built by maturin) and its dev extras, and
# the infrastructure tools (promtool, checkov, python-hcl2). Idempotent and quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=""
command -v pg_isready >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt="$need_apt postgresql postgresql-contrib"
command -v curl >/dev/null 2>&1 || need_apt="$need_apt curl"
command -v redis-server >/dev/null 2>&1 || need_apt="$need_apt redis-server"
# Fault tests: PgBouncer in transaction mode, and libfaketime to step one process's clock.
[ -x /usr/sbin/pgbouncer ] || need_apt="$need_apt pgbouncer"
command -v faketime >/dev/null 2>&1 || need_apt="$need_apt faketime"
command -v age >/dev/null 2>&1 || need_apt="$need_apt age"
if [ -n "$need_apt" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need_apt >/dev/null
  # Debian starts a cluster (and a Redis) on install; the tests run their own on other ports.
  service postgresql stop >/dev/null 2>&1 || true
  service redis-server stop >/dev/null 2>&1 || true
  service pgbouncer stop >/dev/null 2>&1 || true
fi
# Rust line coverage: cargo-llvm-cov, with Debian's LLVM tools of rustc's own LLVM major version
# (rustup's llvm-tools component cannot be downloaded here).
llvm_major=$(rustc --version --verbose | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if [ -n "$llvm_major" ] && [ ! -x "/usr/lib/llvm-$llvm_major/bin/llvm-cov" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "llvm-$llvm_major" >/dev/null \
    || echo "setup: no Debian package llvm-$llvm_major; Rust coverage will be skipped" >&2
fi
command -v cargo-llvm-cov >/dev/null 2>&1 || cargo install --locked -q cargo-llvm-cov
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "maturin>=1.9.4,<2"
# Build the Rust extension in release mode and install the package editable with all extras.
AWS_LC_SYS_CMAKE_BUILDER=0 .venv/bin/python -m pip install -q -e ".[all,dev,docs]"
PATH="$PWD/.venv/bin:$PATH" bash scripts/install_infra_tools.sh
