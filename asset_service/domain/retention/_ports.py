"""What retention needs of a metadata store beyond records: holds, expiries, accounting."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from asset_service.domain.models import Asset, Hold
from asset_service.domain.usage import UsageCells

# The prefix of a task hold's owner: "task:<task id>" (a task token's principal name).
TASK_OWNER = "task:"


class RetentionStore(Protocol):
    """Holds, manifest retention, the expiry index and the accounting cells.

    A hold or a retention is not a change of the asset: no revision, no change event (as
    a lease renewal). What MetadataStore's writes add: insert, transition and delete keep
    the accounting cells (domain/usage.py) in the same atomic write; a transition out of
    PENDING, or the delete of a PENDING asset, that leaves a task with no PENDING promise
    releases that task's holds (owner TASK_OWNER + task id) in the same write too; delete
    checks a Removal's conditions in it.
    """

    async def place_hold(self, asset_id: str, hold: Hold, limit: int) -> Asset:
        """Add `hold`, replacing the one of the same owner; the asset as get() reads it.
        NotFound if there is no such asset; ResourceExhausted if it has `limit` holds of
        other owners already."""

    async def release_hold(self, asset_id: str, owner: str) -> tuple[Asset, bool]:
        """Remove `owner`'s hold; the asset as get() reads it after, and whether there was
        one. NotFound if there is no such asset."""

    async def hold_inputs(self, task_id: str, asset_ids: Sequence[str], hold: Hold) -> list[str]:
        """If task `task_id` has a PENDING promise now: `hold` (its owner is the task's) on
        each of `asset_ids` that exists, in one atomic step with that check (a promise
        leaving PENDING meanwhile releases them or sees them); the ids held, in order.
        [] if the task has none: nothing PENDING needs its inputs."""

    async def retain(self, asset_ids: Sequence[str], until: datetime) -> None:
        """No expiry before `until` for these assets (a manifest lists them): their
        retained_until becomes the later of it and `until`. Missing ids are skipped."""

    async def expired(self, now: datetime, limit: int) -> list[Asset]:
        """Up to `limit` assets that have expired by `now` and that nothing holds (not
        PENDING, no hold, retained_until not after `now`), earliest expiry first, without
        inline values: read through an index on the expiry (a held one is passed over)."""

    async def usage(self, group: str, keys: Sequence[str], limit: int) -> UsageCells:
        """The accounting cells of group ALL (every status) and of `group`: of `keys`, or
        (none given) of the `limit` keys holding the most bytes (then count, then key)."""
