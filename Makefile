# The two commands that matter: `make demo` and `make test`. Everything installs into .venv.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export PERSONALIZATION_DATA_DIR ?= $(CURDIR)/.data

DEMO_USERS ?= 2000
DEMO_EVENTS ?= 200000
DEMO_SEED ?= 42
DEMO_BAD_FRACTION ?= 0.01

.PHONY: help install demo dev collector test test-fast test-tier test-random dbt-parse system-deps tools bench bench-collector clean prod-rehearsal

help:
	@echo "make demo   - set up, generate a demo landing zone, materialize everything, print a summary"
	@echo "make dev    - Dagster UI + daemon on http://127.0.0.1:3000"
	@echo "make collector - event collector + preference center on http://127.0.0.1:8088 (needs PERSONALIZATION_COLLECTOR_WRITE_KEYS)"
	@echo "make test   - the whole test suite, every tier, 3 workers (installs everything it needs)"
	@echo "make test-fast - the unit tier only (under a minute)"
	@echo "make test-tier TIER=integration - one tier (unit, integration, ui, infra, bench)"
	@echo "make test-random SEED=N - unit + integration tiers in a random order (seed N)"
	@echo "make prod-rehearsal - the prod path on one machine (moto S3 + fakesnow servers, PERSONALIZATION_ENV=prod)"
	@echo "make bench  - benchmarks (BENCH_EVENTS=1000000 by default)"

# uv resolves and installs the same pinned set as pip (`pip freeze` identical, `pip check` clean): with checkov, 40 s
# instead of 108 s from an empty cache; pip stays the fallback when uv cannot be installed, run or reach the index. uv
# does not read pip's configuration (pip.conf, PIP_INDEX_URL): it resolves from PyPI (UV_INDEX_URL to change), and where
# PyPI is reachable only through an index configured for pip, uv fails and pip installs.
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (this machine sets it) a venv without .pyc files
# recompiles every module in every process (CLI runs, code servers, dbt): the test suite took 979-1064 s instead of ~800.
UV_VERSION ?= 0.13.10
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	{ $(BIN)/python -m pip install --quiet uv==$(UV_VERSION) && \
	  $(BIN)/python -m uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'; } || \
	  { echo "uv could not install the project: installing with pip"; $(BIN)/python -m pip install --quiet -e '.[dev]'; }
	@touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: | $(STAMP)
	@$(BIN)/python -c "from personalization_assets.cli import ensure_dagster_home; ensure_dagster_home()"

# the dbt manifest must exist before the definitions load (dagster-dbt reads it at import)
dbt-parse: $(STAMP)
	@if [ -f dbt/dbt_project.yml ]; then cd dbt && ../$(BIN)/dbt parse --quiet --profiles-dir . --target local; fi

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml dbt-parse
	@rm -rf $(PERSONALIZATION_DATA_DIR)/landing
	$(BIN)/personalization generate --users $(DEMO_USERS) --events $(DEMO_EVENTS) --seed $(DEMO_SEED) --bad-fraction $(DEMO_BAD_FRACTION)
	$(BIN)/personalization materialize

dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml dbt-parse
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

COLLECTOR_HOST ?= 127.0.0.1
COLLECTOR_PORT ?= 8088
collector: $(STAMP)
	$(BIN)/personalization collect --host $(COLLECTOR_HOST) --port $(COLLECTOR_PORT)

system-deps:
	@bash infra/scripts/install-system-deps.sh

tools: $(STAMP)
	@bash infra/scripts/install-tools.sh

# tiers: markers registered in pyproject.toml, given per directory by tests/conftest.py (README "Testing")
# 3 workers on the 2-core machine: the tests wait on subprocesses, servers and locks often enough that a third
# worker fills the gaps (whole suite, clean clone: 802 s on 2 workers, 681 s on 3; CPU 190 % with 3)
PYTEST_WORKERS ?= 3
# --no-loadscope-reorder: keep the slowest-modules-first order of tests/conftest.py (xdist would sort by test count)
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder
TIER ?= integration
SEED := $(or $(SEED),$(shell echo $$RANDOM))

# Test files (lakes, Dagster homes with their SQLite event logs, TMPDIR) go to a fresh directory on tmpfs when
# /dev/shm has 6 GB free: Dagster commits every event to SQLite, and on a disk each commit waits for an fsync
# (a fifth of a pipeline test's wall time while the disk was busy; little on an idle one). Removed after a passing run, kept (path printed) after a
# failing one. TEST_TMP_BASE=/some/dir puts it elsewhere. TMPDIR is shared like /tmp (mode 1777): the PostgreSQL test's
# server runs as the postgres user.
TEST_TMP_BASE ?= $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$$(df -Pk /dev/shm | awk 'NR==2 {print $$4}')" -gt 6000000 ] && echo /dev/shm || echo $${TMPDIR:-/tmp})
define run_pytest
	@tmp=$$(mktemp -d $(TEST_TMP_BASE)/pt.XXXXXX) && chmod 755 $$tmp && mkdir -m 1777 $$tmp/t || exit 1; echo "test files in $$tmp"; \
	TMPDIR=$$tmp/t $(1) --basetemp=$$tmp/p; rc=$$?; \
	if [ $$rc -eq 0 ]; then rm -rf $$tmp; else echo "test files kept in $$tmp (remove it when done)"; fi; exit $$rc
endef

test: $(STAMP) system-deps tools dbt-parse
	$(call run_pytest,PERSONALIZATION_REQUIRE_INFRA_TOOLS=1 $(BIN)/python -m pytest -q $(PYTEST_PARALLEL) tests)

test-fast: $(STAMP) dbt-parse
	$(call run_pytest,$(BIN)/python -m pytest -q -x $(PYTEST_PARALLEL) -m unit tests)

test-tier: $(STAMP) dbt-parse
	$(call run_pytest,$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m $(TIER) tests)

# no test may depend on another's side effects: modules and the tests inside each run in a shuffled order
test-random: $(STAMP) dbt-parse
	@echo "random order, seed $(SEED) (rerun the same order with SEED=$(SEED))"
	$(call run_pytest,$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "unit or integration" -p random_order --random-order-bucket=module --random-order-seed=$(SEED) tests)

bench: $(STAMP) dbt-parse
	$(BIN)/python -m bench.run

bench-collector: $(STAMP)
	$(BIN)/python -m bench.collector

clean:
	rm -rf .data .dagster_home dbt/target dbt/logs bench/work

# production rehearsal on one machine: moto S3 server + fakesnow server on loopback, PERSONALIZATION_ENV=prod, the CLI
prod-rehearsal: $(STAMP) dbt-parse
	$(BIN)/python infra/scripts/prod_rehearsal.py --users $(DEMO_USERS) --events $(DEMO_EVENTS) --seed $(DEMO_SEED) --bad-fraction $(DEMO_BAD_FRACTION)

# the import contract ([tool.importlinter] in pyproject.toml: layers, no cycles), checked by `make test` and `make test-fast`
.PHONY: lint-imports
lint-imports: $(STAMP)
	$(BIN)/lint-imports
test test-fast: lint-imports
