# One task runner. `make run` serves on the embedded default; `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TOOLS := tools/node_modules/.installed
ARGS ?=

.PHONY: install run test generate lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(TOOLS): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(TOOLS)

## run: serve on 127.0.0.1:50051 with data under ./data, server-side paths allowed
## under ./incoming (pass more flags with ARGS="...")
run: $(STAMP)
	mkdir -p incoming
	$(VENV)/bin/asset-service --import-root "$(CURDIR)/incoming" $(ARGS)

## test: every test (unit, contract, end to end, grpcurl, buf lint, stubs up to date, lint)
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

## generate: regenerate every client's stubs from protos/
generate: install
	$(PY) scripts/gen_protos.py

## lint: ruff, mypy --strict, buf lint
lint: install
	$(VENV)/bin/ruff check asset_service tests scripts
	$(VENV)/bin/ruff format --check asset_service tests scripts
	$(VENV)/bin/mypy asset_service
	tools/node_modules/.bin/buf lint

format: install
	$(VENV)/bin/ruff format asset_service tests scripts
	$(VENV)/bin/ruff check --fix asset_service tests scripts

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache
