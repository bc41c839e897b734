# Two commands on a fresh machine: `make run` and `make test`.
# `make run` installs only what serving needs; `make test` adds the test and lint tools
# (pytest, mypy, ruff, Playwright for the browser tests, uvicorn and FastAPI, Redis client).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --quiet --disable-pip-version-check
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test lint typecheck pytest jstest bench setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The package and its runtime dependencies only.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

# Everything the tests, linters and the benchmark use.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	touch $@ $(RUN_STAMP)

setup: $(DEV_STAMP)

run: $(RUN_STAMP)
	$(BIN)/cpc-signaling serve

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

pytest: $(DEV_STAMP)
	bash scripts/ensure-test-deps.sh
	$(BIN)/pytest

# The JS client's tests (clients/js) against a real server; Node 20 needs a flag for WebSocket.
jstest: $(DEV_STAMP)
	bash scripts/ensure-test-deps.sh
	node $$(node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || echo --experimental-websocket) \
		--test clients/js/test/*.test.js

test: lint typecheck pytest jstest

bench: $(DEV_STAMP)
	$(BIN)/cpc-signaling bench --quick

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
