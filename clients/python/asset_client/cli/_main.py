"""Run `asset`: every command registered, every failure one line and an exit status."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import click
import grpc

# Each command module adds its commands to `cli` as it is imported.
from asset_client.cli import _commands, _exit, _promises, _run, _usage, _watch  # noqa: F401
from asset_client.cli._app import Interrupted, OutputClosed, Settings, cli
from asset_client.errors import AssetServiceError

log = logging.getLogger(__name__)


def _command_name(ctx: click.Context | None) -> str:
    return ctx.command_path if ctx is not None else "asset"


def run(argv: list[str]) -> int:
    """Run the CLI; every failure is one line on stderr and an exit status (_exit.py)."""
    seen: list[Settings] = []
    try:
        result = cli.main(argv, prog_name="asset", standalone_mode=False, obj=seen)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx is not None else str(exc), err=True)
        return _exit.USAGE
    except click.UsageError as exc:
        hint = f" (see '{_command_name(exc.ctx)} --help')"
        _error(_command_name(exc.ctx), exc.format_message() + hint)
        return _exit.USAGE
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        _error("asset", "interrupted")
        return _exit.for_signal(2)
    except click.ClickException as exc:
        _error("asset", exc.format_message())
        return _exit.LOCAL if exc.exit_code == 1 else exc.exit_code
    except AssetServiceError as exc:
        where = f" (server {seen[0].addr})" if exc.code in _NETWORK and seen else ""
        _error("asset", f"{exc.code.name}: {exc.details}{where}")
        return _exit.for_code(exc.code)
    except (BrokenPipeError, OutputClosed):
        # The reader went away (`asset cat ID | head`): quiet, as cat(1) killed by SIGPIPE.
        _silence_stdout()
        return _exit.for_signal(13)
    except (KeyboardInterrupt, Interrupted):
        _error("asset", "interrupted", after_ctrl_c=True)
        return _exit.for_signal(2)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _error("asset", f"{exc.strerror or exc}{where}")
        return _exit.LOCAL
    except ValueError as exc:  # an argument the client refused before any call
        _error("asset", str(exc))
        return _exit.USAGE
    except Exception as exc:  # a bug: still one line (the traceback with -vv)
        log.debug("unexpected error", exc_info=True)
        _error("asset", f"unexpected error: {type(exc).__name__}: {exc}")
        return _exit.LOCAL
    return int(result) if isinstance(result, int) else _exit.OK


# Errors that may mean the server is not where the settings say: the message names it.
_NETWORK = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _error(prog: str, message: str, *, after_ctrl_c: bool = False) -> None:
    line = " ".join(message.split())  # one line, whatever the server's message holds
    with contextlib.suppress(OSError, ValueError):
        # On a terminal the line starts below the ^C it echoed; elsewhere it is one line.
        start = "\n" if after_ctrl_c and sys.stderr.isatty() else ""
        print(f"{start}{prog}: {line}", file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    # Python flushes stdout at exit; pointing it at /dev/null avoids a second EPIPE.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
