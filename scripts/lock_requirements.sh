#!/usr/bin/env bash
# requirements.lock: every package the server needs, pinned with hashes, resolved from the
# ranges in pyproject.toml's [project] dependencies (not the dev extras). The Dockerfile
# installs exactly this (pip --require-hashes), and `make run` uses it as constraints.
# Refresh it with `make lock` when pyproject.toml's dependencies change, or to take newer
# releases within their ranges; review the diff like code.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PY:-.venv/bin/python}"
# Resolved for the image's interpreter (CPython 3.11 on Linux); the hashes cover every
# file of each pinned release, so other architectures install the same versions.
CUSTOM_COMPILE_COMMAND="make lock" "$PY" -m piptools compile \
    --quiet \
    --generate-hashes \
    --strip-extras \
    --allow-unsafe \
    --no-emit-index-url \
    --no-emit-find-links \
    --output-file requirements.lock \
    pyproject.toml
echo "lock_requirements: wrote requirements.lock ($(grep -c '^[a-z]' requirements.lock) packages)" >&2
