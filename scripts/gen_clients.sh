#!/usr/bin/env bash
# Regenerate the Go and TypeScript client stubs from protos/ (run by `make generate`).
#
#   scripts/gen_clients.sh            # write clients/go/gen and clients/typescript/src/gen
#   scripts/gen_clients.sh OUT_DIR    # write the same tree under OUT_DIR instead (to diff)
#
# Every generator is pinned by a lock file of the repository: buf by tools/package-lock.json,
# protoc-gen-go and protoc-gen-go-grpc by the `tool` lines of clients/go/tools/go.mod (run through
# `go tool`), protoc-gen-ts_proto by clients/typescript/package-lock.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-.}"

# npm ci where node_modules is missing or older than the lock file (the Makefile's
# stamp convention: node_modules/.installed).
ensure_npm() {
  local dir="$1"
  if [[ ! "$dir/node_modules/.installed" -nt "$dir/package-lock.json" ]]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$dir/node_modules/.installed"
  fi
}

ensure_npm tools
ensure_npm clients/typescript
BUF="$ROOT/tools/node_modules/.bin/buf"

"$BUF" generate --template clients/go/buf.gen.yaml -o "$OUT"
"$BUF" generate --template clients/typescript/buf.gen.yaml -o "$OUT"
echo "generated $(find "$OUT/clients/go/gen" "$OUT/clients/typescript/src/gen" -type f | wc -l) files" \
  "in $OUT/clients/go/gen and $OUT/clients/typescript/src/gen"
