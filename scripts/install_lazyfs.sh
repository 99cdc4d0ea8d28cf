#!/usr/bin/env bash
# Build lazyfs (tests/powerloss/lazyfs: a FUSE file system that loses what was not fsynced at
# a simulated power cut) into .tools/lazyfs-<hash of its source>/ for the power-loss tests.
# Needs Go and the Go module proxy (seconds once go-fuse is in the module cache). Soft-fails
# (exit 0, warning) so `make test` still runs; the power-loss tests then FAIL saying why.
set -euo pipefail
source "$(dirname "$0")/_go_tool.sh"

SRC="$ROOT/tests/powerloss/lazyfs"
# The same hash as tests/powerloss/_lazyfs.py: sha256 of go.mod, go.sum and the *.go files,
# concatenated in name order; a changed source gets a new folder, so never a stale binary.
HASH="$(cd "$SRC" && LC_ALL=C ls go.mod go.sum *.go | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"
BIN="$TOOLS/lazyfs-$HASH/lazyfs"

build() {
    # GOTOOLCHAIN=local: the machine's Go, no download.
    (cd "$SRC" && GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=readonly" \
        go build -trimpath -o "$1/lazyfs" .)
}

install_go_tool lazyfs lazyfs "$BIN" "the power-loss tests will fail until lazyfs is built" build
