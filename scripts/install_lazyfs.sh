#!/usr/bin/env bash
# Build lazyfs (tests/powerloss/lazyfs: a FUSE file system that loses what was not fsynced at
# a simulated power cut) into .tools/lazyfs-<hash of its source>/ for the power-loss tests.
# Needs Go and the Go module proxy (seconds once go-fuse is in the module cache). Soft-fails
# (exit 0, warning) so `make test` still runs; the power-loss tests then FAIL saying why.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SRC="$ROOT/tests/powerloss/lazyfs"
# The same hash as tests/powerloss/_lazyfs.py: sha256 of go.mod, go.sum and the *.go files,
# concatenated in name order; a changed source gets a new folder, so never a stale binary.
HASH="$(cd "$SRC" && LC_ALL=C ls go.mod go.sum *.go | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"
DEST="$ROOT/.tools/lazyfs-$HASH"
BIN="$DEST/lazyfs"

if [[ -x "$BIN" ]]; then
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "install_lazyfs: go not found; the power-loss tests will fail until lazyfs is built" >&2
    exit 0
fi

echo "install_lazyfs: building lazyfs into $DEST" >&2
mkdir -p "$DEST"
# Built under a temporary name and moved into place: a half-written binary never looks
# installed. GOTOOLCHAIN=local: the machine's Go, no download.
if ! (cd "$SRC" && GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=readonly" \
    go build -trimpath -o "$BIN.tmp" .); then
    echo "install_lazyfs: build failed; the power-loss tests will fail until it builds" >&2
    rm -f "$BIN.tmp"
    exit 0
fi
mv "$BIN.tmp" "$BIN"
