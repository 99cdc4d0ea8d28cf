"""The storage accounting command: asset usage."""

from __future__ import annotations

import click
from rich import box
from rich.table import Table

from asset_client.cli import _render
from asset_client.cli._app import Settings, cli
from asset_client.models import AssetStatus, Usage

pass_settings = click.make_pass_decorator(Settings)
_STATUSES = (AssetStatus.AVAILABLE, AssetStatus.PENDING, AssetStatus.FAILED)


def _plain(usage: Usage) -> dict[str, object]:
    def parts(by: dict[AssetStatus, tuple[int, int]]) -> dict[str, dict[str, int]]:
        return {s.value: {"count": c, "bytes": b} for s, (c, b) in by.items()}

    return {
        "count": usage.count,
        "bytes": usage.bytes,
        "by_status": parts(dict(usage.by_status)),
        "group": usage.group,
        "rows": [
            {
                "key": r.key,
                "count": r.count,
                "bytes": r.bytes,
                "by_status": parts(dict(r.by_status)),
            }
            for r in usage.rows
        ],
        "more": usage.more,
        "warn_bytes": usage.warn_bytes,
        "over_threshold": usage.over_threshold,
    }


@cli.command()
@click.option(
    "--group",
    type=click.Choice(["status", "type", "tag", "task"]),
    default="status",
    show_default=True,
    help="One row per status, asset type, tag or producing task.",
)
@click.option("--key", "keys", multiple=True, help="Only this key of the group (repeat).")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Largest rows."
)
@click.option("--json", "json_", is_flag=True, help="Print the answer as JSON.")
@pass_settings
def usage(settings: Settings, group: str, keys: tuple[str, ...], limit: int, json_: bool) -> None:
    """What the warehouse holds: assets and bytes, by status and by one grouping, from
    counters the server keeps with every write (cheap to ask often)."""
    with settings.connect() as client:
        found = client.get_usage(group, keys, limit=limit)
    if json_ or settings.json:
        _render.print_json(_plain(found))
        return
    console = _render._console()
    table = Table(box=box.SIMPLE if console.is_terminal else None, pad_edge=False)
    # Grouped by status, each row is one status: per-status columns would say nothing.
    split = () if group == "status" else _STATUSES
    for name in (group.upper(), "ASSETS", "BYTES", *(s.value for s in split)):
        table.add_column(name)
    for row in found.rows:
        cells = [
            _render.size_text(row.by_status.get(s, (0, 0))[1])
            + f" ({row.by_status.get(s, (0, 0))[0]})"
            for s in split
        ]
        table.add_row(row.key or "-", str(row.count), _render.size_text(row.bytes), *cells)
    console.print(table)
    total = f"total: {found.count} assets, {_render.size_text(found.bytes)}"
    if found.more:
        total += f" (only the {len(found.rows)} largest {group}s shown)"
    click.echo(total)
    if found.over_threshold:
        click.echo(
            "warning: over the server's --storage-warn-bytes "
            f"({_render.size_text(found.warn_bytes)})",
            err=True,
        )
