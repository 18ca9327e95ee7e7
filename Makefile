# The one entry point: CI (.ci/run), pre-commit habits and the README all call these targets.
# `make help` lists them.
SHELL := /bin/bash
PY := .venv/bin/python
export AWS_LC_SYS_CMAKE_BUILDER := 0

.DEFAULT_GOAL := help
.PHONY: help setup install build wheel run services services-stop lint fmt test-rust test-py test-install faults gate bench docs ci

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: ## Minimal install: a virtualenv with the package (embedded default, no services)
	@test -x $(PY) || python3 -m venv .venv
	@$(PY) -m pip install -q --upgrade pip "maturin>=1.9.4,<2"
	@$(PY) -m pip install -q -e ".[cli,api]"

run: install ## Install, run the main job on the embedded default (no AWS), then serve the API
	@bash scripts/demo.sh

setup: ## Install every dependency (apt + pip + infra tools) for the full test suite
	@bash scripts/setup.sh

build: ## Rebuild the Rust extension in place (release)
	@# An extension built before the abi3 switch would shadow the new one (import prefers it).
	@rm -f python/greenlang_crypto/_core.cpython-*.so
	@$(PY) -m maturin develop --release -q

wheel: ## Build the abi3 manylinux wheel and the sdist into dist/ (checked for manylinux compliance)
	@rm -rf dist
	@$(PY) -m maturin build --release -q -o dist --auditwheel check
	@$(PY) -m maturin sdist -o dist >/dev/null
	@ls dist

services: ## Start PostgreSQL and the moto KMS server
	@PYTHON=$(PY) bash scripts/services.sh start

services-stop: ## Stop the test services
	@bash scripts/services.sh stop

fmt: ## Format Rust and Python sources
	cargo fmt
	$(PY) -m ruff format python tests benches
	$(PY) -m ruff check --fix python tests benches

lint: ## ruff, mypy --strict, stubtest, import contracts, cargo fmt --check, cargo clippy -D warnings
	$(PY) -m ruff check python tests benches
	$(PY) -m ruff format --check python tests benches
	$(PY) -m mypy
	$(PY) -m mypy.stubtest greenlang_crypto._core
	.venv/bin/lint-imports --no-cache
	@# The crypto core stays free of PyO3, also behind a feature gate clippy would not build.
	@! grep -rnw pyo3 src/core || { echo "src/core must not use PyO3"; exit 1; }
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --features python --all-targets -- -D warnings

test-rust: ## Rust core unit tests, with line coverage where rustc's LLVM tools are installed
	@llvm=/usr/lib/llvm-$$(rustc --version --verbose | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')/bin; \
	if [ -x "$$llvm/llvm-cov" ] && command -v cargo-llvm-cov >/dev/null; then \
		LLVM_COV=$$llvm/llvm-cov LLVM_PROFDATA=$$llvm/llvm-profdata \
			cargo llvm-cov --lib --summary-only --fail-under-lines 85; \
	else \
		echo "Rust coverage unavailable (no $$llvm/llvm-cov or cargo-llvm-cov): tests only"; \
		cargo test --lib; \
	fi

test-py: ## The Python test suite with line coverage (fails under 90%; starts the services)
	@set -a; eval "$$(PYTHON=$(PY) bash scripts/services.sh start | sed 's/^export //')"; set +a; \
	rm -rf .coverage-data && mkdir -p .coverage-data; export GLC_COVERAGE_DIR=$(CURDIR)/.coverage-data; \
	PYTHONUNBUFFERED=1 $(PY) -m coverage run -m pytest tests benches --ignore=tests/install --benchmark-disable -q \
		-p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; \
	$(PY) -m coverage combine -q && $(PY) -m coverage report; cov=$$?; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; exit $$cov

faults: ## The 15-minute fault campaign (GLC_CAMPAIGN_SEED=N replays one; starts the services)
	@set -a; eval "$$(PYTHON=$(PY) bash scripts/services.sh start | sed 's/^export //')"; set +a; \
	GLC_CAMPAIGN_SECONDS=900 $(PY) -m pytest tests/campaign -q -p no:cacheprovider -s

test-install: wheel ## The wheel in a venv per install flavour, unit tests on it, `make run` from a clone
	@GLC_WHEEL_DIR=$(CURDIR)/dist $(PY) -m pytest tests/install -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

gate: ## Benchmark gate: ratios against peers measured in the same run (PostgreSQL too)
	@set -a; eval "$$(PYTHON=$(PY) bash scripts/services.sh start | sed 's/^export //')"; set +a; \
	$(PY) benches/gate.py --json .benchmarks/gate.json

bench: ## Full pytest-benchmark run with peers (reports, no gate)
	$(PY) -m pytest benches --benchmark-only --benchmark-group-by=group -q

docs: ## Build the documentation site in strict mode
	@NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The gate runs before the Python tests: right after them PostgreSQL keeps the second core busy
# (autovacuum, checkpoints after bulk inserts), which the two-thread scaling check would see.
ci: setup lint test-rust gate test-install docs test-py ## Everything CI runs: set-up, lint, gate, all tests
