# One task runner. `make run` serves on the embedded default; `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.runtime
TOOLS := tools/node_modules/.installed
ARGS ?=
PY_SOURCES := asset_service tests scripts bench clients/python

.PHONY: install run test soak ferretdb minio lazyfs grpcurl generate contract-baseline lock lint format bench bench-etcd clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet -e 'clients/python[cli]'
	touch $@ $(RUN_STAMP)

# What `make run` needs and nothing more: the server's dependencies exactly as locked (the
# Dockerfile's versions and hashes), then the server itself, editable; no dev or test tool.
# pip's own lines ("Collecting ...") show the progress.
$(RUN_STAMP): pyproject.toml requirements.lock
	@echo "make run: installing the server and its dependencies into $(VENV)" \
	  "(the first time only: about a minute, README: Two commands)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --require-hashes -r requirements.lock
	$(PY) -m pip install --no-deps -e .
	touch $@

$(TOOLS): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(TOOLS)

## run: serve on 127.0.0.1:50051 with data under ./data, server-side paths allowed
## under ./incoming (pass more flags with ARGS="...")
run: $(RUN_STAMP)
	@mkdir -p incoming
	@echo "make run: starting asset-service (Ctrl-C stops it; more flags: make run ARGS=...)"
	$(VENV)/bin/asset-service --import-root "$(CURDIR)/incoming" $(ARGS)

## test: every test (unit, contract, end to end, grpcurl, buf lint, stubs up to date, lint)
## in TEST_WORKERS pytest processes (2: the suite waits on servers about half its time;
## more add contention the time-bounded end-to-end tests were not sized for)
TEST_WORKERS ?= 2
test: install ferretdb minio lazyfs grpcurl
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

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

## grpcurl: build the newest grpcurl into .tools/ (reflection v1; the PyPI one is 1.8.6, v1alpha)
grpcurl:
	bash scripts/install_grpcurl.sh

## generate: regenerate every client's stubs from protos/, and README.md's settings tables
## from asset_service/config.py
generate: install
	$(PY) scripts/gen_protos.py
	$(PY) scripts/gen_sync_client.py
	bash scripts/gen_clients.sh
	$(PY) scripts/gen_settings_doc.py

## contract-baseline: at a release of asset.v1 only, make the current contract the one that
## `buf breaking` (make lint, make test) compares against; commit it with the release
contract-baseline: $(TOOLS)
	tools/node_modules/.bin/buf build --exclude-source-info -o protos/asset/v1/released.binpb

## lock: re-resolve requirements.lock (the server's dependencies, pinned with hashes, which
## the Dockerfile installs) from pyproject.toml; review the diff like code
lock: install
	PY=$(PY) bash scripts/lock_requirements.sh

## lint: ruff, mypy --strict, import-linter (layering), buf lint, buf breaking (against the
## released contract), hadolint (the Dockerfile)
lint: install
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/mypy asset_service clients/python/asset_client
	$(VENV)/bin/lint-imports
	tools/node_modules/.bin/buf lint
	tools/node_modules/.bin/buf breaking --against protos/asset/v1/released.binpb
	$(VENV)/bin/hadolint Dockerfile

format: install
	$(VENV)/bin/ruff format $(PY_SOURCES)
	$(VENV)/bin/ruff check --fix $(PY_SOURCES)

bench: install minio
	$(PY) -m bench $(ARGS)

## bench-etcd: the metadata path side by side with a pinned etcd, Go clients for both
## (builds etcd and a load generator into .tools/ the first time; bench/README.md)
bench-etcd: install
	$(PY) -m bench.etcd $(ARGS)

clean:
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache
