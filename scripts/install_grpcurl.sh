#!/usr/bin/env bash
# Build grpcurl into .tools/ from its Go module, for the reflection tests: the PyPI wrapper's
# grpcurl 1.8.6 speaks only reflection v1alpha; 1.9+ asks v1 first (as grpcui and buf do).
# Needs Go and the Go module proxy (about a minute). Soft-fails (exit 0, warning) so
# `make test` still runs; the cases that need it are then left out and pytest's header says so.
set -euo pipefail
source "$(dirname "$0")/_go_tool.sh"

# The newest release on the module proxy when pinned (`go list -m -versions
# github.com/fullstorydev/grpcurl`); tests/backends.py names the same version.
VERSION=v1.9.4
BIN="$TOOLS/grpcurl-$VERSION/grpcurl"

build() {
    # GOTOOLCHAIN=local: the machine's Go, no download. The version stamped as its releases do.
    GOBIN="$1" GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
        go install -ldflags "-X main.version=$VERSION" \
        "github.com/fullstorydev/grpcurl/cmd/grpcurl@$VERSION"
}

install_go_tool grpcurl "grpcurl $VERSION (about a minute)" "$BIN" \
    "the grpcurl $VERSION cases will be left out" build
"$BIN" -version 2>&1 | sed -n 1p >&2
