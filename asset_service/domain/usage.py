"""Storage accounting: counts and bytes by status, type, tag and task, kept by every write.

Each store keeps one counter cell per (group, key, status) and changes the cells a write
touches in the same atomic write (SQLite's transaction, MongoDB's, the memory store's
step), so GetUsage reads a few cells instead of scanning records, and what it reads always
adds up to a recount of the records. A cell's status "" is the key's total over statuses
(what the largest keys are sorted by). This module says which cells a record counts in and
how a write moves them; the stores only add the deltas.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from asset_service.domain.models import Asset, Status


class UsageGroup(enum.StrEnum):
    """How GetUsage groups: a record counts once in ALL and STATUS (by its status), TYPE
    (FILE, VALUE), TASK (created_by_task; "" for none), and once per tag in TAG."""

    STATUS = "status"
    TYPE = "type"
    TAG = "tag"
    TASK = "task"


# The store's group names: "all" holds the by-status totals (key "").
ALL = "all"
TOTAL = ""  # a cell's status: the key's total over every status

# (group, key, status) -> (count, bytes)
Cell = tuple[str, str, str]
Deltas = dict[Cell, tuple[int, int]]


def cells(asset: Asset) -> list[Cell]:
    """The cells `asset` counts in: its status and the key's total, per group and key."""
    keys = [(ALL, ""), (UsageGroup.TYPE.value, asset.type.value)]
    keys.append((UsageGroup.TASK.value, asset.created_by_task))
    keys += [(UsageGroup.TAG.value, tag) for tag in dict.fromkeys(asset.tags)]
    return [(group, key, status) for group, key in keys for status in (asset.status.value, TOTAL)]


def deltas(before: Asset | None, after: Asset | None) -> Deltas:
    """How the cells move when a record goes from `before` to `after` (None: absent).
    Cells that do not move are left out."""
    moved: Deltas = {}
    for asset, sign in ((before, -1), (after, 1)):
        if asset is None:
            continue
        size = sign * asset.size_bytes
        for cell in cells(asset):
            count, total = moved.get(cell, (0, 0))
            moved[cell] = (count + sign, total + size)
    return {cell: value for cell, value in moved.items() if value != (0, 0)}


def merge(into: Deltas, moved: Deltas) -> None:
    """Add `moved` to the cells `into` holds (a cell may come back to zero: kept)."""
    for cell, (c, b) in moved.items():
        count, size = into.get(cell, (0, 0))
        into[cell] = (count + c, size + b)


def recount(assets: Iterable[Asset]) -> Deltas:
    """Every cell from scratch (tests compare it with what a store kept; migrations of a
    database written before accounting start from it)."""
    total: Deltas = {}
    for asset in assets:
        merge(total, deltas(None, asset))
    return {cell: value for cell, value in total.items() if value != (0, 0)}


@dataclass(frozen=True)
class UsageCells:
    """What a store reads for GetUsage: the cells of group ALL and of the keys asked for
    (or the largest ones: `keys`, largest first), and whether more keys exist."""

    cells: Mapping[Cell, tuple[int, int]]
    keys: list[str]
    more: bool = False


@dataclass(frozen=True)
class UsageRow:
    """One key's usage: its totals and the part of them in each status."""

    key: str
    count: int = 0
    bytes: int = 0
    by_status: Mapping[Status, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """GetUsage's answer: the store's totals, and rows of one group (largest first)."""

    count: int
    bytes: int
    by_status: Mapping[Status, tuple[int, int]]
    group: UsageGroup
    rows: list[UsageRow]
    # More keys than `rows` hold (the smallest were left out).
    more: bool = False
    # --storage-warn-bytes (0: none), and whether `bytes` passed it.
    warn_bytes: int = 0

    @property
    def over_threshold(self) -> bool:
        return bool(self.warn_bytes) and self.bytes > self.warn_bytes


def rows_of(
    found: Mapping[Cell, tuple[int, int]], keys: Iterable[str], group: str
) -> list[UsageRow]:
    """UsageRows of `keys` (in that order) from cells a store read."""
    rows = []
    for key in keys:
        count, size = found.get((group, key, TOTAL), (0, 0))
        by_status = {
            status: found[(group, key, status.value)]
            for status in Status
            if found.get((group, key, status.value), (0, 0)) != (0, 0)
        }
        rows.append(UsageRow(key, count, size, by_status))
    return rows
