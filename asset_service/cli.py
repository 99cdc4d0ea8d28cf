"""The `asset-service` command: serve (the default), or a subcommand (`token new`, ...)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from asset_service import __version__, logs
from asset_service.config import TABLE, build_parser, read_command_line, unknown_variables
from asset_service.domain.errors import AssetError
from asset_service.options import describe
from asset_service.worker import WorkerRole, die_with_supervisor


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(args[0]) if args else None
    if command is not None:
        return command(args[1:])
    return serve_command(args)


def version() -> str:
    """This package's version, and those of what serves the calls."""
    try:
        own = metadata.version("asset-service")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        own = __version__
    parts = [f"asset-service {own}"]
    for package in ("grpcio", "protobuf"):
        try:
            parts.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package} missing")
    parts.append(f"{platform.python_implementation()} {platform.python_version()}")
    return ", ".join(parts)


def serve_command(argv: Sequence[str]) -> int:
    """Serve until SIGTERM/SIGINT; or, with --print-config, show the settings and stop."""
    parser = build_parser()
    parser.add_argument("--version", action="version", version=version())
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print each effective setting, its value (credentials in URLs masked; no file is "
        "read) and where it came from (default, environment or flag), then exit 0 without "
        "serving",
    )
    loaded = read_command_line(argv, parser=parser)
    if loaded.args.print_config:
        print(f"# {version()}; setting, value, source")
        print(describe(TABLE, loaded))
        return 0
    settings = loaded.settings
    role = WorkerRole.from_env(os.environ)
    if role is not None:
        die_with_supervisor(role.supervisor)
    logs.configure(settings.log_level, settings.log_format, worker=role.name if role else "")
    if role is None:  # said once, not by every worker
        for name, meant in unknown_variables(os.environ):
            logging.getLogger("asset_service").warning(
                "%s is set but is no setting of asset-service (ignored)%s",
                name,
                f"; did you mean {meant}?" if meant else "",
            )
    # Whatever a library creates (SQLite's journal files, temporary files) is owner-only
    # too; what the server creates itself has its mode set explicitly (modes.py).
    os.umask(0o077)
    if role is None and settings.workers != 1:
        from asset_service import supervisor  # serves nothing itself: no gRPC here

        if supervisor.worker_count(settings) > 1:
            return supervisor.supervise(argv, settings)
    from asset_service.server import serve  # after logging: importing grpc may log

    try:
        asyncio.run(serve(settings, role))
    except AssetError as exc:
        logging.getLogger("asset_service").error("cannot start: %s", exc.message)
        return 2
    return 0


def token_command(argv: Sequence[str]) -> int:
    """`asset-service token new`: print a new token once, and the tokens-file entry for it."""
    from asset_service.security.principal import Role
    from asset_service.security.tokens import new_token

    parser = argparse.ArgumentParser(
        prog="asset-service token",
        description="Bearer tokens for --tokens-file (docs/security.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser(
        "new",
        help="make a random token",
        description="Print a new random token (shown only now: the server keeps its sha256) "
        "and the [[tokens]] entry to append to the tokens file; then send the server SIGHUP.",
    )
    new.add_argument("--principal", required=True, help="who holds it (written to audit lines)")
    new.add_argument(
        "--role",
        action="append",
        required=True,
        choices=[r.label for r in Role],
        help="a role to grant; repeat for several",
    )
    args = parser.parse_args(argv)
    try:
        token, entry = new_token(args.principal, args.role)
    except AssetError as exc:
        parser.error(exc.message)
    print(f"token (shown once; give it to {args.principal}):\n{token}\n")
    print("append to the tokens file, then send the server SIGHUP:\n")
    print(entry, end="")
    return 0


def health_command(argv: Sequence[str]) -> int:
    """`asset-service health`: a probe for container HEALTHCHECKs (healthcheck.py)."""
    from asset_service import healthcheck

    return healthcheck.main(argv, os.environ)


# The subcommands, by their first word; anything else is the server's own flags.
COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "token": token_command,
    "health": health_command,
}
