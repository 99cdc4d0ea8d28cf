"""The `asset` group: global options, the connection, and errors turned into exit statuses."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from asset_client._channel import NOT_PEM, is_pem
from asset_client.cli import _exit
from asset_client.client import AssetClient

log = logging.getLogger(__name__)

DEFAULT_ADDR = "127.0.0.1:50051"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclass(frozen=True)
class Settings:
    """The global options: where the server is, how to reach it, how to print."""

    addr: str
    token: str | None
    token_file: Path | None
    tls: bool
    ca_file: Path | None
    client_cert: Path | None
    client_key: Path | None
    timeout: float
    json: bool

    def connect(self) -> AssetClient:
        """A client for these settings (raises click.UsageError for inconsistent ones)."""
        token: str | Callable[[], str] | None = self.token or None
        if self.token_file is not None:
            if token:
                raise _usage("give --token or --token-file, not both")
            token = _FileToken(self.token_file)
        if (self.client_cert is None) != (self.client_key is None):
            raise _usage("--client-cert and --client-key go together")
        return AssetClient(
            self.addr,
            timeout=self.timeout,
            tls=self.tls,
            root_certificates=_read(self.ca_file, "--ca-file", pem=True),
            certificate_chain=_read(self.client_cert, "--client-cert", pem=True),
            private_key=_read(self.client_key, "--client-key", pem=True),
            token=token,
        )


class _FileToken:
    """The token in a file, read again before each call: a long `asset run` goes on with a
    token refreshed in place; a file unreadable then keeps the last token read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = (_read(path, "--token-file") or b"").decode().strip()
        if not self.last:
            raise _usage(f"--token-file {path} is empty")

    def __call__(self) -> str:
        try:
            token = self.path.read_text().strip()
        except OSError as exc:
            log.warning("cannot read the token file %s (%s): using the last token", self.path, exc)
            return self.last
        if token:
            self.last = token
        return self.last


def _read(path: Path | None, option: str, *, pem: bool = False) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _usage(f"{option} {path}: {exc.strerror}") from None
    if pem and not is_pem(data):
        raise _usage(f"{option} {path}: {NOT_PEM}")
    return data


def _usage(message: str) -> click.UsageError:
    """A usage error of a global option: it names `asset`, whose --help explains it, not
    the command running."""
    ctx = click.get_current_context(silent=True)
    return click.UsageError(message, ctx.find_root() if ctx is not None else None)


_FILE = click.Path(dir_okay=False, path_type=Path)

EPILOG = "\b\nExit status:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in _exit.TABLE)


class OutputClosed(Exception):
    """The reader of a command's output went away (`asset cat ID | head`)."""


class Interrupted(Exception):
    """Ctrl-C (SIGINT) while a command ran."""


class _Group(click.Group):
    """click's group, but a write to a closed pipe ends as OutputClosed (click's own main
    turns it into exit status 1, even with standalone_mode=False) and Ctrl-C as Interrupted
    (click prints a blank line first, for a terminal's ^C, also into a log)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise OutputClosed from None
        except KeyboardInterrupt:
            raise Interrupted from None


@click.group(cls=_Group, context_settings=CONTEXT, epilog=EPILOG)
@click.option(
    "--addr",
    envvar="ASSET_SERVICE_ADDR",
    default=DEFAULT_ADDR,
    show_default=True,
    show_envvar=True,
    help="host:port of the Asset Service.",
)
@click.option(
    "--token",
    envvar="ASSET_SERVICE_TOKEN",
    show_envvar=True,
    help="Bearer token (a principal's, or a task token); prefer the variable: arguments "
    "show in `ps`. Without TLS it is sent only to a loopback address.",
)
@click.option(
    "--token-file",
    envvar="ASSET_SERVICE_TOKEN_FILE",
    show_envvar=True,
    type=_FILE,
    help="Read the bearer token from this file.",
)
@click.option(
    "--tls/--no-tls",
    envvar="ASSET_SERVICE_TLS",
    show_envvar=True,
    default=False,
    help="TLS with the system's root certificates (implied by --ca-file).",
)
@click.option(
    "--ca-file",
    envvar="ASSET_SERVICE_CA_FILE",
    show_envvar=True,
    type=_FILE,
    help="PEM file of the CA(s) that signed the server's certificate; implies TLS.",
)
@click.option(
    "--client-cert",
    envvar="ASSET_SERVICE_CLIENT_CERT",
    show_envvar=True,
    type=_FILE,
    help="PEM client certificate, for a server that requires one (mTLS).",
)
@click.option(
    "--client-key",
    envvar="ASSET_SERVICE_CLIENT_KEY",
    show_envvar=True,
    type=_FILE,
    help="PEM private key of --client-cert.",
)
@click.option(
    "--timeout",
    envvar="ASSET_SERVICE_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Deadline in seconds of each single call; transfers and watches have their own "
    "(see each command).",
)
@click.option(
    "--json",
    "json_",
    is_flag=True,
    help="Print JSON instead of text, for every command that prints records.",
)
@click.option("-v", "--verbose", count=True, help="Log what happens on stderr (-vv: more).")
@click.version_option(package_name="asset-service-client", prog_name="asset")
@click.pass_context
def cli(
    ctx: click.Context,
    addr: str,
    token: str | None,
    token_file: Path | None,
    tls: bool,
    ca_file: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    timeout: float,
    json_: bool,
    verbose: int,
) -> None:
    """The Asset Service from a shell: upload and read assets, make and keep promises,
    watch them, and run a command-line module as a task (`asset run`).

    Every option below also comes from its environment variable. Commands print ids
    and paths on stdout, one per line, so `id=$(asset put file)` works; messages and
    errors go to stderr, one line each. `asset COMMAND --help` explains each command.
    """
    if token and token_file is not None:
        # An option on the command line wins over the other's variable, as the client's
        # arguments win over its variables; both from the same source is a usage error.
        given = click.core.ParameterSource.COMMANDLINE
        token_given = ctx.get_parameter_source("token") is given
        if token_given != (ctx.get_parameter_source("token_file") is given):
            token, token_file = (token, None) if token_given else (None, token_file)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="asset: %(message)s", stream=sys.stderr)
    settings = Settings(
        addr=addr,
        token=token,
        token_file=token_file,
        tls=tls,
        ca_file=ca_file,
        client_cert=client_cert,
        client_key=client_key,
        timeout=timeout,
        json=json_,
    )
    if isinstance(ctx.obj, list):  # run()'s: it names the server in network errors
        ctx.obj.append(settings)
    ctx.obj = settings
