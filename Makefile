# One task runner. `make run` serves on the embedded default; `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TOOLS := tools/node_modules/.installed
ARGS ?=
PY_SOURCES := asset_service tests scripts bench clients/python

.PHONY: install run test soak ferretdb minio lazyfs generate lint format bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet -e clients/python
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
test: install ferretdb minio lazyfs
	$(PY) -m pytest $(PYTEST_ARGS)

## soak: a long crash loop (300 SIGKILLs under mixed load, each followed by an audit), then
## load with stalled clients while RSS is watched; exits 1 on any violation
## (ARGS="--kills 50 --seed 7 --minutes 10 --cross-fs"; ARGS=--power-loss cuts the power
## after each kill, on lazyfs; scripts/soak --help)
soak: $(STAMP) lazyfs
	$(PY) scripts/soak $(ARGS)

## ferretdb: build FerretDB into .tools/ (MongoDB wire protocol; CRUD contract cases)
ferretdb:
	bash scripts/install_ferretdb.sh

## minio: build MinIO into .tools/ (an S3-compatible store; the S3 blob-storage contract)
minio:
	bash scripts/install_minio.sh

## lazyfs: build lazyfs into .tools/ (a FUSE file system that loses what was not fsynced at
## a simulated power cut; the power-loss tests)
lazyfs:
	bash scripts/install_lazyfs.sh

## generate: regenerate every client's stubs from protos/, and README.md's settings tables
## from asset_service/config.py
generate: install
	$(PY) scripts/gen_protos.py
	$(PY) scripts/gen_sync_client.py
	bash scripts/gen_clients.sh
	$(PY) scripts/gen_settings_doc.py

## lint: ruff, mypy --strict, import-linter (layering), buf lint
lint: install
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/mypy asset_service clients/python/asset_client
	$(VENV)/bin/lint-imports
	tools/node_modules/.bin/buf lint

format: install
	$(VENV)/bin/ruff format $(PY_SOURCES)
	$(VENV)/bin/ruff check --fix $(PY_SOURCES)

bench: install minio
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache
