# The two commands of the README: `make run` and `make test`. Everything else serves them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format install migrate bench bench-quick faults-long screenshot clean

# One venv with everything (the server extra and the tests), reinstalled whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,test]'
	touch $(STAMP)

install: $(STAMP)

migrate: $(STAMP)
	$(BIN)/tracker migrate

## run: the whole system (migrations, API, one consumer) against local RabbitMQ and SQLite.
run: $(STAMP)
	$(BIN)/tracker run

## test: every test, against the local RabbitMQ, PostgreSQL and SQLite.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff (lint and format check), mypy (strict on the packages), the import-linter layers.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## format: rewrite the tree as `make lint` wants it (ruff's fixes and formatting).
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: the side-by-side benchmark (docs/performance.md); bench-quick: a small run CI makes.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

## faults-long: the fault scenarios at full scale (make test runs a bounded version).
faults-long: $(STAMP)
	TRACKER_FAULTS_SCALE=long $(BIN)/python -m pytest tests/faults $(PYTEST_ARGS)

## screenshot: the dashboard's browser test, writing docs/dashboard.png (the README's picture).
screenshot: $(STAMP)
	TRACKER_SCREENSHOT=1 $(BIN)/python -m pytest tests/e2e/test_dashboard.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info tracker.db tracker.db-wal tracker.db-shm
