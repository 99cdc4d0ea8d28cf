"""`asset watch`: one line per event of some assets, or of a selector, as they happen."""

from __future__ import annotations

from collections.abc import Iterator

import click

from asset_client.cli import _params, _render
from asset_client.cli._app import Settings, cli
from asset_client.errors import FailedPreconditionError
from asset_client.models import Asset, AssetStatus, WatchEvent, WatchEventType

pass_settings = click.make_pass_decorator(Settings)


@cli.command()
@click.argument("asset_ids", nargs=-1, metavar="[ASSET_ID]...")
@click.option("--status", type=_params.STATUS, help="Selector: assets in this state.")
@click.option("--type", "type_", type=_params.TYPE, help="Selector: FILE or VALUE assets.")
@click.option("--tag", "tags", multiple=True, help="Selector: assets with this tag (all of).")
@click.option("--task", help="Selector: the promises of this task.")
@click.option("--label", help="Selector: assets with exactly this label.")
@click.option(
    "--follow",
    is_flag=True,
    help="Keep watching after every asset is terminal (a selector: assets created "
    "later too), until interrupted or --watch-timeout.",
)
@click.option(
    "--watch-timeout",
    type=_params.POSITIVE,
    help="Give up after this many seconds (exit 14, DEADLINE_EXCEEDED).",
)
@click.option("--json", "json_", is_flag=True, help="JSON Lines: one event object per line.")
@click.pass_obj
def watch(
    settings: Settings,
    asset_ids: tuple[str, ...],
    status: str | None,
    type_: str | None,
    tags: tuple[str, ...],
    task: str | None,
    label: str | None,
    follow: bool,
    watch_timeout: float | None,
    json_: bool,
) -> int:
    """Print each asset's state, then every change, one line per event, as it happens.

    Give asset ids, or a selector (--task, --tag, --status, --type, --label; nothing
    selects every asset). A line is tab-separated: revision, event (SNAPSHOT, CHANGED,
    DELETED), id, status, label and, once FAILED, the reason; --json prints the whole
    event instead. A selector's assets are listed first (SNAPSHOT lines).

    It ends once every watched asset is AVAILABLE or FAILED (or deleted); a selector
    then watches the assets it picked at the start. With --follow it goes on (a
    selector: assets created later too). Exit 0 when every one ended AVAILABLE, 19
    (FAILED_PRECONDITION) when one FAILED or was deleted, so a script can wait with
    `asset watch "$id" > /dev/null && asset cat "$id"`. The watch resumes by itself
    when the connection drops.
    """
    selector = bool(status or type_ or tags or task or label)
    if asset_ids and selector:
        raise click.UsageError("give asset ids or a selector, not both")
    with settings.connect() as client:
        if asset_ids:
            events = client.watch(asset_ids, follow=follow, timeout=watch_timeout)
        elif follow:
            events = client.follow(
                status=_params.status_of(status),
                type=_params.type_of(type_),
                tags=tags,
                created_by_task=task,
                label=label,
                timeout=watch_timeout,
            )
        else:
            ids = [
                a.id
                for a in client.list(
                    status=_params.status_of(status),
                    type=_params.type_of(type_),
                    tags=tags,
                    created_by_task=task,
                    label=label,
                )
            ]
            if not ids:
                return 0
            events = client.watch(ids, timeout=watch_timeout)
        return _print(events, json_ or settings.json)


def _print(events: Iterator[WatchEvent], json_: bool) -> int:
    final: dict[str, Asset | None] = {}
    try:
        for event in events:
            if json_:
                _render.print_json(event)
            else:
                click.echo(_render.event_line(event))
            final[event.asset.id] = None if event.type is WatchEventType.DELETED else event.asset
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    bad = [i for i, a in final.items() if a is None or a.status is AssetStatus.FAILED]
    if bad:
        raise _Ended(bad, final)
    return 0


class _Ended(FailedPreconditionError):
    """Some watched assets ended FAILED or deleted: exit 19, naming them."""

    def __init__(self, bad: list[str], final: dict[str, Asset | None]) -> None:
        parts = [f"{i} {'was deleted' if final[i] is None else 'FAILED'}" for i in bad]
        super().__init__("; ".join(parts))
