# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest jstest bench setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/cpc-signaling serve

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	bash scripts/ensure-test-deps.sh
	$(BIN)/pytest

# The JS client's tests (clients/js) against a real server; Node 20 needs a flag for WebSocket.
jstest: $(STAMP)
	bash scripts/ensure-test-deps.sh
	node $$(node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || echo --experimental-websocket) \
		--test clients/js/test/*.test.js

test: lint typecheck pytest jstest

bench: $(STAMP)
	$(BIN)/cpc-signaling bench --quick

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
