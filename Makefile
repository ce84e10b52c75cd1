# The same entry points for a developer and for CI: `make run`, `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export JOBMILL_TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: setup run worker test lint unit pytest bench chaos services clean

$(STAMP): pyproject.toml
	@scripts/bootstrap.sh $(VENV)
	@touch $(STAMP)

# Bytecode, as pip writes it for an installed package: an editable install has none, and where
# PYTHONDONTWRITEBYTECODE is set, every process (each worker start) would compile jobmill again.
setup: $(STAMP)
	@$(PY) -m compileall -q -j0 -x '/\.peers-venv/' src bench chaos >/dev/null

services:
	@scripts/ensure_services.sh

run: setup
	@scripts/run_demo.sh

lint: setup
	$(VENV)/bin/ruff check src tests bench chaos
	$(VENV)/bin/ruff format --check src tests bench chaos
	$(VENV)/bin/mypy

pytest: setup services
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint pytest

bench: setup services
	bench/peers/setup.sh
	$(PY) -m bench.run $(BENCH_ARGS)

chaos: setup services
	$(PY) -m chaos.run $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
