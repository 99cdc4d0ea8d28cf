"""MongoStore's shared bytes: the records pointing at a storage path are its references.

A shared write (insert or fulfilment with shared=True, issue 24) needs an AVAILABLE record
still pointing at its storage_path when its transaction commits. Reading one is not
enough under snapshot isolation: a racing transaction deleting that record writes a
document this one only read, so both would commit (write skew) and the deleter, seeing no
reference left, would remove the bytes the new record points at. So the batch's step
before the records' commands also WRITES the record it found (an $inc of a counter no
reader uses, without a revision: the change feed skips it, _feed.py): a delete of it in
flight now conflicts with this transaction, and one of the two is retried and sees the
other. Two commands per batch, whatever its number of shared writes. (Today every batch
also takes the one revision counter, which orders them all anyway; the touch keeps this
right without leaning on that.) Without transactions (FerretDB 1.x) the step and the write
are two commands: a delete from another server between them could strand the new record,
so sharing an object store's bytes wants MongoDB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import UpdateOne

from asset_service.domain.errors import SharedBytesGone
from asset_service.domain.models import Status
from asset_service.store.mongo._documents import Doc
from asset_service.store.mongo._transition import USAGE
from asset_service.store.mongo._write import Write

# Write.extra keys: the storage path a shared write needs a live record at, and whether
# the batch's share step found (and touched) one.
SHARES = "shares"
FOUND = "shares_found"
# The counter the share step increments on the record it found (never read).
TOUCH_FIELD = "shared_writes"


def shared(write: Write, storage_path: str) -> Write:
    """`write` (an insert_write or transition_write) made conditional on a live record at
    `storage_path`, found and touched by share_steps in the same transaction."""
    write.extra[SHARES] = storage_path
    statement, outcome, usage = write.statement, write.outcome, write.extra.get(USAGE)

    def gated_statement(rev: int) -> Any | None:
        return statement(rev) if write.extra.get(FOUND) else None

    def gated_outcome(doc: Doc | None, rev: int) -> Any:
        if not write.extra.get(FOUND):
            raise SharedBytesGone(storage_path)
        return outcome(doc, rev)

    def gated_usage(doc: Doc | None, rev: int) -> Any:
        if not write.extra.get(FOUND) or usage is None:
            return None
        return usage(doc, rev)

    write.statement, write.outcome = gated_statement, gated_outcome
    write.extra[USAGE] = gated_usage
    return write


async def share_steps(assets: Any, session: Any, writes: Sequence[Write]) -> None:
    """For every shared write of the batch: find one AVAILABLE record at its path (one
    find), touch each found (one bulk write), and say in Write.extra[FOUND] whether it
    may apply."""
    sharing = [w for w in writes if SHARES in w.extra]
    if not sharing:
        return
    paths = sorted({w.extra[SHARES] for w in sharing})
    holder: dict[str, str] = {}
    async for doc in assets.find(
        {"storage_path": {"$in": paths}, "status": Status.AVAILABLE.value},
        {"_id": 1, "storage_path": 1},
        session=session,
    ):
        holder.setdefault(doc["storage_path"], str(doc["_id"]))
    for w in sharing:
        w.extra[FOUND] = w.extra[SHARES] in holder
    if holder:
        await assets.bulk_write(
            [UpdateOne({"_id": i}, {"$inc": {TOUCH_FIELD: 1}}) for i in sorted(holder.values())],
            ordered=True,
            session=session,
        )


async def referenced(assets: Any, storage_paths: Sequence[str]) -> set[str]:
    """Those of `storage_paths` some record points at (index storage_path), read on the
    primary after the caller's own write was acknowledged."""
    wanted = sorted({p for p in storage_paths if p})
    found: set[str] = set()
    for start in range(0, len(wanted), 1000):
        part = wanted[start : start + 1000]
        async for doc in assets.find(
            {"storage_path": {"$in": part}}, {"_id": 0, "storage_path": 1}
        ):
            found.add(doc["storage_path"])
    return found
