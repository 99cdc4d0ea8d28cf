"""The commands on assets: put, cat, get, ls, show, manifest."""

from __future__ import annotations

import contextlib
import mimetypes
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from asset_client._materialize import safe_file_name
from asset_client.cli import _params, _render
from asset_client.cli._app import Settings, cli
from asset_client.models import Asset

pass_settings = click.make_pass_decorator(Settings)
json_flag = click.option("--json", "json_", is_flag=True, help="Print the record as JSON.")
_progress_flag = click.option(
    "--progress/--no-progress",
    default=None,
    help="A progress bar on stderr (default: only when stderr is a terminal).",
)


def emit(settings: Settings, json_: bool, asset: Asset, text: str) -> None:
    if json_ or settings.json:
        _render.print_json(asset)
    else:
        click.echo(text)


@contextlib.contextmanager
def _spooled_stdin() -> Iterator[Path]:
    """Standard input copied to a temporary file: an upload is hashed before it is sent
    (its header carries the sha256) and may be read again to resume."""
    with tempfile.TemporaryDirectory(prefix="asset-put-") as tmp:
        path = Path(tmp) / "stdin"
        with path.open("wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1024 * 1024)
        yield path


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--label", help="Name of the asset (default: the file's name; 'stdin' for -).")
@click.option("--media-type", help="MIME type (default: guessed from the label's extension).")
@click.option("--tag", "tags", multiple=True, help="A tag to filter by later; repeat for more.")
@click.option(
    "--fulfill",
    "pending_id",
    metavar="PENDING_ID",
    help="Fulfill this PENDING FILE asset with the file instead of making a new asset.",
)
@click.option(
    "--reuse/--no-reuse",
    default=None,
    help="Ask the server to reuse bytes it already stores with this sha256 and size, "
    "sending none (default: for files of 1 MiB or more; it sends them if it has none).",
)
@_progress_flag
@json_flag
@pass_settings
def put(
    settings: Settings,
    file: Path,
    label: str | None,
    media_type: str | None,
    tags: tuple[str, ...],
    pending_id: str | None,
    reuse: bool | None,
    progress: bool | None,
    json_: bool,
) -> None:
    """Upload FILE (or standard input, '-') and print the asset's id.

    The bytes are hashed first and the sha256 sent ahead, so the server refuses content
    that changes while it is sent; the id printed is that of an AVAILABLE asset whose
    bytes are on the server's disk. With --fulfill, the promise PENDING_ID becomes
    AVAILABLE with this content (its label and media type are the promise's).

    \b
      id=$(asset put --tag raw video.mp4)
      make_report | asset put --label report.txt -
      asset put --fulfill "$PENDING" frames.zip
    """
    if label is None and pending_id is None:
        label = "stdin" if str(file) == "-" else file.name
    if media_type is None and pending_id is None and label:
        media_type = mimetypes.guess_type(label)[0]
    with contextlib.ExitStack() as stack:
        path = stack.enter_context(_spooled_stdin()) if str(file) == "-" else file
        if not path.is_file():
            why = (
                "not a regular file (a pipe or a device): pipe it in as '-' instead"
                if path.exists()
                else "no such file"
            )
            raise click.BadParameter(f"{file}: {why}", param_hint="FILE")
        client = stack.enter_context(settings.connect())
        bars = stack.enter_context(_render.Transfers(progress, f"upload {label or file.name}"))
        asset = client.upload(
            path,
            label=label,
            media_type=media_type,
            tags=tags,
            pending_asset_id=pending_id,
            progress=bars.callback,
            reuse=reuse,
        )
    emit(settings, json_, asset, asset.id)


@cli.command()
@click.argument("asset_id")
@pass_settings
def cat(settings: Settings, asset_id: str) -> None:
    """Write an asset's bytes to standard output (a FILE's content, or a VALUE's).

    The whole content's size and sha256 are checked against the record as it arrives;
    a mismatch exits 25 (DATA_LOSS) after the last byte. To get a file that is never
    left half-written or unchecked, use `asset get`.
    """
    out = sys.stdout.buffer
    with settings.connect() as client:
        for chunk in client.read(asset_id):
            out.write(chunk)
    out.flush()


@cli.command()
@click.argument("asset_id")
@click.argument("dest", required=False, type=click.Path())
@_progress_flag
@pass_settings
def get(settings: Settings, asset_id: str, dest: str | None, progress: bool | None) -> None:
    """Download an asset into the file DEST and print DEST's path.

    DEST defaults to the asset's label in the current folder; a folder means the label in
    it. The bytes go to a temporary file beside DEST whose size and sha256 are checked
    against the record before it is renamed into place: DEST is complete or untouched,
    never partial (a mismatch exits 25, DATA_LOSS).
    """
    if dest is not None and dest.endswith("/") and not Path(dest).is_dir():
        # Path() drops the slash: the download would become a file of the folder's name.
        raise click.BadParameter(f"{dest}: no such folder", param_hint="DEST")
    with settings.connect() as client:
        asset = client.get(asset_id)
        name = _safe_name(asset)
        into = None if dest is None else Path(dest)
        target = Path(name) if into is None else (into / name if into.is_dir() else into)
        with _render.Transfers(progress, f"download {asset.label}") as bars:
            written = client.download(asset_id, target, progress=bars.callback)
    click.echo(str(written))


def _safe_name(asset: Asset) -> str:
    return safe_file_name(asset.label, asset.id)


@cli.command("ls")
@click.option("--status", type=_params.STATUS, help="Only assets in this state.")
@click.option("--type", "type_", type=_params.TYPE, help="Only FILE or only VALUE assets.")
@click.option("--tag", "tags", multiple=True, help="Only assets with this tag (repeat: all of).")
@click.option("--task", help="Only the promises of this task (created_by_task).")
@click.option("--label", help="Only assets with exactly this label.")
@click.option("--key", help="Only assets made for this get-or-create key (asset pending --key).")
@click.option("--sha256", help="Only assets with this content (hex SHA-256).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Stop after this many assets (default: every match, page after page).",
)
@click.option(
    "--page-size",
    type=click.IntRange(1, 1000),
    help="Assets per call (default: the server's).",
)
@click.option(
    "--page-token",
    help="Print one page from this token (a previous page's); the next token goes to "
    "stderr as 'next page token: ...'.",
)
@json_flag
@pass_settings
def list_(
    settings: Settings,
    status: str | None,
    type_: str | None,
    tags: tuple[str, ...],
    task: str | None,
    label: str | None,
    key: str | None,
    sha256: str | None,
    limit: int | None,
    page_size: int | None,
    page_token: str | None,
    json_: bool,
) -> None:
    """List assets, oldest first: a table, or JSON Lines (one record per line) with --json.

    Filters combine (every one given must match). Without --page-token, every page is
    fetched in turn; --limit stops early.

    \b
      asset ls --task task-42 --status pending
      asset ls --tag raw --json | python3 -c 'import json,sys; ...'
    """
    filters = {
        "status": _params.status_of(status),
        "type": _params.type_of(type_),
        "tags": tags,
        "created_by_task": task,
        "label": label,
        "key": key,
        "sha256": sha256,
        "page_size": page_size or 0,
    }
    with settings.connect() as client:
        if page_token is not None:
            page = client.list_page(page_token=page_token, **filters)  # type: ignore[arg-type]
            assets: Iterator[Asset] = iter(page.assets[:limit] if limit else page.assets)
            next_token = page.next_page_token
        else:
            assets = _limited(client.list(**filters), limit)  # type: ignore[arg-type]
            next_token = ""
        if json_ or settings.json:
            for asset in assets:
                _render.print_json(asset)
        else:
            _render.assets_table(assets)
    if next_token:
        click.echo(f"next page token: {next_token}", err=True)


def _limited(assets: Iterator[Asset], limit: int | None) -> Iterator[Asset]:
    for n, asset in enumerate(assets):
        if limit is not None and n >= limit:
            return
        yield asset


@cli.command()
@click.argument("asset_id")
@json_flag
@pass_settings
def show(settings: Settings, asset_id: str, json_: bool) -> None:
    """Print one asset's record (every field that is set), or it as JSON."""
    with settings.connect() as client:
        asset = client.get(asset_id)
    if json_ or settings.json:
        _render.print_json(asset)
    else:
        _render.asset_details(asset)


@cli.command()
@click.argument("inputs", nargs=-1, metavar="KEY=ASSET_ID...")
@_params.config_option()
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for PENDING inputs (up to --wait-timeout) instead of refusing them "
    "(--local always waits).",
)
@click.option(
    "--wait-timeout",
    type=_params.POSITIVE,
    help="Seconds to wait for the inputs (default: the global --timeout; with --local, "
    "as long as it takes).",
)
@click.option(
    "--local",
    "local_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Materialize on THIS machine in this folder: download FILE inputs (sha256 "
    "checked, cached), write VALUEs as files, and write input_data.json there.",
)
@click.option(
    "--cache-dir",
    envvar="ASSET_SERVICE_CACHE_DIR",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="With --local: where downloaded inputs are kept by sha256 "
    "(default: ~/.cache/asset-service).",
)
@_progress_flag
@json_flag
@pass_settings
def manifest(
    settings: Settings,
    inputs: tuple[str, ...],
    config_text: str | None,
    wait: bool,
    wait_timeout: float | None,
    local_dir: Path | None,
    cache_dir: Path | None,
    progress: bool | None,
    json_: bool,
) -> None:
    """Write the input_data.json of a task and print its path.

    By default the server writes it, with paths on the server's machine. With --local
    DIR it is written here, with local paths: for a worker that shares no disk with the
    server (`asset run` does this by itself). Either way the format is
    {"inputs": {KEY: absolute path}, "config_params": {...}}.

    \b
      asset manifest video=$VIDEO params=$PARAMS --config '{"fps": 25}'
      asset manifest video=$VIDEO --local ./task-inputs
    """
    mappings = _params.mappings(inputs, "KEY=ASSET_ID")
    config = _params.config(config_text)
    with settings.connect() as client, _render.Transfers(progress, "download") as bars:
        if local_dir is not None:
            result = client.materialize(
                mappings,
                config,
                dest=local_dir,
                cache_dir=cache_dir,
                progress=bars.callback,
                timeout=wait_timeout,
            )
        else:
            result = client.manifest(mappings, config, wait=wait, timeout=wait_timeout)
    if json_ or settings.json:
        _render.print_json({"path": result.path, "inputs": dict(result.entries)})
    else:
        click.echo(str(result.path))
