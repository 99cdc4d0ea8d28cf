#!/usr/bin/env bash
# Build grpcurl into .tools/ from its Go module, for the reflection tests: the PyPI wrapper's
# grpcurl 1.8.6 speaks only reflection v1alpha; 1.9+ asks v1 first (as grpcui and buf do).
# Needs Go and the Go module proxy (about a minute). Soft-fails (exit 0, warning) so
# `make test` still runs; the cases that need it are then left out and pytest's header says so.
set -euo pipefail

# The newest release on the module proxy when pinned (`go list -m -versions
# github.com/fullstorydev/grpcurl`); tests/backends.py names the same version.
VERSION=v1.9.4
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.tools/grpcurl-$VERSION"
BIN="$DEST/grpcurl"

if [[ -x "$BIN" ]]; then
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "install_grpcurl: go not found; the grpcurl $VERSION cases will be left out" >&2
    exit 0
fi

build() {
    local work
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    # A scratch GOBIN, moved into place whole: a half-written binary never looks installed.
    # GOTOOLCHAIN=local: the machine's Go, no download. The version stamped as its releases do.
    GOBIN="$work" GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
        go install -ldflags "-X main.version=$VERSION" \
        "github.com/fullstorydev/grpcurl/cmd/grpcurl@$VERSION"
    mkdir -p "$DEST"
    mv "$work/grpcurl" "$BIN.tmp"
    mv "$BIN.tmp" "$BIN"
}

echo "install_grpcurl: building grpcurl $VERSION into $DEST (about a minute)" >&2
if ! build; then
    echo "install_grpcurl: build failed; the grpcurl $VERSION cases will be left out" >&2
    rm -f "$BIN.tmp"
    exit 0
fi
"$BIN" -version 2>&1 | sed -n 1p >&2
