"""Every setting of the server, declared once: its flag, variable, help, default and README row.

A setting is one field of `Settings` made by `setting()`, declared with its group in this
package's modules (_service.py, _storage.py, _limits.py, _telemetry.py, _security.py);
`asset_service.options` turns the fields into argparse flags (--no-X for booleans),
ASSET_SERVICE_* variables, --help text, --print-config and README.md's table (`make
generate`; a test checks it is current).

Why a table of dataclass fields rather than pydantic-settings: pydantic-settings would add
pydantic (and its compiled core) to the server for what argparse already does, its errors
are multi-line reports naming fields rather than flags, it does not record where a value
came from, and the README table and --help would still be written by hand. Here the field
keeps its static type for mypy, and each value is read by one parser whether it came from
a flag or a variable, so both fail the same way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from asset_service.config._limits import LimitSettings
from asset_service.config._security import SecuritySettings
from asset_service.config._service import ServiceSettings
from asset_service.config._storage import StorageSettings
from asset_service.config._telemetry import TelemetrySettings
from asset_service.options import Loaded, OneLineParser, Table, parse_bool, parse_group, parse_size

__all__ = [
    "ENV_PREFIX",
    "Settings",
    "build_parser",
    "load_settings",
    "parse_bool",
    "parse_group",
    "parse_size",
    "read_command_line",
    "unknown_variables",
]

ENV_PREFIX = "ASSET_SERVICE_"

GROUPS = {
    "service": "where it listens, what it logs, how it stops, leases",
    "storage": "where records and bytes live, and which server-side files it may adopt",
    "limits": "what clients may hold; over a limit a call gets RESOURCE_EXHAUSTED (or "
    "DEADLINE_EXCEEDED / UNAVAILABLE for a silent peer) naming the setting",
    "telemetry": "what the server reports about itself: metrics, logs and traces "
    "(docs/operations.md). Traces are off unless the standard OTEL_TRACES_EXPORTER variable "
    "names an exporter (otlp or console; OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME and "
    "the other OTEL_* variables apply)",
    "security": "TLS, mTLS and bearer tokens with roles (docs/security.md); files are re-read "
    "on SIGHUP, certificates also when they change. Without any, the server is "
    "unauthenticated and refuses to listen beyond loopback unless --insecure is given",
}


# A dataclass takes its bases' fields from the last base to the first: this order gives
# the fields (flags, README rows, --print-config) in GROUPS' order, service first.
@dataclass(frozen=True)
class Settings(
    SecuritySettings, TelemetrySettings, LimitSettings, StorageSettings, ServiceSettings
):
    """Every setting of the server: the fields of each group's class."""


TABLE = Table(Settings, env_prefix=ENV_PREFIX, groups=GROUPS)

DESCRIPTION = (
    "Serve the Asset Service (gRPC package asset.v1): FILE assets on disk, VALUE assets "
    "inline, a PENDING -> AVAILABLE | FAILED state machine, WatchAsset streams, chunked "
    "uploads and input manifests. Health (grpc.health.v1) is always open; server reflection "
    "lets grpcurl work without .proto files. `asset-service token new --help` makes a bearer "
    "token; `asset-service health --help` asks a running server whether it is ready "
    "(container probes)."
)
EPILOG = (
    "Every setting can also be given by the environment variable named in brackets; a flag "
    "wins over its variable. Durations: 10s, 5m, 1h, 250ms, 1h30m, 7d, or a number of "
    "seconds (1.5). Sizes: 1048576, 512MiB, 1.5GiB, 10G (binary units: G = GiB). Booleans: "
    "true/false, yes/no, on/off, 1/0. Choices: any case. A bad value, from a flag or a "
    "variable, stops the server with one line naming both, exit status 2."
)


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The settings' flags (`env` is read later, by `load_settings`; kept for callers)."""
    parser = OneLineParser(
        prog="asset-service",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    TABLE.add_arguments(parser)
    return parser


def read_command_line(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    parser: argparse.ArgumentParser | None = None,
) -> Loaded[Settings]:
    """The settings and where each came from. `parser` may carry more options (the
    command's --version, --print-config); a bad value exits 2 with one line."""
    return TABLE.load(parser or build_parser(), argv, os.environ if env is None else env)


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    return read_command_line(argv, env).settings


# ASSET_SERVICE_* variables read beside the server but not by it: the clients' (README:
# Clients; the `asset` command's cache) and `asset-service health`'s (HEALTH_*).
OTHERS_VARIABLES = frozenset(
    ENV_PREFIX + name
    for name in (
        "ADDR",
        "TOKEN",
        "TOKEN_FILE",
        "TLS",
        "CA_FILE",
        "CLIENT_CERT",
        "CLIENT_KEY",
        "TIMEOUT",
        "CACHE_DIR",
        "CACHE_MAX_BYTES",
    )
)


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """ASSET_SERVICE_* variables nothing reads (a typo, a setting's name with _SECONDS
    added), each with the setting's variable it most likely meant (None: none close)."""
    import difflib

    ours = [s.env for s in TABLE.settings]
    # Compared without the prefix they all share, which would make anything "close".
    bare = [n.removeprefix(ENV_PREFIX) for n in ours]
    found = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in OTHERS_VARIABLES or name in ours:
            continue
        if name.startswith(ENV_PREFIX + "HEALTH_"):
            continue
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), bare, n=1, cutoff=0.7)
        found.append((name, ENV_PREFIX + close[0] if close else None))
    return found
