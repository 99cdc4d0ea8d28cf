"""A record's insert, conditional change and delete, as writes of a group batch (_writer.py).

Each write is ONE statement on `assets`, sent with the batch's other statements of its
kind in one command, and its outcome is read from the batch's read-back of the records
(the record carries the write's revision exactly when it applied). A promise with a
lease changes with its lease's document (_promises.py) in the same transaction: the
batch's statements on `leases` run before the records' (`lease_steps`, called from the
store's Statements.before), a constant number of commands whatever the batch's size:
create the new promises' leases, read every lease the batch touches, remove those whose
promise leaves PENDING (an expiry only if the lease ran out by $$NOW, a fulfilment only
if it did not), read which are gone. Each write then knows, in `Write.extra`, its
lease's last end and whether it was removed. After the records' commands, the batch's
accounting (_retention.py) is worked out from what each write changed (`Write.extra`
USAGE: the record before and after, from the read-back) and sent in one command more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import DeleteOne, InsertOne, UpdateOne

from asset_service.domain.errors import Conflict, LeaseRanOut, NotFound
from asset_service.domain.models import EXPLICIT_EXPIRIES, Asset, Removal, Status
from asset_service.store._fields import LeaseTest
from asset_service.store.mongo import _retention
from asset_service.store.mongo._documents import Doc, _aware, asset_to_doc, doc_to_asset
from asset_service.store.mongo._promises import PromiseLeases
from asset_service.store.mongo._write import Kind, Write, applied

# Write.extra keys: what the write needs of its lease, and what the lease steps found.
NEED = "lease_need"
END = "lease_end"  # the lease's end as read (after creation, before removal)
REMOVED = "lease_removed"
# usage(doc, revision) -> (record before, record after) if the write applied, else None:
# what the batch's accounting step moves (MongoStore.after).
USAGE = "usage"
# A conditional delete's lease: dropped after the records' commands, if it applied.
DROP_AFTER = "drop_lease_after"


@dataclass(frozen=True)
class LeaseNeed:
    """create (a new leased promise), end (a promise leaving PENDING, if `test` holds)
    or drop (a deleted asset's lease, whatever it is)."""

    action: str
    test: LeaseTest | None = None
    now: datetime | None = None
    seconds: int = 0
    expires_at: datetime | None = None


async def lease_steps(promises: PromiseLeases, session: Any, writes: list[Write]) -> None:
    """The batch's statements on `leases`: at most four commands."""
    needs = [(w, w.extra[NEED]) for w in writes if NEED in w.extra]
    if not needs:
        return
    creates = [(w, n) for w, n in needs if n.action == "create"]
    if creates:
        await promises.leases.bulk_write(
            [promises.create_request(w.asset_id, n.seconds, n.expires_at) for w, n in creates],
            ordered=True,
            session=session,
        )
    ids = [w.asset_id for w, _ in needs]
    found = {
        str(d["_id"]): _aware(d["expires_at"])
        async for d in promises.leases.find(
            {"_id": {"$in": ids}}, {"expires_at": 1}, session=session
        )
    }
    removals = []
    for w, n in needs:
        w.extra[END] = found.get(w.asset_id)
        if n.action != "create" and w.asset_id in found:
            where: Doc = {"_id": w.asset_id}
            if n.action == "end" and n.test is not None:
                where |= promises.condition(n.test, n.now or datetime.now())
            removals.append((w, where))
    if not removals:
        return
    await promises.leases.bulk_write(
        [DeleteOne(where) for _, where in removals], ordered=True, session=session
    )
    conditional = [w.asset_id for w, where in removals if len(where) > 1]
    left: set[str] = set()
    if conditional:
        left = {
            str(d["_id"])
            async for d in promises.leases.find(
                {"_id": {"$in": conditional}}, {"_id": 1}, session=session
            )
        }
    for w, _ in removals:
        w.extra[REMOVED] = w.asset_id not in left


def insert_write(asset: Asset, promises: PromiseLeases, cost: int) -> Write:
    """A new record; a leased promise's lease is created with it (by $$NOW on a replica
    set, its end copied into the record)."""
    leased = asset.status is Status.PENDING and asset.lease_seconds > 0
    extra: dict[str, Any] = {}
    if leased:
        extra[NEED] = LeaseNeed(
            "create", seconds=asset.lease_seconds, expires_at=asset.lease_expires_at
        )

    def doc(rev: int) -> Doc:
        record = asset_to_doc(asset, rev)
        if leased and extra.get(END) is not None:
            record["lease_expires_at"] = extra[END]
        return record

    def outcome(_: Doc | None, rev: int) -> Asset:
        return doc_to_asset(doc(rev))  # a failed insert raised instead

    # A batch's inserts all applied (a failed one aborts and reruns the batch without it).
    extra[USAGE] = lambda _, rev: (None, outcome(None, rev))
    return Write(asset.id, Kind.INSERT, lambda rev: InsertOne(doc(rev)), outcome, cost, extra)


def transition_write(
    asset_id: str,
    expected: Status,
    sets: Doc,
    test: LeaseTest | None,
    now: datetime,
    cost: int,
    by_rule: bool = False,
) -> Write:
    """`sets` (and the revision) on the record if its status is `expected`, its lease
    passes `test` and (`by_rule`: an operator rule's expiry) no client chose its expiry;
    a move out of PENDING ends the lease and keeps its last end."""
    leaves_pending = expected is Status.PENDING and sets.get("status", expected) != expected
    extra: dict[str, Any] = {}
    if leaves_pending:
        extra[NEED] = LeaseNeed("end", test=test, now=now)
    where: Doc = {"_id": asset_id, "status": expected.value}
    if by_rule:
        where["expiry_rule"] = {"$nin": sorted(EXPLICIT_EXPIRIES)}

    def moved(doc: Doc | None, rev: int) -> tuple[Asset, Asset] | None:
        if not applied(doc, rev):
            return None
        after = doc_to_asset(doc)  # type: ignore[arg-type]
        return _retention.before_transition(after, expected), after

    extra[USAGE] = moved

    def statement(rev: int) -> UpdateOne | None:
        fields = {**sets, "revision": rev}
        if not leaves_pending:
            return UpdateOne(where, {"$set": fields})
        end = extra.get(END)
        if end is None:
            if test == "run out":
                return None  # no lease to run out
            # A promise without a lease moves on in one statement.
            return UpdateOne({**where, "lease_seconds": {"$in": [0, None]}}, {"$set": fields})
        if not extra.get(REMOVED):
            return None  # its lease did not pass the test: nothing is written
        return UpdateOne(where, {"$set": {**fields, "lease_expires_at": end}})

    def outcome(doc: Doc | None, rev: int) -> Asset:
        if applied(doc, rev):
            return doc_to_asset(doc)  # type: ignore[arg-type]
        if doc is None:
            raise NotFound(f"asset {asset_id} not found")
        if by_rule and doc.get("expiry_rule") in EXPLICIT_EXPIRIES:
            raise Conflict(f"asset {asset_id}'s expiry was set by a client meanwhile")
        if doc["status"] != expected.value or not leaves_pending:
            raise Conflict(f"asset {asset_id} is {doc['status']}, expected {expected}")
        end = extra.get(END)
        if test == "run out":
            if end is None:
                raise Conflict(f"asset {asset_id} has no lease to run out")
            raise Conflict(f"asset {asset_id}'s lease has not run out (it ends at {end})")
        if test is None:
            raise Conflict(f"asset {asset_id} is {doc['status']}, expected {expected}")
        raise LeaseRanOut(asset_id, end if end is not None else "its end")

    return Write(asset_id, Kind.UPDATE, statement, outcome, cost, extra)


def delete_write(
    asset_id: str,
    by: str,
    nothing: type[NotFound],
    removal: Removal | None = None,
    database_clock: bool = False,
) -> Write:
    """Stamp the record with its new revision (and the deleter, why it goes: a `removal`'s
    reason; a live promise's last lease end) so that the change feed can number the
    delete and say who made it and why; the batch then removes what it stamped.
    `nothing(id)` when there is no record. A `removal`'s conditions (not held, expired)
    are in the stamp's filter: Held or Conflict when they do not hold."""
    # A conditional delete may be refused after the lease steps ran: its lease is
    # dropped only once its stamp applied (MongoStore.after), losing its last end.
    extra: dict[str, Any] = {} if removal else {NEED: LeaseNeed("drop")}
    if removal:
        extra[DROP_AFTER] = True
    condition = _retention.removal_filter(removal, database_clock) if removal else {}
    reason = removal.reason if removal is not None else ""

    def statement(rev: int) -> UpdateOne:
        fields: Doc = {"revision": rev, "deleted": True, "updated_by": by}
        fields["deletion_reason"] = reason
        if extra.get(REMOVED) and extra.get(END) is not None:
            fields["lease_expires_at"] = extra[END]
        return UpdateOne({"_id": asset_id, **condition}, {"$set": fields})

    def outcome(doc: Doc | None, rev: int) -> Asset:
        if not applied(doc, rev):
            if doc is not None and removal is not None:
                raise _retention.removal_refused(doc, removal)
            raise nothing(asset_id)
        gone = doc_to_asset(doc)  # type: ignore[arg-type]
        return Asset(**{**gone.__dict__, "holds": ()})  # holds are no part of a change

    extra[USAGE] = lambda doc, rev: (outcome(doc, rev), None) if applied(doc, rev) else None
    return Write(asset_id, Kind.DELETE, statement, outcome, 0, extra)
