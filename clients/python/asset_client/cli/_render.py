"""How `asset` prints: JSON records, rich tables for people, rich progress bars on a TTY."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from asset_client._progress import ProgressCallback
from asset_client.models import Asset, Value, WatchEvent


def jsonable(obj: Any) -> Any:
    """Plain JSON data for the client's dataclasses (bytes as base64, times in ISO 8601)."""
    if isinstance(obj, Value):
        content = obj.content
        if isinstance(content, bytes):
            return {"kind": obj.kind.value, "base64": base64.b64encode(content).decode()}
        return {"kind": obj.kind.value, "content": content}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """One JSON document on one line (JSON Lines when called repeatedly)."""
    sys.stdout.write(json.dumps(jsonable(obj), sort_keys=True) + "\n")
    sys.stdout.flush()


def _console() -> Console:
    # Piped output: no colours, and wide enough that ids and labels are never cut.
    if sys.stdout.isatty():
        return Console()
    return Console(width=1000, no_color=True, highlight=False, soft_wrap=True)


def size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def assets_table(assets: Iterable[Asset]) -> int:
    """Print a table of assets; how many rows."""
    console = _console()
    table = Table(box=box.SIMPLE if console.is_terminal else None, pad_edge=False)
    for name in ("ID", "STATUS", "TYPE", "SIZE", "LABEL", "TASK", "TAGS", "UPDATED"):
        table.add_column(name, no_wrap=name in ("ID", "STATUS", "TYPE", "SIZE", "UPDATED"))
    rows = 0
    for asset in assets:
        size = size_text(asset.size_bytes) if asset.status.value == "AVAILABLE" else "-"
        table.add_row(
            asset.id,
            asset.status.value,
            asset.type.value,
            size,
            asset.label,
            asset.created_by_task or "-",
            ",".join(asset.tags) or "-",
            asset.update_time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        rows += 1
    console.print(table)
    return rows


def asset_details(asset: Asset) -> None:
    """One asset as `field  value` lines, the empty ones left out."""
    console = _console()
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold" if console.is_terminal else None, no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in jsonable(asset).items():
        if value in ("", None, [], 0) and name not in ("size_bytes", "revision"):
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        table.add_row(name, str(value))
    console.print(table)


def event_line(event: WatchEvent) -> str:
    """One watch event, tab-separated: revision, event, id, status, label[, reason]."""
    a = event.asset
    fields = [str(event.revision), event.type.value, a.id, a.status.value, a.label]
    if a.failure_reason:
        fields.append(" ".join(a.failure_reason.split()))
    return "\t".join(fields)


class Transfers:
    """Rich progress rows on stderr for the client's transfers, fed by its callback
    (bytes done, total); a row per transfer (a new one when the total changes or the
    count goes back). Only on a terminal unless asked: `enabled` None means stderr's TTY."""

    def __init__(self, enabled: bool | None, desc: str) -> None:
        self.on = enabled is True or (enabled is None and sys.stderr.isatty())
        self.desc = desc
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last = (-1, -1)
        self._rows = 0

    def __enter__(self) -> Transfers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @property
    def callback(self) -> bool | ProgressCallback:
        """What to pass as a transfer's `progress`: this display, or no bar at all."""
        return self._update if self.on else False

    def _update(self, done: int, total: int) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
        last_done, last_total = self._last
        if self._task is None or total != last_total or done < last_done:
            self._rows += 1
            desc = self.desc if self._rows == 1 else f"{self.desc} ({self._rows})"
            self._task = self._progress.add_task(desc, total=total or None)
        self._progress.update(self._task, completed=done)
        self._last = (done, total)
