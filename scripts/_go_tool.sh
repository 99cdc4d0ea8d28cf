# Sourced by scripts/install_*.sh: build a pinned Go tool into .tools/ unless it is there.
# Every failure soft-fails (a warning, exit 0) so `make test` still runs without the tool.

# The repository, and where its tools go.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"

# install_go_tool NAME WHAT BIN LEFT_OUT BUILD
#   NAME      the tool, as the messages (install_NAME: ...) and the binary's file name say it
#   WHAT      what is built, for the message ("grpcurl v1.9.4 (about a minute)")
#   BIN       the binary's path; already executable there: nothing to do
#   LEFT_OUT  what goes without it ("the grpcurl cases will be left out")
#   BUILD     a function that builds the binary into the scratch folder it is given as $1,
#             as $1/NAME; set -e does not hold in it, so its status must be the build's
# Exits the script when there is nothing more to do (already there, or soft-failed); returns
# once BIN is freshly built and in place.
install_go_tool() {
    local name=$1 what=$2 bin=$3 left_out=$4 build=$5
    if [[ -x "$bin" ]]; then
        exit 0
    fi
    if ! command -v go >/dev/null 2>&1; then
        echo "install_$name: go not found; $left_out" >&2
        exit 0
    fi
    echo "install_$name: building $what into $(dirname "$bin")" >&2
    if ! _build_in_scratch "$name" "$bin" "$build"; then
        echo "install_$name: build failed; $left_out" >&2
        rm -f "$bin.tmp"
        exit 0
    fi
}

# Built in a scratch folder, copied beside BIN under a temporary name, then renamed: a
# half-written binary never looks installed to the check above.
_build_in_scratch() {
    local name=$1 bin=$2 build=$3 work status=0
    work="$(mktemp -d)"
    { "$build" "$work" && mkdir -p "$(dirname "$bin")" && mv "$work/$name" "$bin.tmp" &&
        mv "$bin.tmp" "$bin"; } || status=1
    rm -rf "$work"
    return $status
}
