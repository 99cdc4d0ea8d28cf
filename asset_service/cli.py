"""The `asset-service` command: serve (the default), `token new`, or `health` (a probe)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from asset_service import logs
from asset_service.config import load_settings
from asset_service.domain.errors import AssetError


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return token_command(args[1:])
    if args[:1] == ["health"]:
        from asset_service import healthcheck

        return healthcheck.main(args[1:], os.environ)
    settings = load_settings(args)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logs.install()
    # Whatever a library creates (SQLite's journal files, temporary files) is owner-only
    # too; what the server creates itself has its mode set explicitly (modes.py).
    os.umask(0o077)
    from asset_service.server import serve  # after logging: importing grpc may log

    try:
        asyncio.run(serve(settings))
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
