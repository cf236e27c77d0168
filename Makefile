# The training platform's commands. `make test` and `make demo` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
# One pytest worker more than the cores: the suites spend much of their time waiting on the processes they start
# (servers, trainings, a browser). On 2 cores, 3 workers ran `make test` in 28:26, 2 workers in 35:23 (2026-12-07).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
COMPONENTS := -e "./sdk[server,cli]" -e ./services/backend -e ./services/trainer_timm -e ./services/trainer_ultralytics -e ./services/dashboard
SETUP_STAMP := $(VENV)/.setup-stamp
export BUF_CACHE_DIR := $(CURDIR)/.cache/buf

.PHONY: setup browser test demo docs proto proto-check lint breaking bench bench-smoke clean

setup: $(SETUP_STAMP) node_modules/.package-lock.json sdk/node/node_modules/.package-lock.json browser

# Re-run only when a dependency list changes; pip itself is idempotent.
$(SETUP_STAMP): sdk/pyproject.toml services/*/pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(COMPONENTS) -r requirements-dev.txt
	touch $@

# Chromium for the dashboard's browser tests (Playwright drives Debian's build: it cannot download its own here).
# Installed with apt-get when missing and possible (root, apt-get); otherwise the browser tests fail saying so.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get): the browser tests will fail until 'apt-get install chromium' is run"; fi

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

# The Node client (sdk/node) and its code generator.
sdk/node/node_modules/.package-lock.json: sdk/node/package.json sdk/node/package-lock.json
	npm ci --prefix sdk/node --no-audit --no-fund --loglevel=error

# Lint then every test suite, spread over the cores (pytest-xdist: every test makes its own servers, ports and
# databases). Whole modules go to a worker (loadscope), so a module's costly fixture (the timm adapter tests' digits
# training) runs once, not once per worker. The PostgreSQL tests need the server on 127.0.0.1:5432.
test: setup lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope

demo: setup
	$(VENV)/bin/tp demo

# The generated tables of docs/frameworks.md (every framework's advanced_config keys), from the trainers' own
# validation code; tests/e2e/test_frameworks_doc.py fails while they disagree.
docs: setup
	$(VENV)/bin/tp frameworks --format markdown --write docs/frameworks.md

proto: setup
	$(BUF) generate --template buf.gen.python.yaml
	$(BUF) generate --template buf.gen.ts.yaml

# Fails when the committed generated code differs from what the protos produce.
proto-check: proto
	@git diff --exit-code --stat -- sdk/gen sdk/node/src/gen \
	  && test -z "$$(git status --porcelain -- sdk/gen sdk/node/src/gen)" \
	  || { echo "protos changed: run 'make proto' and commit sdk/gen and sdk/node/src/gen"; exit 1; }

# ruff (code and Markdown), buf (the contracts), import-linter (the package map in docs/architecture.md), mypy.
lint: setup
	$(BUF) lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Breaking-change check of the contracts against the merge base of this branch with main.
breaking: setup
	tools/buf_breaking.sh

clean:
	rm -rf $(VENV) node_modules sdk/node/node_modules .cache

bench: setup
	$(PY) bench/run.py

bench-smoke: setup
	$(PY) bench/run.py --smoke
