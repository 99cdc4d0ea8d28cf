"""The commands on promises: pending, fulfill, fail, renew, rm, task-token."""

from __future__ import annotations

import json

import click

from asset_client.cli import _params, _render
from asset_client.cli._app import Settings, cli
from asset_client.cli._commands import emit, json_flag, pass_settings
from asset_client.models import AssetType, Value, ValueKind


@cli.command()
@click.argument("task_id")
@click.argument("label")
@click.option("--media-type", default="", help="MIME type the output will have.")
@click.option(
    "--type",
    "type_",
    type=_params.TYPE,
    default="FILE",
    show_default=True,
    help="FILE (uploaded bytes) or VALUE (inline text/JSON/bytes).",
)
@click.option("--tag", "tags", multiple=True, help="A tag; repeat for more.")
@click.option(
    "--lease",
    type=click.IntRange(min=1),
    help="Seconds the promise holds unless renewed (asset renew, or asset run); "
    "without it, it waits as long as it takes.",
)
@click.option(
    "--key",
    help="Get or create by this key (e.g. a hash of the task's code and inputs): print "
    "the id and HIT (the key's AVAILABLE asset), JOIN (another caller's live promise) or "
    "PRODUCE (a new promise: produce it); exactly one caller gets PRODUCE.",
)
@json_flag
@pass_settings
def pending(
    settings: Settings,
    task_id: str,
    label: str,
    media_type: str,
    type_: str,
    tags: tuple[str, ...],
    lease: int | None,
    key: str | None,
    json_: bool,
) -> None:
    """Promise an asset that task TASK_ID will produce; print its id.

    \b
      out=$(asset pending task-42 frames.zip --lease 60)
      read -r id outcome < <(asset pending task-42 frames.zip --lease 60 --key "$hash")
    """
    promise = (task_id, label, media_type, _params.type_of(type_) or AssetType.FILE, tags)
    if key is None:
        with settings.connect() as client:
            asset = client.create_pending(*promise, lease_seconds=lease or 0)
        emit(settings, json_, asset, asset.id)
        return
    with settings.connect() as client:
        keyed = client.get_or_create_pending(key, *promise, lease_seconds=lease or 0)
    if json_ or settings.json:
        _render.print_json({"outcome": keyed.outcome.value, "asset": keyed.asset})
    else:
        click.echo(f"{keyed.asset.id}\t{keyed.outcome.value}")


@cli.command()
@click.argument("asset_id")
@click.argument("server_path", required=False)
@click.option("--value", "text", help="Fulfill a VALUE promise with this text.")
@click.option("--json-value", "json_text", metavar="JSON", help="... with this JSON document.")
@click.option("--sha256", default="", help="The server refuses a file with another digest.")
@json_flag
@pass_settings
def fulfill(
    settings: Settings,
    asset_id: str,
    server_path: str | None,
    text: str | None,
    json_text: str | None,
    sha256: str,
    json_: bool,
) -> None:
    """Make the PENDING asset ASSET_ID AVAILABLE: from SERVER_PATH, a file on the server's
    machine under one of its import roots (it is moved into storage), or from a value.

    To fulfill a FILE promise from this machine, upload: `asset put --fulfill ID FILE`.
    """
    given = [server_path is not None, text is not None, json_text is not None]
    if sum(given) != 1:
        raise click.UsageError("give exactly one of SERVER_PATH, --value, --json-value")
    value: Value | None = None
    if text is not None:
        value = Value.of_text(text)
    elif json_text is not None:
        try:
            json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--json-value") from None
        value = Value(ValueKind.JSON, json_text)
    with settings.connect() as client:
        asset = client.fulfill(
            asset_id,
            None if server_path is None else server_path,
            value,
            expected_sha256=sha256,
        )
    emit(settings, json_, asset, f"{asset.id}\t{asset.status.value}")


@cli.command()
@click.argument("asset_id")
@click.argument("reason")
@json_flag
@pass_settings
def fail(settings: Settings, asset_id: str, reason: str, json_: bool) -> None:
    """Mark the PENDING asset ASSET_ID as FAILED with REASON (every watcher sees it)."""
    with settings.connect() as client:
        asset = client.fail(asset_id, reason)
    emit(settings, json_, asset, f"{asset.id}\t{asset.status.value}")


@cli.command()
@click.argument("asset_id")
@click.option(
    "--lease",
    type=click.IntRange(min=0),
    default=0,
    help="Seconds from now the lease holds (default 0: the lease it was promised with).",
)
@json_flag
@pass_settings
def renew(settings: Settings, asset_id: str, lease: int, json_: bool) -> None:
    """Renew the lease of the PENDING asset ASSET_ID; print when it now runs out."""
    with settings.connect() as client:
        asset = client.renew_lease(asset_id, lease)
    expires = asset.lease_expires_at.isoformat() if asset.lease_expires_at else "-"
    emit(settings, json_, asset, f"{asset.id}\t{expires}")


@cli.command()
@click.argument("asset_ids", nargs=-1, required=True)
@click.option(
    "--force",
    is_flag=True,
    help="Delete held assets too (their holds go with them); without it a held asset "
    "is refused (exit 19) with a message naming its holders.",
)
@json_flag
@pass_settings
def rm(settings: Settings, asset_ids: tuple[str, ...], force: bool, json_: bool) -> None:
    """Delete assets (record and bytes; admin role); print each id deleted."""
    with settings.connect() as client:
        for asset_id in asset_ids:
            asset = client.delete(asset_id, force=force)
            emit(settings, json_, asset, asset.id)


@cli.command("task-token")
@click.argument("task_id")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="ASSET_ID",
    help="An asset the task may read (its inputs); repeat for more.",
)
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    help="Seconds the token is valid (default: the server's, an hour).",
)
@pass_settings
def task_token(settings: Settings, task_id: str, inputs: tuple[str, ...], ttl: int | None) -> None:
    """Mint a token for task TASK_ID's worker and print it (orchestrator role).

    With it the worker may read the --input assets and its task's outputs, and fulfill,
    fail or renew its task's promises; nothing else. Hand it over in a variable:

    \b
      ASSET_SERVICE_TOKEN=$(asset task-token task-42 --input "$VIDEO") asset run ...
    """
    with settings.connect() as client:
        token = client.mint_task_token(task_id, inputs, ttl or 0)
    click.echo(token.token)
