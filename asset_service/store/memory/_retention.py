"""MemoryStore's retention: holds, manifest retention, the expiry query and the accounting."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import datetime

from asset_service.domain.errors import NotFound, ResourceExhausted
from asset_service.domain.models import Asset, Hold, Status
from asset_service.domain.reads import slim
from asset_service.domain.retention._ports import TASK_OWNER
from asset_service.domain.usage import ALL, TOTAL, Cell, UsageCells, UsageGroup, deltas
from asset_service.store._retention import top_keys, usage_keys


class MemoryRetention:
    """The retention part of MemoryStore: its records' holds and accounting cells. Every
    step runs without an await in between, so it is atomic with the record write it goes
    with (the same rule as the rest of the store)."""

    _rows: dict[str, tuple[int, Asset]]

    def __init__(self) -> None:
        self._holds: dict[str, dict[str, Hold]] = {}
        self._cells: dict[Cell, tuple[int, int]] = {}

    async def _enter(self) -> None:
        raise NotImplementedError

    # --- kept by the record writes ------------------------------------------------------

    def _account(self, before: Asset | None, after: Asset | None) -> None:
        for cell, (count, size) in deltas(before, after).items():
            old = self._cells.get(cell, (0, 0))
            new = (old[0] + count, old[1] + size)
            if new == (0, 0):
                self._cells.pop(cell, None)
            else:
                self._cells[cell] = new

    def _settle_task(self, before: Asset) -> None:
        """After `before` (a PENDING promise) left PENDING or went: its task's holds go
        once the task has no PENDING promise left."""
        task = before.created_by_task
        if before.status is not Status.PENDING or not task:
            return
        if self._cells.get((UsageGroup.TASK.value, task, Status.PENDING.value)):
            return
        owner = TASK_OWNER + task
        for asset_id in [i for i, held in self._holds.items() if owner in held]:
            self._drop_hold(asset_id, owner)

    def _drop_hold(self, asset_id: str, owner: str) -> bool:
        held = self._holds.get(asset_id)
        if held is None or held.pop(owner, None) is None:
            return False
        if not held:
            del self._holds[asset_id]
        return True

    def _with_holds(self, asset: Asset) -> Asset:
        held = self._holds.get(asset.id)
        if not held:
            return asset
        return dataclasses.replace(asset, holds=tuple(held.values()))

    # --- RetentionStore -------------------------------------------------------------------

    async def place_hold(self, asset_id: str, hold: Hold, limit: int) -> Asset:
        await self._enter()
        row = self._rows.get(asset_id)
        if row is None:
            raise NotFound(f"asset {asset_id} not found")
        held = self._holds.setdefault(asset_id, {})
        if hold.owner not in held and len(held) >= limit:
            raise ResourceExhausted(
                f"asset {asset_id} has {len(held)} holds, the most it may have; release one"
            )
        held[hold.owner] = hold
        return self._with_holds(row[1])

    async def release_hold(self, asset_id: str, owner: str) -> tuple[Asset, bool]:
        await self._enter()
        row = self._rows.get(asset_id)
        if row is None:
            raise NotFound(f"asset {asset_id} not found")
        released = self._drop_hold(asset_id, owner)
        return self._with_holds(row[1]), released

    async def hold_inputs(self, task_id: str, asset_ids: Sequence[str], hold: Hold) -> list[str]:
        await self._enter()
        if not self._cells.get((UsageGroup.TASK.value, task_id, Status.PENDING.value)):
            return []
        held = [i for i in dict.fromkeys(asset_ids) if i in self._rows]
        for asset_id in held:
            self._holds.setdefault(asset_id, {})[hold.owner] = hold
        return held

    async def retain(self, asset_ids: Sequence[str], until: datetime) -> None:
        await self._enter()
        for asset_id in asset_ids:
            row = self._rows.get(asset_id)
            if row is None:
                continue
            seq, asset = row
            if asset.retained_until is None or asset.retained_until < until:
                self._rows[asset_id] = (seq, dataclasses.replace(asset, retained_until=until))

    async def expired(self, now: datetime, limit: int) -> list[Asset]:
        await self._enter()
        due = sorted(
            (asset.expires_at, asset.id)
            for _, asset in self._rows.values()
            if asset.expires_at is not None
            and asset.expires_at <= now
            and asset.status is not Status.PENDING
            and asset.id not in self._holds
            and (asset.retained_until is None or asset.retained_until <= now)
        )
        return [slim(self._rows[asset_id][1]) for _, asset_id in due[:limit]]

    async def usage(self, group: str, keys: Sequence[str], limit: int) -> UsageCells:
        await self._enter()
        await asyncio.sleep(0)
        found = {cell: value for cell, value in self._cells.items() if cell[0] == ALL}
        chosen, more = usage_keys(group, keys), False
        if chosen is None:
            totals = {
                cell[1]: value
                for cell, value in self._cells.items()
                if cell[0] == group and cell[2] == TOTAL
            }
            chosen, more = top_keys(totals, limit)
        wanted = set(chosen)
        found.update({c: v for c, v in self._cells.items() if c[0] == group and c[1] in wanted})
        return UsageCells(found, chosen, more)
