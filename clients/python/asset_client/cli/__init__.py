"""The `asset` command: the Asset Service from a shell (the [cli] extra)."""

from __future__ import annotations

import sys

INSTALL_HINT = (
    "asset: the command line needs the client's [cli] extra: "
    "pip install 'asset-service-client[cli]'"
)


def main(argv: list[str] | None = None) -> int:
    """Run `asset` with `argv` (default: sys.argv[1:]); the exit status (see _exit.py)."""
    try:
        import click  # noqa: F401
        import rich  # noqa: F401
    except ImportError as exc:
        print(f"{INSTALL_HINT} ({exc.name} is missing)", file=sys.stderr)
        return 1
    from asset_client.cli._main import run

    return run(sys.argv[1:] if argv is None else argv)


__all__ = ["INSTALL_HINT", "main"]
