# The two commands a new user needs: `make up` (the fleet) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint seed clean bench reliability

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Start the whole fleet locally (SQLite under var/, the local registry); Ctrl-C stops it.
up: $(STAMP)
	$(BIN)/python -m customer_cli up

## Load the demo catalogue and carriers into var/.
seed: $(STAMP)
	$(BIN)/python -m customer_cli seed

## The full test suite (the PostgreSQL at 127.0.0.1:5432 when one answers, else a private one it starts: tests/postgres.py).
test: $(STAMP)
	$(BIN)/python -m pytest -q

## The reliability suite at full size (RELIABILITY_SCALE=10: thousands of orders, every fault, more fuzzing);
## prints what it tried and what it found. `make test` runs the same tests at RELIABILITY_SCALE=1.
reliability: $(STAMP)
	RELIABILITY_SCALE=$${RELIABILITY_SCALE:-10} $(BIN)/python -m pytest -s -q tests/reliability

## The saga path measured: throughput, latency, lower bound, gateway vs nginx, memory (bench/README.md).
## GATEWAY_URL=... targets a running stack; BENCH_SCALE=3 runs longer phases.
bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .

clean:
	rm -rf var
